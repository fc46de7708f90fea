//! Shadow trials end to end: the simulator's daemon runs a peer-selection candidate that deliberately disagrees
//! (example-rotation ignores the leader's lists), with `shadow_aggregate`; the receipts and `/metrics` show the
//! disagreement, and the stored aggregates have exactly the sign bits of a run without the shadow. A candidate that
//! never returns (a Python plugin spinning until its fuel runs out) changes nothing but a counter.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aggregator_codec::{Aggregate, Limits};
use aggregator_daemon::WindowResult;
use aggregator_model::ModelSpec;
use aggregator_policy::{EXAMPLE_ROTATION, PolicyEngine, PolicyLimits};
use aggregator_receipt::Receipt;
use aggregator_sim::{self as sim, SimOptions, SimOutcome};
use aggregator_store::keys;
use aggregator_testkit::{free_port, metric_sample};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("shadow-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn simulate(dir: &Path, options: SimOptions) -> SimOutcome {
    sim::run(SimOptions {
        windows: 3,
        peers: 6,
        data_dir: Some(dir.join("sim")),
        metrics: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
        verbose: false,
        ..options
    })
    .await
    .unwrap()
}

/// Per stored window: its packed sign bits per parameter, and its receipt.
type Stored = BTreeMap<u64, (Vec<(String, Vec<u8>)>, Receipt)>;

/// Each stored window's packed sign bits, and its receipt.
fn stored(dir: &Path, outcome: &SimOutcome) -> Stored {
    let out = dir.join("sim/store").join(sim::OUTPUT_BUCKET);
    let model = ModelSpec::preset("tiny").unwrap();
    let limits = Limits::default();
    outcome
        .reports
        .iter()
        .filter(|r| r.result == WindowResult::Stored)
        .map(|r| {
            let bytes = std::fs::read(out.join(keys::aggregate(r.window, sim::VERSION))).unwrap();
            let params = Aggregate::read(&bytes, Some(&model), &limits).unwrap().params;
            let text = std::fs::read(out.join(keys::receipt(r.window, sim::VERSION))).unwrap();
            (r.window, (params, Receipt::from_json(&text, "receipt").unwrap()))
        })
        .collect()
}

