//! Builds the test guests in `tests/guests` (once per test binary) and hands out their `.wasm` bytes.

#![allow(dead_code)]

pub mod update_peers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use aggregator_policy::{PolicyEngine, PolicyLimits};

fn guests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/guests")
}

/// Builds package `package` with `features` and returns the component's bytes.
pub fn guest(package: &str, features: &[&str]) -> Vec<u8> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("policy-test-guests");
    let label = if features.is_empty() {
        package.to_string()
    } else {
        format!("{package}-{}", features.join("-"))
    };
    let out = target.join(format!("{label}.wasm"));
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        "wasm32-wasip2",
        "-p",
        package,
        "--manifest-path",
    ])
    .arg(guests_dir().join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target);
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key.starts_with("RUSTC_") || key == "RUSTFLAGS" {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building test guest {label} failed");
    let built = target
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    std::fs::copy(&built, &out).unwrap();
    std::fs::read(&out).unwrap()
}

/// A shared engine with the default limits and no cache.
pub fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::new(PolicyLimits::default(), None).expect("engine"))
}

/// A scratch directory under the target's tmp folder, removed when dropped.
pub fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("policy-{name}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Writes `bytes` to `path` atomically (what an operator's deploy should do).
pub fn install(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
