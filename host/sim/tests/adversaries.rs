//! Poisoned gradients end to end: 15 simulated miners, of which a sign-flipper, a copier and two colluders. With
//! the embedded default (Templar: everyone counts) the stored aggregates differ from the honest miners' own; with
//! `example-robust` as the daemon's contribution-weighting policy the four adversaries get weight 0 (the copy's
//! victim does not), every stored aggregate has exactly the honest-only sign bits, the receipts record the evidence
//! and the weights, the metric counts the exclusions, and every window replays (the evidence re-derived).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use aggregator_daemon::WindowResult;
use aggregator_kernels::Cpu;
use aggregator_model::ModelSpec;
use aggregator_policy::{PolicyEngine, PolicyLimits};
use aggregator_receipt::{Receipt, ReplayOptions, replay};
use aggregator_sim::adversary::Adversaries;
use aggregator_sim::{self as sim, SimOptions, SimOutcome};
use aggregator_store::{ClientSettings, Clients, keys};
use aggregator_testkit::{free_port, metric_sample};

const ADVERSARIES: &str = "sign-flip:1,copy:1,collusion:2";

async fn simulate(name: &str, robust: bool) -> SimOutcome {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("adversaries-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let robust_wasm = dir.join("example_robust.wasm");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&robust_wasm, aggregator_policy::EXAMPLE_ROBUST).unwrap();
    sim::run(SimOptions {
        windows: 3,
        peers: 15,
        data_dir: Some(dir.join("sim")),
        metrics: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
        verbose: false,
        adversaries: ADVERSARIES.parse::<Adversaries>().unwrap(),
        contribution_weighting: robust.then_some(robust_wasm),
        ..SimOptions::default()
    })
    .await
    .unwrap()
}

fn receipt(outcome: &SimOutcome, w: u64) -> Receipt {
    let path = outcome
        .data_dir
        .join("store")
        .join(sim::OUTPUT_BUCKET)
        .join(keys::receipt(w, sim::VERSION));
    Receipt::from_json(&std::fs::read(path).unwrap(), "receipt").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_robust_example_restores_the_honest_aggregate_and_the_default_does_not() {
    let default = simulate("default", false).await;
    let stored: Vec<u64> = default
        .reports
        .iter()
        .filter(|r| r.result == WindowResult::Stored)
        .map(|r| r.window)
        .collect();
    assert!(stored.len() >= 2, "{:?}", default.reports);
    for w in &stored {
        let f = default.honest_agreement[w];
        assert!(
            f < 0.995,
            "window {w}: the default's aggregate agrees with the honest one on {f}"
        );
        let r = receipt(&default, *w);
        let call = r
            .policies
            .contribution_weighting
            .as_ref()
            .expect("the weighting call is recorded");
        assert_eq!(call.component.name, "templar-default");
        assert!(call.decision.weights.iter().all(|x| *x == 1.0));
    }

    let robust = simulate("robust", true).await;
    let clients = Clients::new(ClientSettings::default());
    let options = ReplayOptions {
        output: Some(clients.get(&robust.output).unwrap()),
        aggregate: None,
        clients,
        model: Arc::new(ModelSpec::preset("tiny").unwrap()),
        backend: Arc::new(Cpu::new()),
        engine: PolicyEngine::new(PolicyLimits::default(), None).unwrap(),
        components: vec![],
        timeout: std::time::Duration::from_secs(30),
    };
    let mut windows = 0;
    for report in robust.reports.iter().filter(|r| r.result == WindowResult::Stored) {
        let w = report.window;
        windows += 1;
        let r = receipt(&robust, w);
        let call = r.policies.contribution_weighting.as_ref().unwrap();
        assert_eq!(call.component.name, "example-robust");
        // uids 12 (sign flip), 13 (copies uid 1), 14 and 15 (colluders) at 0; uid 1, the copy's victim, kept.
        let weights: Vec<(u16, f32)> = r.peers.iter().map(|p| (p.uid, p.weight)).collect();
        let expected: Vec<(u16, f32)> = (1..=15).map(|u| (u, if u >= 12 { 0.0 } else { 1.0 })).collect();
        assert_eq!(weights, expected, "window {w}: {}", call.decision.note);
        assert_eq!(robust.honest_agreement[&w], 1.0, "window {w}");
        let copier = call.input.peers.iter().find(|p| p.uid == 13).unwrap();
        assert!(
            copier
                .similar
                .iter()
                .any(|s| s.uid == 1 && s.identical && s.last_modified_ms < copier.last_modified_ms),
            "{copier:?}"
        );
        let colluder = call.input.peers.iter().find(|p| p.uid == 14).unwrap();
        assert_eq!(colluder.copies, 2, "the colluders are one group");
        let verdict = replay(&r, &options).await;
        assert!(verdict.passed(), "window {w}: {:#?}", verdict.steps);
        assert!(
            verdict
                .steps
                .iter()
                .any(|s| s.what.starts_with("evidence") && !s.verdict.failed()),
            "{:#?}",
            verdict.steps
        );
    }
    assert!(windows >= 2);
    assert_eq!(
        metric_sample(&robust.metrics_text, "aggregator_weighting_excluded_peers_total"),
        (4 * windows) as f64
    );
}
