//! First contact: on a machine whose toolchain lacks a target's standard library (rustup with `RUSTUP_AUTO_INSTALL=0`
//! installs the pinned toolchain without the targets `rust-toolchain.toml` lists), `scripts/toolchain` (run by
//! `scripts/sim` and `scripts/test` before building) and `build.rs` (the backstop for a plain `cargo` command) name the
//! command that fixes it. Checked on a target that is surely not installed, so nothing needs rebuilding.

#[path = "../build/wasm_target.rs"]
mod wasm_target;

use std::time::{Duration, Instant};

fn rustc() -> std::ffi::OsString {
    std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into())
}

#[test]
fn a_missing_target_is_named_with_its_fix_at_once() {
    // A tier-3 target: rustup cannot even install it, so no machine has its standard library.
    let started = Instant::now();
    let error = wasm_target::missing_target(&rustc(), "riscv32imc-esp-espidf", Some("1.95.0"))
        .expect("riscv32imc-esp-espidf has no standard library here");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(
        error.contains("run `rustup target add riscv32imc-esp-espidf --toolchain 1.95.0`"),
        "{error}"
    );
    // An unknown target name is reported the same way, with rustc's own words.
    let error = wasm_target::missing_target(&rustc(), "no-such-target", None).unwrap();
    assert!(error.contains("rustup target add no-such-target"), "{error}");
}

#[test]
fn the_wasm_target_this_crate_was_built_with_is_found() {
    // This crate built, so its build script found wasm32-wasip2 for the toolchain running the tests.
    assert_eq!(wasm_target::missing_target(&rustc(), "wasm32-wasip2", None), None);
}

/// `scripts/toolchain --check`, which `scripts/sim` and `scripts/test` run before building: a missing target is named
/// with its fix at once (a target no machine has stands in for a missing wasm32-wasip2).
#[test]
fn the_setup_script_names_a_missing_target_at_once() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/toolchain");
    let started = Instant::now();
    let out = std::process::Command::new(&script)
        .arg("--check")
        .env("WASM_TARGET", "riscv32imc-esp-espidf")
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("run `rustup target add riscv32imc-esp-espidf"),
        "{stderr}"
    );
    // And the real target, which this build had: found, exit 0.
    let out = std::process::Command::new(&script).arg("--check").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
