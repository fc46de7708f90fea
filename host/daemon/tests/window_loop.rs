//! The window loop (`Daemon::run`) on an in-memory chain fake and local-directory buckets: no devnet, no WebSocket,
//! no S3 server, so each case runs in well under a second once the policies are compiled (they are cached across
//! the cases in the target's tmp folder). The real chain client and storage are tested elsewhere (`host/chain`,
//! `host/store`, the e2e and outage tests); here the loop's own decisions are: a missing timestamp, a missing leader
//! list, a failed put retried, backfill order, an aggregate that already exists, receipts (beside each aggregate, and
//! recovered after a crash between the two writes).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aggregator_chain::{Closed, HeadEvent};
use aggregator_codec::PeerList;
use aggregator_daemon::{Daemon, DaemonConfig, GatherConfig, OutputBucket, PolicyFiles, WindowReport, WindowResult};
use aggregator_kernels::Cpu;
use aggregator_model::ModelSpec;
use aggregator_sim::{self as sim, VERSION};
use aggregator_store::{Bucket, ClientSettings, Clients, PutOptions, keys, put};
use aggregator_testkit::{FakeChain, metric_sample as sample};
use tokio::sync::{mpsc, watch};

const BPW: u32 = 10;
const PEERS: u16 = 3;
const NETUID: u16 = 3;

/// Neurons 0..=PEERS (uid 0, the leader, has the highest stake), each committed to its simulated bucket, and
/// `Timestamp::Now` = `timestamp_ms` at every block (or an error).
fn chain(timestamp_ms: Option<u64>) -> FakeChain {
    FakeChain {
        timestamp_ms,
        ..FakeChain::with_peers(PEERS, sim::commitment)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One case's world: peer buckets and the output bucket in local directories, removed with it.
struct World {
    dir: tempfile::TempDir,
    clients: Clients,
    model: ModelSpec,
}

impl World {
    fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("window-loop-")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .unwrap(),
            clients: Clients::new(ClientSettings::default()),
            model: ModelSpec::preset("tiny").unwrap(),
        }
    }

    fn peers_root(&self) -> std::path::PathBuf {
        self.dir.path().join("peers")
    }

    fn output(&self) -> Bucket {
        Bucket::local(self.dir.path().join("out"), "out")
    }

    async fn upload(&self, bucket: &Bucket, key: &str, bytes: Vec<u8>) {
        let store = self.clients.get(bucket).unwrap();
        put(store.as_ref(), key, bytes.into(), &PutOptions::default())
            .await
            .unwrap();
    }

    /// The leader's two posted lists, as a validator that has run a while has them (sync windows `first - 2` and
    /// `first - 1`; a starting aggregator takes the older one): every miner.
    async fn post_lists(&self, first: u64) {
        let leader = Bucket::local(self.peers_root(), &sim::bucket_name(0));
        for (n, initial) in [(first - 2, true), (first - 1, false)] {
            let list = PeerList {
                peers: (1..=PEERS).collect(),
                weights: None,
                initial_selection: initial,
                sync_window: n as i64,
                first_effective_window: n as i64 + 1,
            };
            self.upload(&leader, &keys::peer_list(n, VERSION), list.to_json()).await;
        }
    }

    /// Every miner's honest gradient for `w`.
    async fn gradients(&self, w: u64) {
        for uid in 1..=PEERS {
            let bytes = sim::miner_gradient(&self.model, &Cpu::new(), 7 + uid as u64, w).unwrap();
            let bucket = Bucket::local(self.peers_root(), &sim::bucket_name(uid));
            self.upload(&bucket, &keys::gradient(w, uid, VERSION), bytes).await;
        }
    }

    fn config(&self, last_processed: u64) -> DaemonConfig {
        let state_dir = self.dir.path().join("state");
        aggregator_daemon::StateFile::open(&state_dir)
            .unwrap()
            .save(&aggregator_daemon::PersistedState {
                last_processed: Some(last_processed),
                ..Default::default()
            })
            .unwrap();
        let mut settings = BTreeMap::new();
        settings.insert("time_window_delta_seconds".to_string(), "600".to_string());
        DaemonConfig {
            chain_url: "ws://127.0.0.1:9".into(),
            netuid: NETUID,
            blocks_per_window: BPW,
            version: VERSION.into(),
            model: "tiny".into(),
            state_dir,
            peer_endpoint: self.peers_root().display().to_string(),
            output: OutputBucket {
                endpoint: self.dir.path().join("out").display().to_string(),
                name: "out".into(),
                ..Default::default()
            },
            gather: GatherConfig {
                timeout_s: 2.0,
                concurrency: 4,
            },
            policy: PolicyFiles {
                settings,
                ..Default::default()
            },
            // Compiled once for all the cases (and all runs).
            policy_cache: Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("window-loop-policy-cache")
                .display()
                .to_string(),
            ..DaemonConfig::default()
        }
    }
}

