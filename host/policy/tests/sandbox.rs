//! Hostile components, built from `tests/guests` by the test, are contained: a clear error, a stopped loop, an
//! unaffected host, the fallback used and counted.

mod common;

use std::time::{Duration, Instant};

use aggregator_policy::golden::selection_input;
use aggregator_policy::{EXAMPLE_ROTATION, Policies, PolicyConfig, PolicyError, PolicyKind};

#[test]
fn imports_outside_the_allow_list_are_refused_at_load() {
    let e = common::engine();
    for (features, needle) in [(&["fs"][..], "wasi:filesystem"), (&["net"][..], "wasi:sockets")] {
        let err = e.load(&common::guest("hostile", features), "hostile").unwrap_err();
        assert!(
            matches!(&err, PolicyError::ImportNotAllowed { import, .. } if import.starts_with(needle)),
            "{features:?}: {err}"
        );
    }
    let err = e.load(&common::guest("evil-import", &[]), "evil").unwrap_err();
    assert!(
        matches!(&err, PolicyError::ImportNotAllowed { import, .. } if import.starts_with("templar:policy/network")),
        "{err}"
    );
}

#[test]
fn a_wrong_interface_is_refused_at_load() {
    let err = common::engine()
        .load(&common::guest("wrong-interface", &[]), "wrong")
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::WrongInterface { reason, .. } if reason.contains("@2.0.0")),
        "{err}"
    );
    let err = common::engine().load(b"\0asm not really", "garbage").unwrap_err();
    assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
}

#[test]
fn a_self_check_that_never_ends_is_stopped_and_refused() {
    let t = Instant::now();
    let err = common::engine()
        .load(&common::guest("hostile", &["selfcheck-spin"]), "spinner")
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::SelfCheck { reason, .. } if reason.contains("fuel")),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "compile + stopped self-check took {:?}",
        t.elapsed()
    );
}

#[test]
fn misbehaving_calls_are_contained_and_fall_back_to_the_default() {
    let dir = common::scratch("sandbox");
    let path = dir.path().join("hostile.wasm");
    common::install(&path, &common::guest("hostile", &[]));
    type Expect = fn(&PolicyError) -> bool;
    let cases: [(&str, Expect); 5] = [
        ("spin", |e| matches!(e, PolicyError::OutOfFuel { .. })),
        ("oom", |e| matches!(e, PolicyError::MemoryLimit { .. })),
        (
            "panic",
            |e| matches!(e, PolicyError::Trap { message, .. } if message.contains("panics on purpose (window 1000)")),
        ),
        (
            "error",
            |e| matches!(e, PolicyError::Rejected { message, .. } if message.contains("refuses")),
        ),
        (
            "bad-weights",
            |e| matches!(e, PolicyError::InvalidOutput { reason, .. } if reason.contains("1 weights for 2 peers")),
        ),
    ];
    for (i, (mode, expected)) in cases.into_iter().enumerate() {
        let config = PolicyConfig {
            components: [(PolicyKind::PeerSelection, path.clone())].into(),
            settings: vec![("misbehave".into(), mode.into())],
        };
        let policies = Policies::new(common::engine().clone(), config).unwrap();
        assert_eq!(policies.current(PolicyKind::PeerSelection).name, "hostile");
        // A window after start-up: the policy has peers, and misbehaves.
        let mut input = selection_input(256);
        input.current = vec![1, 2, 3];
        let t = Instant::now();
        let out = policies
            .select_peers(input)
            .unwrap_or_else(|e| panic!("{mode}: no fallback: {e}"));
        let took = t.elapsed();
        let cause = out
            .fallback
            .clone()
            .unwrap_or_else(|| panic!("{mode}: the hostile policy answered"));
        assert!(expected(&cause), "{mode}: {cause}");
        assert!(
            out.policy.starts_with("templar-default"),
            "{mode}: answered by {}",
            out.policy
        );
        if mode == "spin" {
            assert!(took < Duration::from_millis(200), "the loop ran {took:?}");
        }
        let stats = policies
            .stats()
            .into_iter()
            .find(|(k, _)| *k == PolicyKind::PeerSelection)
            .unwrap()
            .1;
        assert_eq!(
            (stats.calls, stats.failures, stats.fallbacks),
            (1, 1, 1),
            "{mode} (case {i})"
        );
        // The host is unaffected: the same policies serve the next call, and a well-behaved one still works.
        assert!(policies.select_peers(selection_input(16)).is_ok());
    }
    let normal = PolicyConfig {
        components: [(PolicyKind::PeerSelection, path)].into(),
        ..Default::default()
    };
    let policies = Policies::new(common::engine().clone(), normal).unwrap();
    let out = policies.select_peers(selection_input(16)).unwrap();
    assert!(out.fallback.is_none());
    assert_eq!(out.value.peers, [0, 1, 2]);
}

#[test]
fn the_example_plugin_loads_and_weighs_its_peers() {
    let l = common::engine()
        .load(EXAMPLE_ROTATION, "embedded:example-rotation")
        .unwrap();
    assert_eq!(
        (l.name.as_str(), l.kinds.as_slice()),
        ("example-rotation", &[PolicyKind::PeerSelection][..])
    );
    let mut input = selection_input(64);
    input.config = vec![("max_peers".into(), "6".into()), ("core".into(), "4".into())];
    let s = common::engine().select(&l, &input).unwrap().value;
    assert_eq!(s.peers.len(), 6);
    assert_eq!(s.weights.as_deref(), Some(&[1.0, 1.0, 1.0, 1.0, 0.5, 0.5][..]));
    input.chain.window += 1;
    let next = common::engine().select(&l, &input).unwrap().value;
    assert_eq!(next.peers[..4], s.peers[..4], "core peers are stable");
    assert_ne!(next.peers[4..], s.peers[4..], "exploring peers rotate");
}
