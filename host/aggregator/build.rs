//! Records the git commit the binary is built from (`AGGREGATOR_GIT_SHA`) for `--version`, `aggregator_build_info`
//! and the status page: `$AGGREGATOR_GIT_SHA` when set (a container build without `.git`), else `git rev-parse`,
//! else `unknown`. (No "dirty" mark: the script reruns when HEAD moves, not on every edit, so it could not be kept
//! true; a release is built from a clean checkout.)

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=AGGREGATOR_GIT_SHA");
    let sha = match std::env::var("AGGREGATOR_GIT_SHA") {
        Ok(s) if !s.is_empty() => s,
        _ => git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into()),
    };
    // Rebuild when HEAD moves (a commit, a checkout).
    // (Only files that exist: cargo reruns a build script every time for a missing one.)
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = Path::new(&dir);
        let mut files = vec![dir.join("HEAD"), dir.join("packed-refs")];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            files.push(dir.join(r));
        }
        for f in files.iter().filter(|f| f.exists()) {
            println!("cargo:rerun-if-changed={}", f.display());
        }
    }
    println!("cargo:rustc-env=AGGREGATOR_GIT_SHA={sha}");
}
