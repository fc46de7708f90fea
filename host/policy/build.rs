//! Builds the policy components in `components/` for wasm32-wasip2 so that the crate can embed them, as wasmtime's
//! own `test-programs-artifacts` does: a newcomer's plain `cargo build` produces the embedded defaults.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/wasm_target.rs"]
mod wasm_target;

/// The components this crate embeds: (package, wasm file stem, env var the crate reads).
const COMPONENTS: [(&str, &str, &str); 3] = [
    ("templar-default", "templar_default", "TEMPLAR_DEFAULT_WASM"),
    ("example-rotation", "example_rotation", "EXAMPLE_ROTATION_WASM"),
    ("example-robust", "example_robust", "EXAMPLE_ROBUST_WASM"),
];

/// The target the components are built for.
const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    // First, and in well under a second: is the target's standard library installed? Machines that set
    // `RUSTUP_AUTO_INSTALL=0` install the pinned toolchain without the targets `rust-toolchain.toml` lists, and the
    // nested build below would otherwise fail only after the whole dependency graph has compiled.
    check_wasm_target();
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.join("../..");
    let components = root.join("components");
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed=build/wasm_target.rs");
    for p in [
        "Cargo.toml",
        "Cargo.lock",
        "templar-policy-sdk",
        "templar-default",
        "example-rotation",
        "example-robust",
    ] {
        println!("cargo:rerun-if-changed={}", components.join(p).display());
    }
    // One wasm target dir for every host profile (debug, release, test, clippy): `<target>/wasm-components`, found
    // from OUT_DIR = `<target>[/<triple>]/<profile>/build/<pkg>/out`.
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|b| b.parent()?.parent())
        .map_or_else(|| out_dir.join("wasm-components"), |t| t.join("wasm-components"));

    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(components.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir);
    // The outer build's settings (profile, flags, clippy wrapper, features) must not leak into the guest build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = ["CARGO_HOME", "CARGO_MAKEFLAGS", "CARGO_NET_OFFLINE"].contains(&key.as_str())
            || key.starts_with("CARGO_REGISTRIES_")
            || key.starts_with("CARGO_HTTP_");
        if (key.starts_with("CARGO_") && !keep)
            || key.starts_with("RUSTC_")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the policy components: {e}"));
    if !status.success() {
        panic!(
            "building the policy components in {} failed (see above). Is the wasm32-wasip2 target installed? \
             `rustup target add wasm32-wasip2` (rust-toolchain.toml asks rustup to install it)",
            components.display()
        );
    }
    for (_, stem, var) in COMPONENTS {
        let wasm = target_dir.join("wasm32-wasip2/release").join(format!("{stem}.wasm"));
        assert!(Path::new(&wasm).is_file(), "{} was not built", wasm.display());
        println!("cargo:rustc-env={var}={}", wasm.display());
    }
}

/// Fails the build at once, naming the one command that fixes it, when the wasm32-wasip2 standard library is not
/// installed for the toolchain that builds this crate.
fn check_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    if let Some(error) = wasm_target::missing_target(&rustc, WASM_TARGET, toolchain.as_deref()) {
        // cargo shows a failed build script's stderr; one line, so it is the first thing read.
        eprintln!("{error}");
        std::process::exit(1);
    }
}
