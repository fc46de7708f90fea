//! One window split across four shards, end to end against SeaweedFS: the simulator runs the daemon as shard 0 and
//! three more shards beside it, which share nothing but the output bucket. Every stored aggregate replays (the
//! validators' check: each peer's file fetched again, the evidence re-derived in one process, the aggregate
//! recomputed from whole files and compared bit for bit), so the shards' output is the one node's, byte for byte,
//! for the same metadata timestamp; each receipt names the four shards. With faults, a copier (whose evidence
//! needs the second pass across shards) and a peer whose file is malformed in the last parameter only (valid in
//! three shards' ranges, skipped by all). And a shard stopped mid-window: the attempt is aborted (no object), the
//! window is retried once the shard is back, and stored.

use std::path::PathBuf;
use std::sync::Arc;

use aggregator_codec::{Aggregate, Gradient, Limits};
use aggregator_daemon::WindowResult;
use aggregator_kernels::Cpu;
use aggregator_model::ModelSpec;
use aggregator_policy::{PolicyEngine, PolicyLimits};
use aggregator_receipt::{PeerOutcome, Receipt, ReplayOptions, replay};
use aggregator_sim::adversary::Adversaries;
use aggregator_sim::{self as sim, S3Target, SimOptions, SimOutcome};
use aggregator_store::{Bucket, ClientSettings, Clients, SkipKind, keys};
use aggregator_testkit::seaweed::{ADMIN, BucketAccess, SeaweedFs};
use aggregator_testkit::start_seaweed;
use aggregator_window::evidence::EvidenceOrder;
use aggregator_window::{PeerInput, aggregate_window};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

const PEERS: u16 = 14;
/// Malformed in the model's last parameter only.
const PARTLY_MALFORMED: u16 = 3;

async fn get(clients: &Clients, bucket: &Bucket, key: &str) -> Option<Vec<u8>> {
    let store = clients.get(bucket).unwrap();
    match store.get(&Path::from(key)).await {
        Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("{key}: {e}"),
    }
}

