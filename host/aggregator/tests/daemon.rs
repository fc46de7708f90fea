//! The daemon as a process: `aggregator sim` end to end, and SIGKILL in the middle of a window followed by a restart
//! that backfills the window with no duplicate and no partial output.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aggregator_codec::{Aggregate, Limits};
use aggregator_daemon::sim::{self, Network, SimOptions};
use aggregator_daemon::{PersistedState, StateFile};
use aggregator_model::ModelSpec;

fn aggregator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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
    let outputs = std::fs::read_dir(dir.join("store").join(sim::OUTPUT_BUCKET))
        .unwrap()
        .count();
    assert_eq!(outputs, 3);
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
    let config = net.daemon_config();
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
    // SIGTERM: a clean exit with status 0.
    unsafe { libc::kill(d2.id() as i32, libc::SIGTERM) };
    let status = d2.wait().unwrap();
    assert!(status.success(), "{status:?}");
    wait_for_log(
        &log2,
        &["window closed", &format!("\"window\":{killed}")],
        Duration::from_secs(1),
    );

    // Exactly one complete aggregate per window, nothing else in the output bucket.
    let out_dir = dir.join("store").join(sim::OUTPUT_BUCKET);
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let expected: Vec<String> = (first..=last).map(|w| format!("aggregator-{w}-v0.2.73.pt")).collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(
        names, expected_sorted,
        "one file per window, no partial or temporary file"
    );
    let model = ModelSpec::preset("tiny").unwrap();
    for (w, name) in (first..=last).zip(&expected) {
        let bytes = std::fs::read(out_dir.join(name)).unwrap();
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
