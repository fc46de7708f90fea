//! `aggregator plugin new`: every generated project builds as written and `plugin check` accepts it (Rust for
//! wasm32-wasip2 on the guest SDK; Python with componentize-py, installed from PyPI on first use).

use std::path::{Path, PathBuf};
use std::process::Command;

fn aggregator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("plugin-new-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}:\n{text}");
    text
}

fn check(wasm: &Path, world: &str) {
    let text = run(aggregator()
        .args(["plugin", "check"])
        .arg(wasm)
        .args(["--world", world]));
    assert!(text.contains("verdict: ok"), "{text}");
}

/// `cargo` for the generated project, without the outer build's settings.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key.starts_with("RUSTC_") || key == "RUSTFLAGS" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

#[test]
fn new_rust_plugins_build_and_pass_plugin_check() {
    let dir = scratch("rust");
    // One target directory for both projects (the SDK and wit-bindgen build once).
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-new-target");
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../components/Cargo.lock");
    for (name, world) in [("my-selector", "peer-selector"), ("my-bundle", "bundle")] {
        let text = run(aggregator()
            .args(["plugin", "new", name, "--world", world, "--dir"])
            .arg(&dir));
        let project = dir.join(name);
        assert!(text.contains("README.md"), "{text}");
        let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
        for command in [
            "cargo build --release --target wasm32-wasip2",
            "plugin check",
            "plugin run",
        ] {
            assert!(readme.contains(command), "the README gives `{command}`:\n{readme}");
        }
        // The versions this checkout builds with (no index update needed).
        std::fs::copy(&lock, project.join("Cargo.lock")).unwrap();
        run(cargo()
            .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
            .arg(&target)
            .current_dir(&project));
        let wasm = target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        check(&wasm, world);
        let text = run(aggregator().args(["plugin", "check"]).arg(&wasm));
        assert!(text.contains(&format!("component: {name} 0.1.0")), "{text}");
    }
    // A name that is not a package name, and a directory that exists, are refused with the reason.
    let out = aggregator()
        .args(["plugin", "new", "My_Plugin", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lowercase"));
    let out = aggregator()
        .args(["plugin", "new", "my-selector", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[test]
fn a_new_python_plugin_builds_and_passes_plugin_check() {
    let dir = scratch("python");
    let tool = aggregator_testkit::python::componentize_py(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("{e}"));
    run(aggregator()
        .args([
            "plugin",
            "new",
            "my-py-plugin",
            "--lang",
            "python",
            "--world",
            "bundle",
            "--dir",
        ])
        .arg(&dir));
    let project = dir.join("my-py-plugin");
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    let build = readme
        .lines()
        .find(|l| l.starts_with("componentize-py "))
        .expect("the README gives the build command");
    assert_eq!(
        build,
        "componentize-py -d wit -w bundle componentize app -o my-py-plugin.wasm"
    );
    let args: Vec<&str> = build.split_whitespace().skip(1).collect();
    run(Command::new(&tool).args(&args).current_dir(&project));
    check(&project.join("my-py-plugin.wasm"), "bundle");
}