async fn seaweed(name: &str) -> SeaweedFs {
    let buckets: Vec<BucketAccess> = sim::s3_buckets(PEERS).into_iter().map(Into::into).collect();
    start_seaweed(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")), name, &buckets)
        .await
        .unwrap()
}

fn options(sw: &SeaweedFs, name: &str) -> SimOptions {
    SimOptions {
        windows: 3,
        peers: PEERS,
        model: "tiny".into(),
        s3: Some(S3Target {
            endpoint: sw.endpoint().to_string(),
            writer: (ADMIN.0.into(), ADMIN.1.into()),
        }),
        data_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sim-{name}-{}", std::process::id()))),
        shards: 4,
        ..SimOptions::default()
    }
}

/// Every stored window's receipt, after checking that its aggregate replays bit for bit and names four shards.
async fn check_stored(sw: &SeaweedFs, outcome: &SimOutcome) -> Vec<Receipt> {
    let clients = Clients::new(ClientSettings::default());
    let output = sw.admin_bucket(sim::OUTPUT_BUCKET);
    let replaying = ReplayOptions {
        output: Some(clients.get(&output).unwrap()),
        aggregate: None,
        clients: Clients::new(ClientSettings::default()),
        model: Arc::new(ModelSpec::preset("tiny").unwrap()),
        backend: Arc::new(Cpu::new()),
        engine: PolicyEngine::new(PolicyLimits::default(), None).unwrap(),
        components: vec![],
        timeout: std::time::Duration::from_secs(30),
    };
    let mut receipts = Vec::new();
    for r in &outcome.reports {
        let w = r.window;
        let stored = get(&clients, &output, &keys::aggregate(w, sim::VERSION)).await;
        match (&r.result, stored) {
            (WindowResult::Stored, Some(bytes)) => {
                let text = get(&clients, &output, &keys::receipt(w, sim::VERSION))
                    .await
                    .expect("a stored window has its receipt");
                let receipt = Receipt::from_json(&text, "receipt").unwrap();
                assert_eq!(receipt.output.size, bytes.len() as u64);
                assert_eq!(r.output_sha256.as_deref(), Some(receipt.output.sha256.as_str()));
                let shards = receipt.shards.as_ref().expect("the receipt names the shards");
                assert_eq!(shards.count, 4, "window {w}");
                assert_eq!(shards.judging.len(), 4, "window {w}");
                assert_eq!(receipt.policies.evidence_order, EvidenceOrder::ByParameter);
                let verdict = replay(&receipt, &replaying).await;
                assert!(verdict.passed(), "window {w}: {:#?}", verdict.steps);
                for what in ["evidence", "recomputed"] {
                    assert!(
                        verdict
                            .steps
                            .iter()
                            .any(|s| s.what.starts_with(what) && !s.verdict.failed()),
                        "window {w}: no {what} step: {:#?}",
                        verdict.steps
                    );
                }
                receipts.push(receipt);
            }
            (WindowResult::NoValidPeers, None) => {}
            (result, stored) => panic!("window {w}: {result:?} with output {:?}", stored.map(|b| b.len())),
        }
    }
    receipts
}

/// The coordination objects of every stored window are gone (`shards/current.json` stays).
async fn nothing_left_over(sw: &SeaweedFs, receipts: &[Receipt]) {
    let clients = Clients::new(ClientSettings::default());
    let store = clients.get(&sw.admin_bucket(sim::OUTPUT_BUCKET)).unwrap();
    let names: Vec<String> = store
        .list(Some(&Path::from("shards")))
        .map_ok(|o| o.location.to_string())
        .try_collect()
        .await
        .unwrap();
    for r in receipts {
        let prefix = format!("shards/{}/", r.window);
        assert!(
            !names.iter().any(|n| n.starts_with(&prefix)),
            "window {}: {names:?}",
            r.window
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_store_what_one_node_would_and_agree_on_validity() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let sw = seaweed("shards").await;
    let outcome = sim::run(SimOptions {
        // The faults rotate over the miners: the copier (the last uid) and its victim are both valid in the 4th.
        windows: 4,
        faults: true,
        adversaries: "copy:1".parse::<Adversaries>().unwrap(),
        partly_malformed: vec![PARTLY_MALFORMED],
        ..options(&sw, "shards")
    })
    .await
    .unwrap();
    assert_eq!(outcome.reports.len(), 4);
    let receipts = check_stored(&sw, &outcome).await;
    assert!(receipts.len() >= 3, "{:?}", outcome.reports);
    let (mut disagreed, mut copied) = (0, 0);
    for receipt in &receipts {
        let w = receipt.window;
        // The copier and its victim, when both were valid: one copy group, found from the shards' first passes
        // (and the statistics made again by the second passes, each shard over its range).
        let call = receipt.policies.contribution_weighting.as_ref().unwrap();
        if call.input.peers.iter().any(|p| p.copies == 2) {
            copied += 1;
        }
        let peer = receipt.peers.iter().find(|p| p.uid == PARTLY_MALFORMED).unwrap();
        if outcome.faults.contains_key(&(w, PARTLY_MALFORMED)) {
            continue;
        }
        // Valid in three shards' ranges, malformed in the last's: skipped by all, a second round of judging.
        assert_eq!(peer.outcome, PeerOutcome::Skipped, "window {w}");
        let skip = peer.skip.as_ref().unwrap();
        assert_eq!(skip.kind, "malformed", "window {w}: {skip:?}");
        let rounds = receipt.shards.as_ref().unwrap().rounds;
        assert_eq!(rounds, 2, "window {w}");
        disagreed += 1;
    }
    assert!(
        disagreed >= 1 && copied >= 1,
        "{disagreed} windows with two rounds, {copied} with copies"
    );
    for r in &outcome.reports {
        for (uid, reason) in &r.skipped {
            if *uid == PARTLY_MALFORMED && !outcome.faults.contains_key(&(r.window, *uid)) {
                assert_eq!(reason.kind(), SkipKind::Malformed);
            }
        }
    }
    nothing_left_over(&sw, &receipts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_stopped_mid_window_fails_the_attempt_and_the_window_is_stored_on_retry() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let sw = seaweed("shard-outage").await;
    let outcome = sim::run(SimOptions {
        // Windows long enough that the failed attempt (bounded by the gather's timeout and the wait) leaves the
        // window within the backfill horizon when it is retried.
        blocks_per_window: 8,
        shard_wait_s: 3.0,
        shard_outage: Some((2, 1)),
        ..options(&sw, "shard-outage")
    })
    .await
    .unwrap();
    let receipts = check_stored(&sw, &outcome).await;
    assert_eq!(receipts.len(), 3, "every window stored: {:?}", outcome.reports);
    let retried = receipts.iter().find(|r| r.window == outcome.first_window + 1).unwrap();
    let shards = retried.shards.as_ref().unwrap();
    assert!(shards.attempt >= 1, "the first attempt failed: {shards:?}");
    let failures =
        aggregator_testkit::metric_sample(&outcome.metrics_text, "aggregator_errors_total{kind=\"storage\"}");
    assert!(failures >= 1.0, "{}", outcome.metrics_text);
    nothing_left_over(&sw, &receipts).await;
}

/// A miner replaces its file once shard 0 has judged the window. Reads are pinned to the `ETag` each shard saw, and
/// an `ETag` that differs between shards fails the attempt, so the stored window is made of one version of the
/// file: either the replacement (the attempt that saw the old one failed, the retry judged the new one; the window
/// replays from the bucket) or, when the store served every pinned read of the old version, the old one (the output
/// is then recomputed from the kept old file and equals the stored bytes). Never a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_mid_window_is_never_mixed() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let sw = seaweed("shard-replace").await;
    const UID: u16 = 5;
    let outcome = sim::run(SimOptions {
        windows: 2,
        replace_mid_window: Some((UID, 0)),
        ..options(&sw, "shard-replace")
    })
    .await
    .unwrap();
    let w = outcome.first_window;
    let clients = Clients::new(ClientSettings::default());
    let key = keys::gradient(w, UID, sim::VERSION);
    let now = clients
        .get(&sw.admin_bucket(&sim::bucket_name(UID)))
        .unwrap()
        .head(&Path::from(key.as_str()))
        .await
        .unwrap();
    let old = std::fs::read(outcome.data_dir.join(format!("replaced-{w}-{UID}.pt"))).expect("the old file was kept");
    let output = sw.admin_bucket(sim::OUTPUT_BUCKET);
    let receipt = Receipt::from_json(
        &get(&clients, &output, &keys::receipt(w, sim::VERSION))
            .await
            .expect("the window is stored"),
        "receipt",
    )
    .unwrap();
    let peer = receipt.peers.iter().find(|p| p.uid == UID).unwrap();
    let recorded = peer.file.as_ref().and_then(|f| f.etag.clone());
    if recorded == now.e_tag {
        // The new version: the window replays from the buckets as they are.
        check_stored(&sw, &outcome).await;
    } else {
        // The old version: every input as the receipt names it, uid 5's from the kept file, gives the stored bytes.
        let model = ModelSpec::preset("tiny").unwrap();
        let limits = Limits::for_gradient(model.sparse_bytes() as u64);
        let mut inputs = Vec::new();
        for p in &receipt.peers {
            let input = match p.outcome {
                PeerOutcome::Aggregated => {
                    let bytes = if p.uid == UID {
                        old.clone()
                    } else {
                        let k = keys::gradient(w, p.uid, sim::VERSION);
                        get(&clients, &sw.admin_bucket(&sim::bucket_name(p.uid)), &k)
                            .await
                            .unwrap()
                    };
                    assert_eq!(p.weight, 1.0);
                    PeerInput::valid(Gradient::read(&bytes, &model, &limits).unwrap())
                }
                _ => PeerInput::Skipped(p.skip.as_ref().map_or(String::new(), |s| s.reason.clone())),
            };
            inputs.push((p.uid, input));
        }
        let stored = get(&clients, &output, &keys::aggregate(w, sim::VERSION)).await.unwrap();
        let file = Aggregate::read(&stored, Some(&model), &Limits::default()).unwrap();
        let expected = aggregate_window(
            &model,
            &Cpu::new(),
            w as i64,
            sim::VERSION,
            &inputs,
            file.timestamp.clone(),
        )
        .unwrap()
        .file
        .unwrap();
        assert_eq!(
            expected.to_bytes().unwrap(),
            stored,
            "window {w}: one version, byte for byte"
        );
    }
}
