//! `aggregator`: the Templar-compatible aggregation server's command-line entry point.

mod cli;
mod device;
mod progress;
mod resources;

use std::path::PathBuf;
use std::process::ExitCode;

use aggregator_kernels::Device;
use clap::{Parser, Subcommand, ValueEnum};

use cli::{aggregate, bench, catchup, codec, completions, devnet, plugin, plugin_new, replay, run, sim, vectors};
pub(crate) use device::open_device;

/// The git commit this binary was built from (see `build.rs`).
pub(crate) const GIT_SHA: &str = env!("AGGREGATOR_GIT_SHA");

/// `--version`: the crate version, the commit and the enabled features.
#[cfg(feature = "gpu")]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("AGGREGATOR_GIT_SHA"),
    "; features: cpu gpu[wgpu cuda]; Templar wire format 0.2.73)"
);
/// `--version`: the crate version, the commit and the enabled features.
#[cfg(not(feature = "gpu"))]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("AGGREGATOR_GIT_SHA"),
    "; features: cpu; Templar wire format 0.2.73)"
);

/// What the daemon and the simulator report about this binary (`aggregator_build_info`, the status page).
pub(crate) fn build_info(device: &str) -> aggregator_daemon::metrics::BuildInfo {
    aggregator_daemon::metrics::BuildInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        git_sha: GIT_SHA.into(),
        device: device.into(),
    }
}

/// Templar 0.2.73-compatible aggregation server for decentralised LLM training.
///
/// Exit status: 0 success, 1 a runtime error (or a check that failed), 2 a usage error.
#[derive(Parser)]
#[command(name = "aggregator", version = LONG_VERSION, about)]
pub(crate) struct Cli {
    /// Log format: human or json (filter with RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "AGGREGATOR_LOG_FORMAT")]
    log_format: LogFormat,
    /// Numeric backend for the window step: cpu, wgpu, cuda, or auto (CUDA when libcuda and a device are present,
    /// else the CPU; wgpu only on request). Default: `run`'s config file `device`, else auto. Reported at start-up.
    #[arg(
        long,
        global = true,
        env = "AGGREGATOR_DEVICE",
        alias = "backend",
        value_name = "cpu|wgpu|cuda|auto"
    )]
    device: Option<Device>,
    #[command(subcommand)]
    command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines on stderr.
    Human,
    /// One JSON object per line on stderr.
    Json,
}

/// An invalid command line or configuration: exit status 2 (everything else that fails is 1).
#[derive(Debug)]
pub(crate) struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The async runtime every command that needs one uses.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Colour only for a terminal, and never with `NO_COLOR` set (<https://no-color.org>).
fn use_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(format == LogFormat::Human && use_colour())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[derive(Subcommand)]
enum Command {
    /// Runs the aggregation server: one aggregate per window, missed windows backfilled, until SIGINT/SIGTERM.
    Run(Box<run::RunArgs>),
    /// Replays aggregates onto a checkpoint (Templar's SGD and schedule) and verifies sync with the leader.
    Catchup(Box<catchup::CatchupArgs>),
    /// Simulates a network (devnet, object store, miners, leader) around the unmodified daemon and prints a table.
    Sim(Box<sim::SimArgs>),
    /// Golden test vectors.
    Vectors {
        #[command(subcommand)]
        command: VectorsCommand,
    },
    /// Torch `.pt` files.
    Codec {
        #[command(subcommand)]
        command: CodecCommand,
    },
    /// Aggregates gradient files offline, exactly as the server does for one window.
    Aggregate(aggregate::AggregateArgs),
    /// Checks a stored window against its receipt: every input by SHA-256, the policies re-run on their recorded
    /// inputs, the aggregate recomputed (on `--device`) and compared bit for bit. Exit 0 when everything matches, 1
    /// naming the first thing that differs (the peer, the policy, the parameter).
    Replay(Box<replay::ReplayArgs>),
    /// Policy components (WebAssembly plugins).
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// A local Subtensor RPC double (WebSocket JSON-RPC with real metadata) producing blocks on a timer.
    Devnet(devnet::DevnetArgs),
    /// Benchmarks that print a table.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Prints a shell completion script (e.g. `aggregator completions bash > /etc/bash_completion.d/aggregator`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff; `aggregator man | man -l -`).
    Man,
}

#[derive(Subcommand)]
enum VectorsCommand {
    /// Runs every case of a vector directory (templar-vectors/1 format) and prints `N passed, M failed`.
    Check {
        /// Directory holding manifest.json and its tensor file (the backend is `--device`, alias `--backend`).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CodecCommand {
    /// Prints a file's keys, dtypes, shapes and metadata; exits 1 with a one-line reason if the file is invalid.
    Inspect {
        /// A `.pt` file (or a Templar JSON object).
        file: PathBuf,
        /// Also validate the file as a gradient of this model (preset or JSON file).
        #[arg(long)]
        model: Option<String>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Loads a policy component as the daemon would (compile, import audit, self-check, golden inputs under the
    /// production limits), names the world and version it implements, prints a verdict; exit 0 ok, 1 refused.
    Check(plugin::CheckArgs),
    /// Runs a candidate component on a recorded window's policy inputs (its receipt) and prints its decisions beside
    /// the recorded ones: peers added and removed, bounds and weights moved.
    Run(Box<plugin::RunArgs>),
    /// Writes a ready plugin project (Rust on the guest SDK, or Python for componentize-py) for a world, with a
    /// README giving the build, `plugin check` and `plugin run --receipt` commands.
    New(plugin_new::NewArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let device = cli.device;
    let result = match cli.command {
        Command::Run(args) => run::run(*args, device).map(|()| ExitCode::SUCCESS),
        Command::Catchup(args) => catchup::run(*args),
        Command::Sim(args) => sim::sim(*args, device.unwrap_or_default()).map(|()| ExitCode::SUCCESS),
        Command::Vectors {
            command: VectorsCommand::Check { dir },
        } => vectors::check(dir, device.unwrap_or_default()),
        Command::Codec {
            command: CodecCommand::Inspect { file, model },
        } => Ok(codec::inspect(&file, model.as_deref())),
        Command::Aggregate(args) => aggregate::aggregate(args, device.unwrap_or_default()),
        Command::Devnet(args) => devnet::run(args).map(|()| ExitCode::SUCCESS),
        Command::Plugin {
            command: PluginCommand::Check(args),
        } => plugin::check(args),
        Command::Plugin {
            command: PluginCommand::Run(args),
        } => plugin::run(*args),
        Command::Plugin {
            command: PluginCommand::New(args),
        } => plugin_new::new(args).map(|_| ExitCode::SUCCESS),
        Command::Replay(args) => replay::replay_command(*args, device.unwrap_or_default()),
        Command::Bench { command } => bench::run(command, device.unwrap_or_default()),
        Command::Completions { shell } => completions::completions(shell).map(|()| ExitCode::SUCCESS),
        Command::Man => completions::man().map(|()| ExitCode::SUCCESS),
    };
    // A usage error is 2 (clap exits 2 itself on a bad command line before this point); any other error is 1.
    result.unwrap_or_else(|e| {
        tracing::error!("{e:#}");
        if !tracing::enabled!(tracing::Level::ERROR) {
            eprintln!("error: {e:#}");
        }
        if e.downcast_ref::<UsageError>().is_some() {
            ExitCode::from(2)
        } else {
            ExitCode::FAILURE
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
