//! `aggregator`: the Templar-compatible aggregation server's command-line entry point.

mod bench;
mod bench_gather;
mod catchup;
mod daemon;
mod devnet;
mod offline;
mod plugin;
mod resources;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use aggregator_kernels::Backend;
#[cfg(not(feature = "gpu"))]
use aggregator_kernels::Cpu;
use clap::{Parser, Subcommand, ValueEnum};

/// Templar 0.2.73-compatible aggregation server for decentralised LLM training.
#[derive(Parser)]
#[command(name = "aggregator", version, about)]
struct Cli {
    /// Log format: human or json (filter with RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "AGGREGATOR_LOG_FORMAT")]
    log_format: LogFormat,
    /// Numeric backend for the window step: cpu, wgpu, cuda, or auto (CUDA when libcuda and a device are present,
    /// else the CPU; wgpu only on request). Default: `run`'s config file `device`, else auto. Reported at start-up.
    #[arg(long, global = true, value_enum, env = "AGGREGATOR_DEVICE", alias = "backend")]
    device: Option<DeviceKind>,
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

/// The async runtime every command that needs one uses.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[derive(Subcommand)]
enum Command {
    /// Runs the aggregation server: one aggregate per window, missed windows backfilled, until SIGINT/SIGTERM.
    Run(Box<daemon::RunArgs>),
    /// Replays aggregates onto a checkpoint (Templar's SGD and schedule) and verifies sync with the leader.
    Catchup(Box<catchup::CatchupArgs>),
    /// Simulates a network (devnet, object store, miners, leader) around the unmodified daemon and prints a table.
    Sim(daemon::SimArgs),
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
    Aggregate(offline::AggregateArgs),
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
        command: BenchCommand,
    },
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
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Times the aggregation of N synthetic peers (normalise, scatter-mean, inverse DCT, sign, pack).
    Process(bench::ProcessArgs),
    /// Times policy calls (fresh sandboxed instance per call) and component loading.
    Policy(plugin::BenchArgs),
    /// Catch-up time per window: N random aggregates replayed onto a model.
    Catchup(catchup::BenchCatchupArgs),
    /// Gather throughput (MB/s) and peak RSS for N peers' gradient files from a local SeaweedFS.
    Gather(bench_gather::GatherArgs),
}

/// Numeric backend (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    /// Plain Rust on all cores (AVX2+FMA when available).
    Cpu,
    /// cubecl on wgpu (Vulkan, Metal, DX12; a software driver without a GPU).
    Wgpu,
    /// cubecl on CUDA.
    Cuda,
    /// CUDA when present, else the CPU.
    Auto,
}

/// The opened numeric backend, and the GPU behind it when there is one (for `bench process`'s on-device timing).
pub(crate) struct Numeric {
    pub(crate) backend: Arc<dyn Backend>,
    /// Backend and device, for the start-up line.
    pub(crate) description: String,
    #[cfg(feature = "gpu")]
    pub(crate) gpu: Option<Arc<aggregator_gpu::AnyGpu>>,
}

impl DeviceKind {
    /// `--device` if given (flag or `AGGREGATOR_DEVICE`), else `auto`.
    pub(crate) fn or_auto(flag: Option<DeviceKind>) -> DeviceKind {
        flag.unwrap_or(DeviceKind::Auto)
    }

    /// Opens the backend and logs which one runs, and on what.
    pub(crate) fn open(self) -> anyhow::Result<Numeric> {
        let numeric = self.open_quietly()?;
        tracing::info!(device = %numeric.description, requested = ?self, "numeric backend");
        Ok(numeric)
    }

    #[cfg(feature = "gpu")]
    fn open_quietly(self) -> anyhow::Result<Numeric> {
        use aggregator_gpu::{DeviceChoice, Opened};
        let choice = match self {
            DeviceKind::Cpu => DeviceChoice::Cpu,
            DeviceKind::Wgpu => DeviceChoice::Wgpu,
            DeviceKind::Cuda => DeviceChoice::Cuda,
            DeviceKind::Auto => DeviceChoice::Auto,
        };
        let opened = aggregator_gpu::open(choice)?;
        let description = opened.describe();
        Ok(match opened {
            Opened::Cpu(cpu) => Numeric {
                backend: Arc::new(cpu),
                description,
                gpu: None,
            },
            Opened::Gpu(g) => {
                let g: Arc<aggregator_gpu::AnyGpu> = Arc::from(g);
                Numeric {
                    backend: g.clone(),
                    description,
                    gpu: Some(g),
                }
            }
        })
    }

    #[cfg(not(feature = "gpu"))]
    fn open_quietly(self) -> anyhow::Result<Numeric> {
        match self {
            DeviceKind::Cpu | DeviceKind::Auto => {
                let cpu = Cpu::new();
                Ok(Numeric {
                    description: format!("cpu ({})", cpu.isa().name()),
                    backend: Arc::new(cpu),
                })
            }
            other => anyhow::bail!("--device {other:?}: this binary was built without the `gpu` feature"),
        }
    }
}

fn vectors_check(dir: PathBuf, device: DeviceKind) -> anyhow::Result<ExitCode> {
    let numeric = device.open()?;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => daemon::run(*args, cli.device).map(|()| ExitCode::SUCCESS),
        Command::Catchup(args) => catchup::run(*args),
        Command::Bench {
            command: BenchCommand::Catchup(args),
        } => catchup::bench(args).map(|()| ExitCode::SUCCESS),
        Command::Sim(args) => daemon::sim(args, DeviceKind::or_auto(cli.device)).map(|()| ExitCode::SUCCESS),
        Command::Vectors {
            command: VectorsCommand::Check { dir },
        } => vectors_check(dir, DeviceKind::or_auto(cli.device)),
        Command::Bench {
            command: BenchCommand::Process(args),
        } => bench::process(args, DeviceKind::or_auto(cli.device)).map(|()| ExitCode::SUCCESS),
        Command::Codec {
            command: CodecCommand::Inspect { file, model },
        } => Ok(offline::inspect(&file, model.as_deref())),
        Command::Aggregate(args) => offline::aggregate(args, DeviceKind::or_auto(cli.device)),
        Command::Devnet(args) => devnet::run(args).map(|()| ExitCode::SUCCESS),
        Command::Plugin {
            command: PluginCommand::Check(args),
        } => plugin::check(args),
        Command::Bench {
            command: BenchCommand::Policy(args),
        } => plugin::bench(args).map(|()| ExitCode::SUCCESS),
        Command::Bench {
            command: BenchCommand::Gather(args),
        } => bench_gather::gather(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
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
