//! `aggregator bench …`: benchmarks that print a table.

mod catchup;
mod gather;
mod policy;
mod process;
mod robust;
mod window;

use std::process::ExitCode;

use aggregator_kernels::Device;
use clap::Subcommand;

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Times the aggregation of N synthetic peers (normalise, scatter-mean, inverse DCT, sign, pack).
    Process(process::ProcessArgs),
    /// Times policy calls (fresh sandboxed instance per call) and component loading.
    Policy(policy::BenchArgs),
    /// Catch-up time per window: N random aggregates replayed onto a model.
    Catchup(catchup::BenchCatchupArgs),
    /// Gather throughput (MB/s) and peak RSS for N peers' gradient files from a local SeaweedFS.
    Gather(gather::GatherArgs),
    /// Poisoned gradients (sign-flip, random, copy, stale, collusion) against the default and a robust
    /// contribution-weighting policy: sign agreement with the honest-only aggregate, peers excluded.
    Robust(robust::RobustArgs),
    /// One window after the last upload against a local SeaweedFS: gather, process, encode and put timed on the
    /// daemon's code path, whole and with only the last peer's file on the path.
    Window(window::WindowArgs),
}

/// Runs one benchmark (`device`: the numeric backend, for `process`).
pub fn run(command: BenchCommand, device: Device) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Process(args) => process::process(args, device),
        BenchCommand::Policy(args) => policy::bench(args),
        BenchCommand::Catchup(args) => catchup::bench(args),
        BenchCommand::Gather(args) => gather::gather(args),
        BenchCommand::Robust(args) => robust::robust(args),
        BenchCommand::Window(args) => window::window(args, device),
    }
    .map(|()| ExitCode::SUCCESS)
}
