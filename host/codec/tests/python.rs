//! Files we write, loaded by Python's standard library with an unpickler that mirrors torch's `weights_only` rules
//! (`tests/python/check_pt.py`). Set `AGGREGATOR_KEEP_PT=DIR` to keep the files (e.g. to load them with torch).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use aggregator_codec::{DebugDict, Gradient};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python_check(kind: &str, file: &Path) {
    let out = Command::new("python3")
        .arg(root().join("tests/python/check_pt.py"))
        .args([kind, file.to_str().unwrap()])
        .output()
        .expect("python3 is needed for this test (the standard library only)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("OK "), "{stdout}");
}

#[test]
fn python_loads_our_gradient_and_debug_files() {
    let model = common::model();
    let limits = common::gradient_limits();
    let dir = std::env::var_os("AGGREGATOR_KEEP_PT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("codec-python-{}", std::process::id())));
    std::fs::create_dir_all(&dir).unwrap();
    let g = Gradient::read(&common::read(&common::gradient_name(3)), &model, &limits).unwrap();
    let gradient = dir.join(common::gradient_name(3));
    std::fs::write(&gradient, g.to_bytes(&model).unwrap()).unwrap();
    python_check("gradient", &gradient);
    let d = DebugDict::read(&common::read(&common::debug_name(1)), &limits).unwrap();
    let debug = dir.join(common::debug_name(1));
    std::fs::write(&debug, d.to_bytes().unwrap()).unwrap();
    python_check("debug", &debug);
    if std::env::var_os("AGGREGATOR_KEEP_PT").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
}
