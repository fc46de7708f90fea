//! Is a target's standard library installed for a toolchain? Shared by `build.rs` (which fails at once, naming the
//! fix, before the nested component build would fail after minutes) and by `tests/first_contact.rs` (which checks the
//! mechanism on a target that is surely not installed, without building anything).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

/// `None` when `rustc` has the standard library for `target`; otherwise the one-line error to show, naming the
/// command that installs it (for `toolchain`, the rustup toolchain building this, when known).
pub fn missing_target(rustc: &OsStr, target: &str, toolchain: Option<&str>) -> Option<String> {
    let out = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", target])
        .output();
    let detail = match out {
        Ok(o) if o.status.success() => {
            let libdir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            let has_std = std::fs::read_dir(&libdir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
            });
            if has_std {
                return None;
            }
            format!("no standard library in {}", libdir.display())
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run {}: {e}", rustc.to_string_lossy()),
    };
    let fix = match toolchain {
        Some(t) if !t.is_empty() => format!("rustup target add {target} --toolchain {t}"),
        _ => format!("rustup target add {target}"),
    };
    Some(format!(
        "error: the {target} target is not installed for this toolchain; run `{fix}` ({detail})"
    ))
}
