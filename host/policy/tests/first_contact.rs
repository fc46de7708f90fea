//! The first-contact check of `build.rs`: on a machine whose toolchain lacks a target's standard library (rustup with
//! `RUSTUP_AUTO_INSTALL=0` installs the pinned toolchain without the targets `rust-toolchain.toml` lists), the build
//! stops at once with the command that fixes it. Checked here on a target that is surely not installed, so nothing
//! needs rebuilding.

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