/// The same sign bits in every window both runs stored (and at least two of them).
fn same_bits(a: &Stored, b: &Stored) {
    let common: Vec<u64> = a.keys().filter(|w| b.contains_key(w)).copied().collect();
    assert!(common.len() >= 2, "windows {:?} and {:?}", a.keys(), b.keys());
    for w in common {
        assert!(
            a[&w].0 == b[&w].0,
            "window {w}: the shadow changed the stored aggregate"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disagreeing_shadow_is_recorded_and_measured_and_changes_no_bit() {
    let dir = scratch("differs");
    let plain = simulate(&dir.join("plain"), SimOptions::default()).await;
    let plain_windows = stored(&dir.join("plain"), &plain);

    let candidate = dir.join("example_rotation.wasm");
    std::fs::write(&candidate, EXAMPLE_ROTATION).unwrap();
    let settings = vec![
        ("max_peers".to_string(), "4".to_string()),
        ("core".to_string(), "2".to_string()),
        ("blacklist".to_string(), "0".to_string()),
    ];
    let shadowed = simulate(
        &dir.join("shadowed"),
        SimOptions {
            shadow_peer_selection: Some(candidate),
            shadow_aggregate: true,
            policy_settings: settings,
            ..SimOptions::default()
        },
    )
    .await;
    let shadowed_windows = stored(&dir.join("shadowed"), &shadowed);
    same_bits(&plain_windows, &shadowed_windows);

    for (w, (_, receipt)) in &shadowed_windows {
        assert_eq!(receipt.policies.peer_selection.component.name, "templar-default");
        let call = receipt
            .shadow
            .peer_selection
            .as_ref()
            .expect("the shadow call is recorded");
        assert_eq!(call.component.name, "example-rotation");
        let decision = call.decision.as_ref().expect("it decided");
        assert_eq!(decision.peers.len(), 4, "window {w}");
        let cmp = call.comparison.as_ref().unwrap();
        let active = &receipt.policies.peer_selection.decision.peers;
        assert_eq!(active.len(), 6, "window {w}: the leader's list");
        assert_eq!(cmp.peers_removed.len(), 2, "window {w}: {cmp:?}");
        assert_eq!(cmp.jaccard, Some(4.0 / 6.0), "window {w}");
        assert!(!cmp.same());
        // Same input as the active call (the candidate's own state aside).
        assert_eq!(
            call.input.neurons.len(),
            receipt.policies.peer_selection.input.neurons.len()
        );
        assert_eq!(call.input.current, receipt.policies.peer_selection.input.current);
        let agg = receipt.shadow.aggregate.as_ref().expect("shadow_aggregate");
        let agreement = agg
            .sign_agreement
            .unwrap_or_else(|| panic!("window {w}: {:?}", agg.error));
        assert!((0.0..=1.0).contains(&agreement) && agg.bits_compared > 0, "{agg:?}");
        assert_eq!(agg.aggregated.len(), 4, "{agg:?}");
        assert!(
            agg.fetched.is_empty(),
            "the candidate's peers are a subset of the active ones"
        );
        // Four of six peers' gradients (two of them at 0.5): most, not all, sign bits agree.
        assert!(agreement < 1.0 && agreement > 0.5, "window {w}: {agreement}");
    }
    let m = &shadowed.metrics_text;
    let n = shadowed_windows.len() as f64;
    assert!(
        metric_sample(
            m,
            "aggregator_shadow_calls_total{policy=\"peer-selection\",result=\"differs\"}"
        ) >= n,
        "{m}"
    );
    assert!(metric_sample(m, "aggregator_shadow_peers_removed_total") >= 2.0 * n);
    assert!((metric_sample(m, "aggregator_shadow_jaccard_ratio") - 4.0 / 6.0).abs() < 1e-9);
    let agreement = metric_sample(m, "aggregator_shadow_sign_agreement_ratio");
    assert!(agreement > 0.5 && agreement < 1.0, "{agreement}");
    for result in ["same", "differs", "failed"] {
        let series = format!("aggregator_shadow_calls_total{{policy=\"peer-selection\",result=\"{result}\"}}");
        assert_eq!(metric_sample(&plain.metrics_text, &series), 0.0, "no shadow, no calls");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_never_returns_changes_only_its_counter() {
    let dir = scratch("spins");
    let plain = simulate(&dir.join("plain"), SimOptions::default()).await;
    let hostile = aggregator_testkit::python::build(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/guests-py/hostile"),
        "app",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit/policy.wit"),
        "peer-selector",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let candidate = dir.join("python_hostile.wasm");
    std::fs::write(&candidate, &hostile).unwrap();
    // Compile it into the daemon's cache first (as a restarted daemon finds it): compiling CPython cold takes
    // seconds, which would make the daemon start after the simulated miners' first window.
    let engine = PolicyEngine::new(PolicyLimits::default(), Some(dir.join("spun/sim/state/policy-cache"))).unwrap();
    engine.load(&hostile, "python-hostile").unwrap();
    let spun = simulate(
        &dir.join("spun"),
        SimOptions {
            shadow_peer_selection: Some(candidate),
            policy_settings: vec![("misbehave".into(), "spin".into())],
            ..SimOptions::default()
        },
    )
    .await;
    same_bits(&stored(&dir.join("plain"), &plain), &stored(&dir.join("spun"), &spun));
    let windows = stored(&dir.join("spun"), &spun);
    let failed: Vec<&str> = windows
        .values()
        .filter_map(|(_, r)| r.shadow.peer_selection.as_ref()?.error.as_deref())
        .collect();
    // The first window has no peers yet (the plugin only spins once it has some).
    assert!(
        !failed.is_empty() && failed.iter().all(|e| e.contains("fuel")),
        "{failed:?}"
    );
    let m = &spun.metrics_text;
    assert_eq!(
        metric_sample(
            m,
            "aggregator_shadow_calls_total{policy=\"peer-selection\",result=\"failed\"}"
        ),
        failed.len() as f64
    );
    assert_eq!(metric_sample(m, "aggregator_errors_total{kind=\"policy\"}"), 0.0, "{m}");
    assert!(
        spun.reports
            .iter()
            .all(|r| !matches!(r.result, WindowResult::Failed(_))),
        "{:?}",
        spun.reports
    );
}
