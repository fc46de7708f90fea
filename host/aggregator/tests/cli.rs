//! The `aggregator` binary as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn aggregator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
}

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

#[test]
fn vectors_check_passes_the_shared_vectors() {
    let out = aggregator()
        .args(["vectors", "check"])
        .arg(shared().join("vectors"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().last(), Some("44 passed, 0 failed"));
}

#[test]
fn vectors_check_reports_failures_and_exits_1() {
    // A manifest whose split case expects a wrong chunk.
    let dir = std::env::temp_dir().join(format!("cli-vectors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = shared().join("vectors");
    let manifest = std::fs::read_to_string(src.join("manifest.json")).unwrap();
    let tampered = manifest.replacen(
        r#""n": 65,
     "target_chunk": 64,
     "chunk": 13"#,
        r#""n": 65,
     "target_chunk": 64,
     "chunk": 5"#,
        1,
    );
    assert_ne!(tampered, manifest, "the split entry for n=65 is in the manifest");
    std::fs::write(dir.join("manifest.json"), tampered).unwrap();
    std::fs::copy(src.join("tensors.safetensors"), dir.join("tensors.safetensors")).unwrap();
    let out = aggregator().args(["vectors", "check"]).arg(&dir).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL split (split): split(65, 64) = 13, expected 5"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("43 passed, 1 failed"));
}

#[test]
fn vectors_check_on_a_missing_directory_is_a_clear_error() {
    let out = aggregator()
        .args(["vectors", "check", "/nonexistent/vectors"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/vectors/manifest.json"), "{stderr}");
}

#[test]
fn bench_process_prints_a_table() {
    let out = aggregator()
        .args([
            "bench",
            "process",
            "--model",
            "tiny",
            "--peers",
            "3",
            "--runs",
            "2",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for needle in ["256x64", "total", "peak RSS", "load average", "identical in all 2 runs"] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}
