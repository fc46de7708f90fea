//! The daemon as a process: `aggregator sim` end to end, and SIGKILL in the middle of a window followed by a restart
//! that backfills the window with no duplicate and no partial output.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aggregator_codec::{Aggregate, Limits};
use aggregator_daemon::{PersistedState, StateFile};
use aggregator_model::ModelSpec;
use aggregator_sim::{self as sim, Network, SimOptions};

fn aggregator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `aggregator sim --shards 4`: the daemon (shard 0) and three `aggregator run` processes share every window
/// through a local SeaweedFS the simulator starts; every window is stored, each shard process did its part of each,
/// and each receipt names the four shards (the library test `host/sim/tests/shards.rs` checks the bytes).
#[test]
fn sim_with_four_shard_processes_stores_every_window() {
    let dir = tmp("cli-sim-shards");
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("seaweedfs-venv");
    let out = aggregator()
        .args(["sim", "--windows", "2", "--peers", "4", "--shards", "4", "--data-dir"])
        .arg(&dir)
        .arg("--seaweed-venv")
        .arg(&venv)
        // The shard processes log at this level too: each says when its part of a window is done.
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains(" stored ")).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for i in 1..4 {
        let log = std::fs::read_to_string(dir.join(format!("shard-{i}.log"))).unwrap();
        let done = log.matches("shard's part of the window done").count();
        assert!(done >= 2, "shard {i} did {done} windows:\n{log}");
    }
}

/// Four shard processes against SeaweedFS for three windows with faults: the simulator's daemon is shard 0 and
/// shards 1..3 are `aggregator run` processes of this build. Shard 2's process is killed (SIGKILL) as the second
/// window starts and started again once the coordinator has aborted that attempt: the window is stored on a later
/// attempt. Every stored window replays bit for bit (the aggregate recomputed in one process from whole files: the
/// one node's bytes for the same timestamp), and each receipt names the four shards.
#[test]
fn four_shard_processes_store_what_one_node_would() {
    use aggregator_receipt::{Receipt, ReplayOptions, replay};
    use aggregator_store::{ClientSettings, Clients, keys};
    use object_store::ObjectStoreExt;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tmp("shard-processes");
    let buckets: Vec<aggregator_testkit::seaweed::BucketAccess> =
        sim::s3_buckets(8).into_iter().map(Into::into).collect();
    let sw = rt
        .block_on(aggregator_testkit::start_seaweed(
            &PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
            "shard-processes",
            &buckets,
        ))
        .unwrap();
    let admin = aggregator_testkit::seaweed::ADMIN;
    let outcome = rt
        .block_on(sim::run(SimOptions {
            windows: 3,
            peers: 8,
            faults: true,
            s3: Some(sim::S3Target {
                endpoint: sw.endpoint().to_string(),
                writer: (admin.0.into(), admin.1.into()),
            }),
            data_dir: Some(dir.join("sim")),
            verbose: false,
            shards: 4,
            shard_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_aggregator"))),
            // Windows long enough that the killed attempt (bounded by the gather's timeout and the wait) leaves the
            // window within the backfill horizon when it is retried.
            blocks_per_window: 8,
            shard_wait_s: 3.0,
            shard_outage: Some((2, 1)),
            ..SimOptions::default()
        }))
        .unwrap();
    let clients = Clients::new(ClientSettings::default());
    let output = clients.get(&sw.admin_bucket(sim::OUTPUT_BUCKET)).unwrap();
    let options = ReplayOptions {
        output: Some(output.clone()),
        aggregate: None,
        clients: Clients::new(ClientSettings::default()),
        model: std::sync::Arc::new(ModelSpec::preset("tiny").unwrap()),
        backend: std::sync::Arc::new(aggregator_kernels::Cpu::new()),
        engine: aggregator_policy::PolicyEngine::new(aggregator_policy::PolicyLimits::default(), None).unwrap(),
        components: vec![],
        timeout: Duration::from_secs(30),
    };
    let (mut stored, mut killed_window_stored) = (0, false);
    for r in outcome
        .reports
        .iter()
        .filter(|r| r.result == aggregator_daemon::WindowResult::Stored)
    {
        let key = object_store::path::Path::from(keys::receipt(r.window, sim::VERSION));
        let text = rt.block_on(async { output.get(&key).await.unwrap().bytes().await.unwrap() });
        let receipt = Receipt::from_json(&text, "receipt").unwrap();
        let shards = receipt.shards.as_ref().expect("the receipt names the shards");
        assert_eq!(shards.count, 4, "window {}", r.window);
        if r.window == outcome.first_window + 1 {
            assert!(shards.attempt >= 1, "the killed attempt failed: {shards:?}");
            killed_window_stored = true;
        }
        let verdict = rt.block_on(replay(&receipt, &options));
        assert!(verdict.passed(), "window {}: {:#?}", r.window, verdict.steps);
        assert!(
            verdict
                .steps
                .iter()
                .any(|s| s.what.starts_with("recomputed") && !s.verdict.failed())
        );
        stored += 1;
    }
    assert!(stored >= 2, "{:?}", outcome.reports);
    assert!(killed_window_stored, "{:?}", outcome.reports);
    let failures =
        aggregator_testkit::metric_sample(&outcome.metrics_text, "aggregator_errors_total{kind=\"storage\"}");
    assert!(failures >= 1.0, "the killed attempt counted: {}", outcome.metrics_text);
    for i in 1..4 {
        let log = std::fs::read_to_string(dir.join("sim").join(format!("shard-{i}.log"))).unwrap();
        assert!(
            log.contains("window done") || log.contains("part of the window"),
            "shard {i}:\n{log}"
        );
        assert!(log.contains("shard figures"), "shard {i}:\n{log}");
    }
}