/// Runs the loop on `chain` from `last_processed`, announcing `closed` in one head event, until `n` reports have
/// come; asserts the windows took under 3 s (after start-up) and returns the reports.
async fn run(world: &World, chain: FakeChain, last_processed: u64, closed: Vec<u64>, n: usize) -> Vec<WindowReport> {
    run_with_metrics(world, chain, last_processed, closed, n).await.0
}

/// [`run`], and the metrics' text at the end.
async fn run_with_metrics(
    world: &World,
    chain: FakeChain,
    last_processed: u64,
    closed: Vec<u64>,
    n: usize,
) -> (Vec<WindowReport>, String) {
    let daemon = Daemon::new(world.config(last_processed), chain, world.output()).unwrap();
    let metrics = daemon.metrics();
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    let daemon = daemon
        .with_reports(report_tx)
        .with_retry_backoff(Duration::from_millis(20));
    let (head_tx, head_rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = watch::channel(false);
    let newest = *closed.iter().max().unwrap();
    let block = (newest + 1) * BPW as u64;
    // The loop and the driver in one task (the loop's future is not `Send` for every lifetime, which `spawn` needs).
    let drive = async {
        head_tx
            .send(HeadEvent {
                block,
                window: newest + 1,
                closed: Closed {
                    windows: closed,
                    skipped: 0,
                },
            })
            .await
            .unwrap();
        let mut reports = Vec::new();
        let started = Instant::now();
        while reports.len() < n {
            let r = tokio::time::timeout(Duration::from_secs(20), report_rx.recv())
                .await
                .expect("a report within 20 s")
                .expect("the loop is running");
            reports.push(r);
        }
        let took = started.elapsed();
        stop_tx.send(true).unwrap();
        (reports, took)
    };
    let (result, (reports, took)) = tokio::join!(daemon.run(head_rx, stop_rx, Duration::from_secs(5)), drive);
    result.unwrap();
    assert!(took < Duration::from_secs(3), "{n} windows took {took:?}");
    eprintln!("{n} window(s) in {took:?}");
    (reports, metrics.encode())
}

fn receipt_path(world: &World, w: u64) -> std::path::PathBuf {
    world.dir.path().join("out/out").join(keys::receipt(w, VERSION))
}

fn pending_path(world: &World, w: u64) -> std::path::PathBuf {
    world
        .dir
        .path()
        .join(format!("state/pending-receipts/receipt-{w}.json"))
}

fn stored(world: &World, w: u64) -> bool {
    world
        .dir
        .path()
        .join("out/out")
        .join(keys::aggregate(w, VERSION))
        .is_file()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_without_a_chain_timestamp_uses_the_fallback_bounds() {
    let world = World::new();
    world.post_lists(10).await;
    world.gradients(10).await;
    let reports = run(&world, chain(None), 9, vec![10], 1).await;
    let r = &reports[0];
    assert_eq!(r.result, WindowResult::Stored, "{r:?}");
    assert_eq!(r.aggregated, vec![1, 2, 3]);
    // templar-default's fallback: now ± 30 min.
    let now = now_ms();
    assert!(
        r.bounds.0 < now && r.bounds.1 > now && r.bounds.1 - r.bounds.0 == 3_600_000,
        "{:?}",
        r.bounds
    );
    assert!(stored(&world, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_without_a_leader_list_selects_nobody_and_writes_nothing() {
    let world = World::new();
    world.gradients(10).await;
    let chain = chain(Some(now_ms() - 1_000));
    let reports = run(&world, chain, 9, vec![10], 1).await;
    let r = &reports[0];
    assert_eq!(r.result, WindowResult::NoValidPeers, "{r:?}");
    assert!(r.selected.is_empty());
    assert!(!stored(&world, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_put_is_retried_and_stored_once_it_can_be() {
    let world = World::new();
    world.post_lists(10).await;
    world.gradients(10).await;
    // A directory where the aggregate's file goes: the put fails (for root too) until it is removed.
    let blocker = world.dir.path().join("out/out").join(keys::aggregate(10, VERSION));
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let remover = {
        let blocker = blocker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            std::fs::remove_dir_all(&blocker).unwrap();
        })
    };
    let chain = chain(Some(now_ms() - 1_000));
    let reports = run(&world, chain, 9, vec![10], 1).await;
    remover.await.unwrap();
    assert_eq!(reports[0].result, WindowResult::Stored, "{:?}", reports[0]);
    assert!(stored(&world, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfilled_windows_are_processed_oldest_first() {
    let world = World::new();
    world.post_lists(10).await;
    for w in 10..=12 {
        world.gradients(w).await;
    }
    let chain = chain(Some(now_ms() - 1_000));
    let reports = run(&world, chain, 9, vec![10, 11, 12], 3).await;
    let order: Vec<u64> = reports.iter().map(|r| r.window).collect();
    assert_eq!(order, vec![10, 11, 12]);
    assert!(reports.iter().all(|r| r.result == WindowResult::Stored), "{reports:?}");
    // Each beside its receipt, none left pending.
    for r in &reports {
        assert_eq!(r.receipt.as_deref(), Some(keys::receipt(r.window, VERSION).as_str()));
        let receipt =
            aggregator_receipt::Receipt::from_json(&std::fs::read(receipt_path(&world, r.window)).unwrap(), "r")
                .unwrap();
        assert_eq!(receipt.output.sha256, *r.output_sha256.as_ref().unwrap());
        assert_eq!(receipt.peers.len(), 3);
        assert!(receipt.timings_ms.put.is_some());
        assert!(!pending_path(&world, r.window).exists());
    }
}

/// A crash between the aggregate's put and the receipt's (simulated: the receipt is taken out of the bucket and left
/// in the state directory, as the daemon saves it before the aggregate's put) loses nothing: the next run stores
/// it before its first window. A pending receipt whose aggregate was never stored is dropped. An aggregate with no
/// receipt anywhere is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_left_pending_by_a_crash_is_stored_by_the_next_run() {
    let world = World::new();
    world.post_lists(10).await;
    world.gradients(10).await;
    let chain = || chain(Some(now_ms() - 1_000));
    let reports = run(&world, chain(), 9, vec![10], 1).await;
    assert_eq!(reports[0].result, WindowResult::Stored);
    let written = std::fs::read(receipt_path(&world, 10)).unwrap();
    std::fs::remove_file(receipt_path(&world, 10)).unwrap();
    std::fs::write(pending_path(&world, 10), &written).unwrap();
    // And one for a window whose aggregate's put never completed.
    let orphan = String::from_utf8(written.clone())
        .unwrap()
        .replace(&keys::aggregate(10, VERSION), &keys::aggregate(8, VERSION))
        .replace("\"window\": 10", "\"window\": 8");
    std::fs::write(pending_path(&world, 8), orphan).unwrap();

    let (reports, metrics) = run_with_metrics(&world, chain(), 9, vec![10], 1).await;
    assert_eq!(reports[0].result, WindowResult::AlreadyStored);
    assert_eq!(
        std::fs::read(receipt_path(&world, 10)).unwrap(),
        written,
        "recovered as saved"
    );
    assert!(!pending_path(&world, 10).exists() && !pending_path(&world, 8).exists());
    assert!(!receipt_path(&world, 8).exists());
    assert_eq!(sample(&metrics, "aggregator_receipts_total{result=\"recovered\"}"), 1.0);
    assert_eq!(sample(&metrics, "aggregator_windows_without_receipt_total"), 0.0);

    // Lost with the state directory too: counted.
    std::fs::remove_file(receipt_path(&world, 10)).unwrap();
    let (_, metrics) = run_with_metrics(&world, chain(), 9, vec![10], 1).await;
    assert_eq!(sample(&metrics, "aggregator_windows_without_receipt_total"), 1.0);
}

/// A sharded window saves its receipt pending before the upload completes, without the output's SHA-256 (no process
/// holds the whole file). A crash after the completion leaves that copy: the next run reads the stored aggregate back,
/// fills the digest in and stores the receipt, the same bytes the window would have written. Without the aggregate the
/// copy is dropped (the window is redone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_receipt_without_a_digest_gets_the_stored_aggregates() {
    let world = World::new();
    world.post_lists(10).await;
    world.gradients(10).await;
    let chain = || chain(Some(now_ms() - 1_000));
    let reports = run(&world, chain(), 9, vec![10], 1).await;
    let sha = reports[0].output_sha256.clone().unwrap();
    let written = std::fs::read(receipt_path(&world, 10)).unwrap();
    std::fs::remove_file(receipt_path(&world, 10)).unwrap();
    let text = String::from_utf8(written.clone()).unwrap();
    assert_eq!(text.matches(&sha).count(), 1, "the output's digest appears once");
    let undigested = text.replace(&sha, "");
    std::fs::write(pending_path(&world, 10), &undigested).unwrap();
    std::fs::write(
        pending_path(&world, 8),
        undigested
            .replace(&keys::aggregate(10, VERSION), &keys::aggregate(8, VERSION))
            .replace("\"window\": 10", "\"window\": 8"),
    )
    .unwrap();

    let (reports, metrics) = run_with_metrics(&world, chain(), 9, vec![10], 1).await;
    assert_eq!(reports[0].result, WindowResult::AlreadyStored);
    assert_eq!(
        std::fs::read(receipt_path(&world, 10)).unwrap(),
        written,
        "recovered with the stored object's digest"
    );
    assert!(!pending_path(&world, 10).exists() && !pending_path(&world, 8).exists());
    assert!(!receipt_path(&world, 8).exists());
    assert_eq!(sample(&metrics, "aggregator_receipts_total{result=\"recovered\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_aggregate_is_not_written_again() {
    let world = World::new();
    world.post_lists(10).await;
    world.gradients(10).await;
    world
        .upload(&world.output(), &keys::aggregate(10, VERSION), b"earlier".to_vec())
        .await;
    let chain = chain(Some(now_ms() - 1_000));
    let reports = run(&world, chain, 9, vec![10], 1).await;
    assert_eq!(reports[0].result, WindowResult::AlreadyStored);
    let bytes = std::fs::read(world.dir.path().join("out/out").join(keys::aggregate(10, VERSION))).unwrap();
    assert_eq!(bytes, b"earlier", "untouched");
}
