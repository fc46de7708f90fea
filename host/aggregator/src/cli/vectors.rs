//! `aggregator vectors check`: runs a golden-vector directory on the chosen backend.

use std::path::PathBuf;
use std::process::ExitCode;

use aggregator_kernels::Device;

use crate::device::open_device;

/// Runs every case of `dir` (templar-vectors/1 format) and prints `N passed, M failed`.
pub fn check(dir: PathBuf, device: Device) -> anyhow::Result<ExitCode> {
    let numeric = open_device(device)?;
    println!("backend: {}", numeric.description);
    let outcomes = aggregator_vectors::check_dir(&dir, numeric.backend.as_ref())?;
    let mut failed = 0;
    for o in outcomes.iter().filter(|o| !o.passed()) {
        failed += 1;
        println!("FAIL {} ({}): {}", o.name, o.kind, o.failures.join("; "));
    }
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
