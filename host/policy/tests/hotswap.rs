//! Hot swap while other threads call the policy: no call fails, a bad candidate is rejected and the old policy stays.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aggregator_policy::golden::selection_input;
use aggregator_policy::{Policies, PolicyConfig, PolicyKind, SwapEvent};

#[test]
fn hot_swap_under_concurrent_calls() {
    let (v1, v2, bad) = (
        common::guest("hostile", &[]),
        common::guest("hostile", &["alt"]),
        common::guest("hostile", &["selfcheck-spin"]),
    );
    let dir = common::scratch("hotswap");
    let path = dir.path().join("selector.wasm");
    common::install(&path, &v1);
    let config = PolicyConfig {
        components: [(PolicyKind::PeerSelection, path.clone())].into(),
        ..Default::default()
    };
    let policies = Arc::new(Policies::new(common::engine().clone(), config).unwrap());
    let (stop, calls, failures) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (p, stop, calls, failures) = (policies.clone(), stop.clone(), calls.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match p.select_peers(selection_input(64)) {
                        Ok(o) if o.fallback.is_none() => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    assert!(policies.check_for_updates().is_empty(), "unchanged file: nothing to do");
    // A good new version is staged, and becomes current only at the window boundary.
    common::install(&path, &v2);
    assert_eq!(
        policies.check_for_updates(),
        [SwapEvent::Staged {
            kind: PolicyKind::PeerSelection,
            policy: "hostile-alt 2.0.0".into()
        }]
    );
    assert_eq!(policies.current(PolicyKind::PeerSelection).name, "hostile");
    assert_eq!(
        policies.begin_window(),
        [SwapEvent::Swapped {
            kind: PolicyKind::PeerSelection,
            policy: "hostile-alt 2.0.0".into()
        }]
    );
    assert_eq!(policies.current(PolicyKind::PeerSelection).name, "hostile-alt");
    // A bad candidate (its self-check never ends) is rejected; the current policy stays.
    common::install(&path, &bad);
    let events = policies.check_for_updates();
    assert!(
        matches!(&events[..], [SwapEvent::Rejected { reason, .. }] if reason.contains("self-check")),
        "{events:?}"
    );
    assert!(policies.begin_window().is_empty());
    assert_eq!(policies.current(PolicyKind::PeerSelection).name, "hostile-alt");
    // Back to v1.
    common::install(&path, &v1);
    assert_eq!(policies.check_for_updates().len(), 1);
    policies.begin_window();
    assert_eq!(policies.current(PolicyKind::PeerSelection).name, "hostile");

    while calls.load(Ordering::Relaxed) < 200 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "of {} calls",
        calls.load(Ordering::Relaxed)
    );
    let stats = policies
        .stats()
        .into_iter()
        .find(|(k, _)| *k == PolicyKind::PeerSelection)
        .unwrap()
        .1;
    assert_eq!((stats.swaps, stats.rejections, stats.failures), (2, 1, 0));
}

#[test]
fn the_watcher_stages_changes_and_refuses_a_candidate_that_reads_files() {
    // (A candidate that reads a file finds none: the sandbox has no preopened directories, so its golden input fails.)
    let dir = common::scratch("watcher");
    let path = dir.path().join("selector.wasm");
    common::install(&path, &common::guest("hostile", &[]));
    let config = PolicyConfig {
        components: [(PolicyKind::PeerSelection, path.clone())].into(),
        ..Default::default()
    };
    let policies = Arc::new(Policies::new(common::engine().clone(), config).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let _watcher = policies.spawn_watcher(std::time::Duration::from_millis(20), move |e| {
        let _ = tx.send(e);
    });
    let wait = || {
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("the watcher reports within 30 s")
    };
    common::install(&path, &common::guest("hostile", &["fs"]));
    let rejected = wait();
    assert!(
        matches!(&rejected, SwapEvent::Rejected { reason, .. } if reason.contains("read /etc/passwd: Err")),
        "{rejected:?}"
    );
    common::install(&path, &common::guest("hostile", &["alt"]));
    assert_eq!(
        wait(),
        SwapEvent::Staged {
            kind: PolicyKind::PeerSelection,
            policy: "hostile-alt 2.0.0".into()
        }
    );
    assert_eq!(
        policies.current(PolicyKind::PeerSelection).name,
        "hostile",
        "swaps wait for the window boundary"
    );
    policies.begin_window();
    assert_eq!(policies.current(PolicyKind::PeerSelection).name, "hostile-alt");
    let stats = policies
        .stats()
        .into_iter()
        .find(|(k, _)| *k == PolicyKind::PeerSelection)
        .unwrap()
        .1;
    assert_eq!((stats.rejections, stats.swaps), (1, 1));
}
