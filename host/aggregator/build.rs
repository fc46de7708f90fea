//! Records the git commit the binary is built from (`AGGREGATOR_GIT_SHA`) for `--version`, `aggregator_build_info`
//! and the status page: `$AGGREGATOR_GIT_SHA` when set (a container build without `.git`), else `git rev-parse`,
//! else `unknown`. A `-dirty` suffix marks uncommitted changes to tracked files.

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
        _ => match git(&["rev-parse", "--short=12", "HEAD"]) {
            Some(sha) => {
                let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
                if dirty { format!("{sha}-dirty") } else { sha }
            }
            None => "unknown".into(),
        },
    };
    // Rebuild when HEAD moves (a commit, a checkout).
    // (Only files that exist: cargo reruns a build script every time for a missing one.)
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = Path::new(&dir);
        let mut files = vec![dir.join("HEAD"), dir.join("index")];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            files.push(dir.join(r));
        }
        for f in files.iter().filter(|f| f.exists()) {
            println!("cargo:rerun-if-changed={}", f.display());
        }
    }
    println!("cargo:rustc-env=AGGREGATOR_GIT_SHA={sha}");
}
