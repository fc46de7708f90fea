//! `--device` as a user meets it: the GPU backends through the binary (wgpu on lavapipe in CI; CUDA where present).
#![cfg(feature = "gpu")]

use std::path::PathBuf;
use std::process::Command;

fn aggregator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
}

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors")
}

#[test]
fn vectors_check_passes_on_wgpu() {
    let out = aggregator()
        .args(["vectors", "check"])
        .arg(vectors())
        .args(["--backend", "wgpu"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("backend: wgpu on "), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("44 passed, 0 failed"));
}

#[test]
fn auto_is_cuda_when_present_else_the_cpu_and_cuda_without_a_device_is_a_clear_error() {
    let auto = aggregator()
        .args(["--device", "auto", "vectors", "check"])
        .arg(vectors())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&auto.stdout);
    assert!(auto.status.success(), "{stdout}");
    let cuda = aggregator()
        .args(["vectors", "check"])
        .arg(vectors())
        .env("AGGREGATOR_DEVICE", "cuda")
        .output()
        .unwrap();
    if stdout.starts_with("backend: cpu") {
        // No CUDA here: asking for it explicitly must fail with the reason, not fall back silently.
        assert_eq!(cuda.status.code(), Some(1), "a runtime error");
        let stderr = String::from_utf8_lossy(&cuda.stderr);
        assert!(stderr.contains("cuda backend: no CUDA driver library"), "{stderr}");
    } else {
        assert!(stdout.starts_with("backend: cuda on "), "{stdout}");
        assert!(cuda.status.success());
    }
}

#[test]
fn bench_process_on_wgpu_gives_the_cpu_bits_and_times_the_device() {
    let out = aggregator()
        .args([
            "bench", "process", "--model", "tiny", "--peers", "3", "--runs", "1", "--device", "wgpu",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("bits against the CPU path: 0 of "), "{stdout}");
    assert!(stdout.contains("on-device process step (llvmpipe"), "{stdout}");
    assert!(stdout.contains("identical to the end-to-end run"), "{stdout}");
}

#[test]
fn the_daemon_runs_its_windows_on_wgpu() {
    let dir = std::env::temp_dir().join(format!("cli-sim-wgpu-{}", std::process::id()));
    let out = aggregator()
        .args([
            "--device",
            "wgpu",
            "sim",
            "--windows",
            "2",
            "--peers",
            "3",
            "--data-dir",
        ])
        .arg(&dir)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("numeric backend") && stderr.contains("wgpu on "),
        "{stderr}"
    );
    assert!(stdout.contains("summary: 2 windows, 2 stored"), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}
