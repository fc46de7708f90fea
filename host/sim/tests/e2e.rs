//! End to end: the simulator with faults against a real SeaweedFS (S3 on 127.0.0.1), checked from the outside: every
//! output decodes and equals an independent recomputation from the stored gradient files, the skipped uids and
//! reasons are the ones the faults caused, and `/metrics` counts what happened.

use std::collections::BTreeMap;
use std::path::PathBuf;

use aggregator_codec::{Aggregate, Gradient, Limits};
use aggregator_daemon::WindowResult;
use aggregator_kernels::Cpu;
use aggregator_model::ModelSpec;
use aggregator_policy::{PolicyEngine, PolicyLimits};
use aggregator_receipt::{PeerOutcome, Receipt, ReplayOptions, Verdict, replay};
use aggregator_sim::{self as sim, S3Target, SimOptions};
use aggregator_store::{Bucket, ClientSettings, Clients, SkipKind, keys};
use aggregator_testkit::seaweed::{ADMIN, BucketAccess, SeaweedFs};
use aggregator_testkit::{free_port, metric_sample as sample, start_seaweed};
use aggregator_window::{PeerInput, aggregate_window};
use object_store::ObjectStoreExt;
use object_store::path::Path;

const PEERS: u16 = 6;

async fn seaweed() -> SeaweedFs {
    let buckets: Vec<BucketAccess> = sim::s3_buckets(PEERS).into_iter().map(Into::into).collect();
    start_seaweed(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")), "e2e", &buckets)
        .await
        .unwrap()
}

async fn get(clients: &Clients, bucket: &Bucket, key: &str) -> Option<Vec<u8>> {
    let store = clients.get(bucket).unwrap();
    match store.get(&Path::from(key)).await {
        Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("{key}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_with_faults_against_seaweedfs() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let sw = seaweed().await;
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let outcome = sim::run(SimOptions {
        windows: 3,
        peers: PEERS,
        model: "tiny".into(),
        faults: true,
        s3: Some(S3Target {
            endpoint: sw.endpoint().to_string(),
            writer: (ADMIN.0.into(), ADMIN.1.into()),
        }),
        data_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sim-e2e-{}", std::process::id()))),
        metrics: Some(metrics),
        verbose: false,
        archive_inputs: true,
        ..SimOptions::default()
    })
    .await
    .unwrap();

    let model = ModelSpec::preset("tiny").unwrap();
    let clients = Clients::new(ClientSettings::default());
    let admin = |name: &str| sw.admin_bucket(name);
    let cpu = Cpu::new();
    assert_eq!(outcome.reports.len(), 3);
    assert!(!outcome.faults.is_empty());
    let mut stored = 0;
    let (mut selected, mut aggregated) = (0, 0);
    let mut skipped_by_reason: BTreeMap<SkipKind, u64> = BTreeMap::new();
    for r in &outcome.reports {
        let w = r.window;
        assert_eq!(
            r.selected,
            (1..=PEERS).collect::<Vec<_>>(),
            "window {w}: the leader's list"
        );
        selected += r.selected.len();
        aggregated += r.aggregated.len();
        // Every skip is a fault of that peer in that window, with a reason the fault explains; every faulty peer
        // is skipped.
        for (uid, reason) in &r.skipped {
            let fault = outcome
                .faults
                .get(&(w, *uid))
                .unwrap_or_else(|| panic!("window {w}: uid {uid} skipped ({reason}) without a fault"));
            assert!(
                fault.expected_reasons().contains(&reason.kind()),
                "window {w}: uid {uid} {fault:?} reported as {reason}"
            );
            *skipped_by_reason.entry(reason.kind()).or_default() += 1;
        }
        for uid in &r.selected {
            assert_eq!(
                outcome.faults.contains_key(&(w, *uid)),
                r.skipped.iter().any(|(u, _)| u == uid),
                "window {w}: uid {uid}"
            );
        }

        // An independent recomputation from the stored gradient files.
        let mut inputs = Vec::new();
        for &uid in &r.selected {
            let input = match outcome.faults.get(&(w, uid)) {
                Some(f) => PeerInput::Skipped(*f),
                None => {
                    let bytes = get(
                        &clients,
                        &admin(&sim::bucket_name(uid)),
                        &keys::gradient(w, uid, "0.2.73"),
                    )
                    .await
                    .unwrap_or_else(|| panic!("window {w}: uid {uid}'s gradient is stored"));
                    let limits = Limits::for_gradient(model.sparse_bytes() as u64);
                    PeerInput::valid(Gradient::read(&bytes, &model, &limits).unwrap())
                }
            };
            inputs.push((uid, input));
        }
        let output = get(&clients, &admin(sim::OUTPUT_BUCKET), &keys::aggregate(w, "0.2.73")).await;
        let expected = aggregate_window(&model, &cpu, w as i64, "0.2.73", &inputs, "t".into());
        match (&r.result, expected) {
            (WindowResult::Stored, Ok(expected)) => {
                let expected = expected.file.expect("the recomputation has valid peers");
                stored += 1;
                let bytes = output.expect("a stored window has its file");
                assert_eq!(bytes.len() as u64, r.output_bytes);
                let file = Aggregate::read(&bytes, Some(&model), &Limits::default()).unwrap();
                assert_eq!(file.window, w as i64);
                assert_eq!(file.params, expected.params, "window {w}: bits equal the recomputation");
                assert_eq!(file.skipped_uids, expected.skipped_uids);
                assert_eq!(file.success_rate, expected.success_rate);
            }
            (WindowResult::NoValidPeers, Ok(expected)) if expected.file.is_none() => assert!(output.is_none()),
            (result, expected) => panic!("window {w}: {result:?} but the recomputation gives {expected:?}"),
        }
    }
    assert!(stored >= 2, "most windows have valid peers");

    // /metrics, scraped by the simulator right after the last window.
    let m = &outcome.metrics_text;
    assert_eq!(
        sample(m, "aggregator_windows_total{result=\"stored\"}"),
        stored as f64,
        "{m}"
    );
    assert_eq!(sample(m, "aggregator_peers_selected_total"), selected as f64);
    assert_eq!(sample(m, "aggregator_peers_aggregated_total"), aggregated as f64);
    for (reason, n) in &skipped_by_reason {
        assert_eq!(
            sample(m, &format!("aggregator_peers_skipped_total{{reason=\"{reason}\"}}")),
            *n as f64
        );
    }
    assert_eq!(
        sample(m, "aggregator_last_processed_window"),
        outcome.reports.last().unwrap().window as f64
    );
    assert_eq!(sample(m, "aggregator_stage_seconds_count{stage=\"gather\"}"), 3.0);
    // The window after the last may have closed already (it is being processed when the simulator scrapes).
    assert!(sample(m, "aggregator_lag_windows") <= 1.0);
    let last = outcome.reports.last().unwrap();
    assert_eq!(
        sample(m, "aggregator_window_success_ratio"),
        last.aggregated.len() as f64 / last.selected.len() as f64
    );

    // Every stored window replays from its receipt over S3 (inputs by SHA-256, policies re-run, the aggregate
    // recomputed bit for bit); then again after a miner deletes its file, from the archived copy.
    let output = clients.get(&admin(sim::OUTPUT_BUCKET)).unwrap();
    let options = ReplayOptions {
        output: Some(output.clone()),
        aggregate: None,
        clients: Clients::new(ClientSettings::default()),
        model: std::sync::Arc::new(model.clone()),
        backend: std::sync::Arc::new(Cpu::new()),
        engine: PolicyEngine::new(PolicyLimits::default(), None).unwrap(),
        components: vec![],
        timeout: std::time::Duration::from_secs(30),
    };
    let mut replayed = 0;
    for r in outcome.reports.iter().filter(|r| r.result == WindowResult::Stored) {
        let w = r.window;
        let text = get(&clients, &admin(sim::OUTPUT_BUCKET), &keys::receipt(w, "0.2.73"))
            .await
            .expect("a stored window has its receipt");
        let receipt = Receipt::from_json(&text, "receipt").unwrap();
        assert_eq!(
            receipt.chain.sync_block_hash.as_deref().map(str::len),
            Some(66),
            "a block hash"
        );
        assert_eq!(receipt.peers.len(), r.selected.len());
        let report = replay(&receipt, &options).await;
        assert!(report.passed(), "window {w}: {:#?}", report.steps);
        let aggregated: Vec<_> = receipt
            .peers
            .iter()
            .filter(|p| p.outcome == PeerOutcome::Aggregated)
            .collect();
        assert!(aggregated.iter().all(|p| p.archived.is_some()), "window {w}: archived");
        let victim = aggregated[0];
        let key = keys::gradient(w, victim.uid, "0.2.73");
        clients
            .get(&admin(&sim::bucket_name(victim.uid)))
            .unwrap()
            .delete(&Path::from(key.as_str()))
            .await
            .unwrap();
        let report = replay(&receipt, &options).await;
        assert!(
            report.passed(),
            "window {w} without uid {}'s file: {:#?}",
            victim.uid,
            report.steps
        );
        assert!(
            report
                .steps
                .iter()
                .any(|s| s.what == format!("uid {} input", victim.uid)
                    && matches!(&s.verdict, Verdict::Match(t) if t.starts_with("archive inputs/"))),
            "{:#?}",
            report.steps
        );
        replayed += 1;
    }
    assert_eq!(replayed, stored);
    std::fs::remove_dir_all(&outcome.data_dir).ok();
}