#[test]
fn sim_runs_three_windows_and_prints_a_table() {
    let dir = tmp("cli-sim");
    let out = aggregator()
        .args(["sim", "--windows", "3", "--peers", "4", "--data-dir"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains(" stored ")).collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(stdout.contains("summary: 3 windows, 3 stored"), "{stdout}");
    let mut outputs: Vec<String> = std::fs::read_dir(dir.join("store").join(sim::OUTPUT_BUCKET))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    outputs.sort();
    assert_eq!(outputs.len(), 6, "three aggregates and their receipts: {outputs:?}");
    assert_eq!(
        outputs.iter().filter(|n| n.starts_with("receipt-")).count(),
        3,
        "{outputs:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn spawn_daemon(config: &Path, log: &Path) -> Child {
    aggregator()
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

/// Waits until the log file has a line containing every needle.
fn wait_for_log(log: &Path, needles: &[&str], limit: Duration) -> String {
    let started = Instant::now();
    loop {
        if let Ok(f) = std::fs::File::open(log) {
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                if needles.iter().all(|n| line.contains(n)) {
                    return line;
                }
            }
        }
        assert!(
            started.elapsed() < limit,
            "no log line with {needles:?} in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state(dir: &Path) -> PersistedState {
    StateFile::open(dir).unwrap().load().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_window_then_restart_backfills_once() {
    let dir = tmp("cli-sigkill");
    let options = SimOptions {
        windows: 4,
        peers: 3,
        data_dir: Some(dir.clone()),
        verbose: false,
        ..SimOptions::default()
    };
    let net = Network::start(&options).await.unwrap();
    net.seed_daemon_state().unwrap();
    let mut config = net.daemon_config();
    // The peer-selection policy from a watched file (the embedded default's bytes), to see a refused update below.
    let policy = dir.join("peer-selection.wasm");
    std::fs::write(&policy, aggregator_policy::EMBEDDED_DEFAULT).unwrap();
    config.policy.components.set(
        aggregator_policy::PolicyKind::PeerSelection,
        policy.display().to_string(),
    );
    let config_path = dir.join("daemon.toml");
    std::fs::write(&config_path, config.to_toml()).unwrap();
    let (first, last) = (net.first_window, net.last_window);
    let killed = first + 1;

    // First run: window `first` is stored; in the middle of `first + 1` (peers selected, gather under way) SIGKILL.
    let log1 = dir.join("daemon-1.log");
    let mut d1 = spawn_daemon(&config_path, &log1);
    wait_for_log(
        &log1,
        &["window done", &format!("\"window\":{first}")],
        Duration::from_secs(60),
    );
    wait_for_log(
        &log1,
        &["peers selected", &format!("\"window\":{killed}")],
        Duration::from_secs(60),
    );
    d1.kill().unwrap(); // SIGKILL
    d1.wait().unwrap();
    assert_eq!(
        state(&config.state_dir).last_processed,
        Some(first),
        "the killed window is not recorded"
    );

    // The chain moves on past the killed window's successor, then the daemon restarts.
    let bpw = options.blocks_per_window as u64;
    while net.devnet.head() < (killed + 2) * bpw {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log2 = dir.join("daemon-2.log");
    let mut d2 = spawn_daemon(&config_path, &log2);
    let started = Instant::now();
    while state(&config.state_dir).last_processed < Some(last) {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the restarted daemon catches up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken update of the watched policy file is refused, at WARN, and the current policy stays.
    std::fs::write(&policy, b"not a component").unwrap();
    let refused = wait_for_log(&log2, &["policy update refused"], Duration::from_secs(30));
    assert!(refused.contains("\"level\":\"WARN\""), "{refused}");
    // SIGTERM: a clean exit with status 0.
    unsafe { libc::kill(d2.id() as i32, libc::SIGTERM) };
    let status = d2.wait().unwrap();
    assert!(status.success(), "{status:?}");
    wait_for_log(
        &log2,
        &["window closed", &format!("\"window\":{killed}")],
        Duration::from_secs(1),
    );

    // Exactly one complete aggregate and its receipt per window, nothing else in the output bucket (a kill between
    // the two writes leaves the receipt pending in the state directory; the restart stores it).
    let out_dir = dir.join("store").join(sim::OUTPUT_BUCKET);
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let expected: Vec<String> = (first..=last)
        .flat_map(|w| {
            [
                aggregator_store::keys::aggregate(w, "0.2.73"),
                aggregator_store::keys::receipt(w, "0.2.73"),
            ]
        })
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(
        names, expected_sorted,
        "one file per window, no partial or temporary file"
    );
    let model = ModelSpec::preset("tiny").unwrap();
    for w in first..=last {
        let bytes = std::fs::read(out_dir.join(aggregator_store::keys::aggregate(w, "0.2.73"))).unwrap();
        let agg = Aggregate::read(&bytes, Some(&model), &Limits::default()).unwrap();
        assert_eq!(agg.window, w as i64);
        assert_eq!(
            agg.success_rate, 1.0,
            "window {w}: every peer aggregated, also in the backfilled window"
        );
    }
    net.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_with_an_unreachable_chain_logs_each_try_and_stops_at_once_on_sigterm() {
    let dir = tmp("cli-unreachable");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}");
    let config = aggregator_daemon::DaemonConfig {
        chain_url: url.clone(),
        model: "tiny".into(),
        state_dir: dir.join("state"),
        output: aggregator_daemon::OutputBucket {
            endpoint: dir.join("store").display().to_string(),
            name: "out".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let config_path = dir.join("daemon.toml");
    std::fs::write(&config_path, config.to_toml()).unwrap();
    let log = dir.join("daemon.log");
    let mut d = spawn_daemon(&config_path, &log);
    wait_for_log(
        &log,
        &["connecting to the chain", &url, "\"attempt\":1"],
        Duration::from_secs(60),
    );
    let retried = wait_for_log(&log, &["cannot connect; trying again", &url], Duration::from_secs(30));
    assert!(retried.contains("\"level\":\"WARN\""), "{retried}");
    wait_for_log(
        &log,
        &["connecting to the chain", "\"attempt\":2"],
        Duration::from_secs(30),
    );
    let signalled = Instant::now();
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = d.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "SIGTERM acted on within 3 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `path` as the process `pid` sees it in its own mount namespace.
fn in_namespace(pid: u32, path: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_for_30_s_loses_no_window() {
    let dir = tmp("cli-full-disk");
    let options = SimOptions {
        windows: 16,
        peers: 3,
        data_dir: Some(dir.clone()),
        verbose: false,
        ..SimOptions::default()
    };
    let net = Network::start(&options).await.unwrap();
    let (first, last) = (net.first_window, net.last_window);
    // The daemon's output bucket and state live on a 4 MB tmpfs mounted in its own mount namespace (unshare: no
    // privileges needed beyond user namespaces); this test fills it for 30 s through /proc/PID/root.
    let full = dir.join("full");
    std::fs::create_dir_all(&full).unwrap();
    let mut config = net.daemon_config();
    config.state_dir = full.join("state");
    config.policy_cache = dir.join("policy-cache").display().to_string();
    config.output.endpoint = full.join("store").display().to_string();
    config.max_backfill = 40;
    let config_path = dir.join("daemon.toml");
    std::fs::write(&config_path, config.to_toml()).unwrap();
    let seed = dir.join("seed-state.json");
    std::fs::write(
        &seed,
        serde_json::to_string(&PersistedState {
            last_processed: Some(first - 1),
            ..Default::default()
        })
        .unwrap(),
    )
    .unwrap();
    let log = dir.join("daemon.log");
    let script = r#"set -e
mount -t tmpfs -o size=4m tmpfs "$FULL"
mkdir -p "$FULL/state"
cp "$SEED" "$FULL/state/state.json"
exec "$AGGREGATOR" --log-format json run --config "$CONFIG""#;
    let mut d = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", script])
        .env("FULL", &full)
        .env("SEED", &seed)
        .env("AGGREGATOR", env!("CARGO_BIN_EXE_aggregator"))
        .env("CONFIG", &config_path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("unshare (util-linux) runs the daemon in its own mount namespace");
    let pid = d.id();
    let store = in_namespace(pid, &full.join("store").join(sim::OUTPUT_BUCKET));
    let stored = |w: u64| store.join(aggregator_store::keys::aggregate(w, "0.2.73")).is_file();
    let started = Instant::now();
    while !stored(first) {
        assert!(
            d.try_wait().unwrap().is_none(),
            "the daemon exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(started.elapsed() < Duration::from_secs(90), "window {first} stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Fill the disk, hold it full for 30 s, free it.
    let filler = in_namespace(pid, &full.join("filler"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        let err = loop {
            if let Err(e) = f.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull, "{err}");
    }
    let full_since = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let failed = wait_for_log(
        &log,
        &["window attempt failed; queued for retry", "No space left"],
        Duration::from_secs(1),
    );
    assert!(failed.contains("\"level\":\"WARN\""), "{failed}");

    // Every window is stored after the recovery, once, with its receipt; nothing else is in the bucket.
    let state_path = in_namespace(pid, &full.join("state").join("state.json"));
    loop {
        let state: Option<PersistedState> = std::fs::read_to_string(&state_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if (first..=last).all(stored) && state.is_some_and(|s| s.retry.is_empty() && s.last_processed >= Some(last)) {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(120),
            "all windows stored within 120 s of the recovery"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut names: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (first..=last)
        .flat_map(|w| {
            [
                aggregator_store::keys::aggregate(w, "0.2.73"),
                aggregator_store::keys::receipt(w, "0.2.73"),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(names, expected, "one file per window, no partial or temporary file");
    let model = ModelSpec::preset("tiny").unwrap();
    for w in first..=last {
        let bytes = std::fs::read(store.join(aggregator_store::keys::aggregate(w, "0.2.73"))).unwrap();
        let agg = Aggregate::read(&bytes, Some(&model), &Limits::default()).unwrap();
        assert_eq!((agg.window, agg.success_rate), (w as i64, 1.0), "window {w}");
    }
    // The windows that closed while the disk was full were stored after it: retried, not lost.
    let done_at = |w: u64| {
        let line = wait_for_log(
            &log,
            &["window done", &format!("\"window\":{w},")],
            Duration::from_secs(1),
        );
        line.contains("\"result\":\"stored\"")
    };
    assert!((first..=last).all(done_at), "every window ends stored");
    assert!(full_since.elapsed() > Duration::from_secs(30));
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
    net.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_ends_with_a_table_after_a_storage_error() {
    use aggregator_testkit::seaweed::{ADMIN, BucketAccess};
    let dir = tmp("cli-sim-storage-error");
    let peers = 3u16;
    let buckets: Vec<BucketAccess> = sim::s3_buckets(peers).into_iter().map(Into::into).collect();
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut sw = aggregator_testkit::start_seaweed(&scratch, "cli-sim", &buckets)
        .await
        .unwrap();
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let mut sim = aggregator()
        .args([
            "sim",
            "--windows",
            "4",
            "--peers",
            "3",
            "--s3",
            sw.endpoint(),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .env("AGGREGATOR_SIM_S3_WRITER", format!("{}:{}", ADMIN.0, ADMIN.1))
        // Warnings, and the simulator's own lines (target `sim`).
        .env("RUST_LOG", "warn,sim=info")
        .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
        .spawn()
        .unwrap();
    wait_for_log(&stderr, &["sim: window", "stored"], Duration::from_secs(90));
    sw.stop();
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = sim.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(150),
            "the simulator ends after a storage error"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (out, err) = (
        std::fs::read_to_string(&stdout).unwrap(),
        std::fs::read_to_string(&stderr).unwrap(),
    );
    assert!(!status.success(), "{out}\n{err}");
    assert!(
        out.contains("output bytes") && out.contains("summary:"),
        "a table is printed:\n{out}"
    );
    assert!(err.contains("sim: stopped early"), "{err}");
    drop(sw);
    std::fs::remove_dir_all(&dir).ok();
}
