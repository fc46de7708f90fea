//! Outages and bad state, with the unmodified daemon in this process against the simulated network: a storage
//! outage of 30 s loses no window, an unanswering leader bucket costs at most `storage_timeout_s` per window, and a
//! state that is ahead of the chain or that the policy does not recognise is reset, reported and counted, never
//! failing every window.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aggregator_daemon::{DaemonConfig, OutputBucket, PersistedState, Prepared, StateFile, WindowReport, WindowResult};
use aggregator_sim::{self as sim, Network, SimOptions};
use aggregator_store::{ClientSettings, Clients};
use aggregator_testkit::seaweed::{ADMIN, BucketAccess};
use aggregator_testkit::{free_port, start_seaweed};
use futures::TryStreamExt;
use object_store::ObjectStore;
use tokio::sync::{mpsc, watch};

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn network(name: &str, windows: u64, peers: u16) -> Network {
    let net = Network::start(&SimOptions {
        windows,
        peers,
        data_dir: Some(tmp(name)),
        verbose: false,
        ..SimOptions::default()
    })
    .await
    .unwrap();
    net.seed_daemon_state().unwrap();
    net
}

/// Runs the daemon on `config` while `drive` reads its reports; `drive` returns when it has seen enough, and the
/// daemon is then stopped (its result must be Ok).
async fn with_daemon<T>(
    config: DaemonConfig,
    drive: impl AsyncFnOnce(&mut mpsc::UnboundedReceiver<WindowReport>) -> T,
) -> T {
    let output = config.output_bucket(|_| None).unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let daemon = aggregator_daemon::run(
        config,
        std::sync::Arc::new(aggregator_kernels::Cpu::new()),
        output,
        stop_rx,
        aggregator_daemon::RunOptions {
            reports: Some(tx),
            ..Default::default()
        },
    );
    let driver = async {
        let out = drive(&mut rx).await;
        let _ = stop_tx.send(true);
        out
    };
    let (result, out) = tokio::join!(daemon, driver);
    result.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_outage_of_30_s_loses_no_window() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let output_bucket = BucketAccess {
        name: sim::OUTPUT_BUCKET.into(),
        reader: None,
    };
    let mut sw = start_seaweed(&target, "outage", &[output_bucket]).await.unwrap();
    // Peers' buckets stay in a local directory; the output bucket is SeaweedFS, which goes down for 30 s.
    let net = network("outage-storage", 16, 3).await;
    let (first, last) = (net.first_window, net.last_window);
    let mut config = net.daemon_config();
    config.max_backfill = 40;
    config.storage_timeout_s = 10.0;
    config.output = OutputBucket {
        endpoint: sw.endpoint().to_string(),
        name: sim::OUTPUT_BUCKET.into(),
        access_key_id: ADMIN.0.into(),
        secret: ADMIN.1.into(),
    };
    let output = config.output_bucket(|_| None).unwrap();
    let (reports, outage) = with_daemon(config, async |rx| {
        let mut reports: Vec<(WindowReport, Instant)> = Vec::new();
        // Up: the first window is stored.
        while !reports.iter().any(|(r, _)| r.window == first) {
            let r = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .unwrap()
                .unwrap();
            reports.push((r, Instant::now()));
        }
        sw.stop();
        let down = Instant::now();
        while let Ok(Some(r)) =
            tokio::time::timeout(Duration::from_secs(30).saturating_sub(down.elapsed()), rx.recv()).await
        {
            reports.push((r, Instant::now()));
        }
        sw.resume().await.unwrap();
        let up = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !(first..=last).all(|w| reports.iter().any(|(r, _)| r.window == w)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = tokio::time::timeout(left, rx.recv())
                .await
                .expect("every window is reported within 120 s of the recovery")
                .unwrap();
            reports.push((r, Instant::now()));
        }
        (reports, (down, up))
    })
    .await;

    let mut by_window: BTreeMap<u64, Vec<&(WindowReport, Instant)>> = BTreeMap::new();
    for r in reports.iter().filter(|(r, _)| (first..=last).contains(&r.window)) {
        by_window.entry(r.0.window).or_default().push(r);
    }
    let mut after_recovery = 0;
    for w in first..=last {
        let got = &by_window[&w];
        assert_eq!(got.len(), 1, "window {w}: one report, not {got:?}");
        let (r, at) = got[0];
        assert!(
            matches!(r.result, WindowResult::Stored | WindowResult::AlreadyStored),
            "window {w}: {:?}",
            r.result
        );
        assert!(
            *at < outage.0 || *at >= outage.1,
            "window {w}: nothing finishes while storage is down"
        );
        if *at >= outage.1 {
            after_recovery += 1;
        }
    }
    assert!(
        after_recovery >= 8,
        "the windows that closed during the outage were retried after it ({after_recovery})"
    );
    // Exactly one aggregate and its receipt per window, nothing else.
    let store = Clients::new(ClientSettings::default()).get(&output).unwrap();
    let mut names: Vec<String> = store
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    use aggregator_store::keys;
    names.retain(|n| {
        keys::parse_aggregate(n, "0.2.73")
            .or_else(|| keys::parse_receipt(n, "0.2.73"))
            .is_none_or(|w| (first..=last).contains(&w))
    });
    names.sort();
    let mut expected: Vec<String> = (first..=last)
        .flat_map(|w| [keys::aggregate(w, "0.2.73"), keys::receipt(w, "0.2.73")])
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    let dir = net.data_dir.clone();
    net.stop().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswering_leader_bucket_costs_at_most_the_storage_timeout() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let net = network("outage-leader", 3, 2).await;
    let first = net.first_window;
    let mut config = net.daemon_config();
    config.peer_endpoint = format!("http://{addr}");
    config.storage_timeout_s = 2.0;
    config.gather.timeout_s = 2.0;
    let reports = with_daemon(config, async |rx| {
        let mut got = Vec::new();
        while got.len() < 3 {
            let r = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if r.window >= first {
                got.push(r);
            }
        }
        got
    })
    .await;
    for r in &reports {
        assert!(
            r.chain < Duration::from_secs(4),
            "window {}: chain stage {:?}, over storage_timeout_s",
            r.window,
            r.chain
        );
    }
    let windows: Vec<u64> = reports.iter().map(|r| r.window).collect();
    assert_eq!(windows, [first, first + 1, first + 2], "the daemon keeps up");
    let dir = net.data_dir.clone();
    net.stop().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_ahead_of_the_chain_and_an_unknown_policy_state_are_reset() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let net = network("outage-state", 2, 2).await;
    let first = net.first_window;
    let mut config = net.daemon_config();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.metrics = metrics.to_string();
    let state_file = StateFile::open(&config.state_dir).unwrap();
    state_file
        .save(&PersistedState {
            last_processed: Some(u64::MAX),
            current_peers: vec![],
            selection_state: "deadbeef".into(),
            shadow_selection_state: String::new(),
            weighting_state: String::new(),
            retry: vec![u64::MAX - 1],
        })
        .unwrap();
    let (report, text) = with_daemon(config, async |rx| {
        loop {
            let r = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if r.window >= first {
                return (r, sim::fetch_metrics(metrics).await.unwrap());
            }
        }
    })
    .await;
    assert_eq!(report.result, WindowResult::Stored, "{report:?}");
    assert!(
        text.contains("aggregator_errors_total{kind=\"state_ahead_of_chain\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("aggregator_policy_state_resets_total{policy=\"peer-selection\"} 1"),
        "{text}"
    );
    let state = state_file.load().unwrap();
    assert!(
        state.last_processed.is_some_and(|w| w >= first && w < u64::MAX / 2),
        "{state:?}"
    );
    assert!(state.retry.is_empty(), "{state:?}");
    assert_ne!(state.selection_state, "deadbeef");
    let dir = net.data_dir.clone();
    net.stop().await;
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn policy_settings_a_policy_refuses_stop_the_start() {
    let dir = tmp("outage-settings");
    for value in ["abc", "-100"] {
        let mut config = DaemonConfig {
            model: "tiny".into(),
            state_dir: dir.join("state"),
            policy_cache: dir.join("cache").display().to_string(),
            ..DaemonConfig::default()
        };
        config
            .policy
            .settings
            .insert("time_window_delta_seconds".into(), value.into());
        let bucket = aggregator_store::Bucket {
            endpoint: aggregator_store::Endpoint::Local(dir.join("out")),
            name: "out".into(),
            access_key_id: String::new(),
            secret: String::new(),
        };
        let e = Prepared::load(config, bucket, Default::default())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("time_window_delta_seconds") && e.contains(value), "{e}");
        assert!(e.contains("time-bounds"), "{e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
