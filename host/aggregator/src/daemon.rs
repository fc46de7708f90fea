//! `aggregator run` (the daemon) and `aggregator sim` (the zero-setup simulator).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aggregator_daemon::sim::{S3Target, SimOptions};
use aggregator_daemon::{BackendHandle, DaemonConfig, WindowResult};
use anyhow::Context;

use crate::runtime;
use clap::Args;

/// Arguments of `aggregator run`. Each flag overrides the config file; each has an environment variable.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML configuration file (keys as the long flags, with `_`; see README "Operating the daemon").
    #[arg(long, env = "AGGREGATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Subtensor WebSocket endpoint.
    #[arg(long, env = "AGGREGATOR_CHAIN_URL")]
    chain_url: Option<String>,
    /// Subnet uid.
    #[arg(long, env = "AGGREGATOR_NETUID")]
    netuid: Option<u16>,
    /// Blocks per window.
    #[arg(long, env = "AGGREGATOR_BLOCKS_PER_WINDOW")]
    blocks_per_window: Option<u32>,
    /// Templar version in object names.
    #[arg(long, env = "AGGREGATOR_VERSION")]
    version: Option<String>,
    /// Model preset or JSON file.
    #[arg(long, env = "AGGREGATOR_MODEL")]
    model: Option<String>,
    /// State directory.
    #[arg(long, env = "AGGREGATOR_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Most missed windows backfilled.
    #[arg(long, env = "AGGREGATOR_MAX_BACKFILL")]
    max_backfill: Option<u64>,
    /// Aggregates kept, in windows.
    #[arg(long, env = "AGGREGATOR_RETENTION_WINDOWS")]
    retention_windows: Option<u64>,
    /// Peers' bucket endpoint override: an S3 URL or a local directory (default: R2 from the commitment).
    #[arg(long, env = "AGGREGATOR_PEER_ENDPOINT")]
    peer_endpoint: Option<String>,
    /// Output bucket endpoint: `r2:ACCOUNT`, an S3 URL or a directory (default: R2_AGGREGATOR_*).
    #[arg(long, env = "AGGREGATOR_OUTPUT_ENDPOINT")]
    output_endpoint: Option<String>,
    /// Output bucket name.
    #[arg(long, env = "AGGREGATOR_OUTPUT_NAME")]
    output_name: Option<String>,
    /// Output bucket write key id.
    #[arg(long, env = "AGGREGATOR_OUTPUT_ACCESS_KEY_ID")]
    output_access_key_id: Option<String>,
    /// Output bucket write secret (prefer the environment or the file).
    #[arg(long, env = "AGGREGATOR_OUTPUT_SECRET", hide_env_values = true)]
    output_secret: Option<String>,
    /// Per-peer gather time limit in seconds.
    #[arg(long, env = "AGGREGATOR_GATHER_TIMEOUT_S")]
    gather_timeout_s: Option<f64>,
    /// Peers fetched at once.
    #[arg(long, env = "AGGREGATOR_GATHER_CONCURRENCY")]
    gather_concurrency: Option<usize>,
    /// Peer-selection component (.wasm).
    #[arg(long, env = "AGGREGATOR_PEER_SELECTION")]
    peer_selection: Option<String>,
    /// Time-bounds component (.wasm).
    #[arg(long, env = "AGGREGATOR_TIME_BOUNDS")]
    time_bounds: Option<String>,
    /// Policy setting `key=value` (repeatable; the environment variable takes `k=v,k2=v2`), e.g.
    /// time_window_delta_seconds=10.
    #[arg(
        long = "policy-setting",
        value_name = "KEY=VALUE",
        env = "AGGREGATOR_POLICY_SETTINGS",
        value_delimiter = ','
    )]
    policy_settings: Vec<String>,
    /// Catch-up verification component (.wasm).
    #[arg(long, env = "AGGREGATOR_CATCHUP_VERIFICATION")]
    catchup_verification: Option<String>,
    /// Prometheus `/metrics` and `/healthz` address, e.g. 127.0.0.1:9100.
    #[arg(long, env = "AGGREGATOR_METRICS")]
    metrics: Option<String>,
    /// Compiled-policy cache directory (default: STATE_DIR/policy-cache).
    #[arg(long, env = "AGGREGATOR_POLICY_CACHE")]
    policy_cache: Option<String>,
    /// Bound on a window's chain reads, in seconds.
    #[arg(long, env = "AGGREGATOR_CHAIN_TIMEOUT_S")]
    chain_timeout_s: Option<f64>,
    /// Bound on each output-bucket call and on reading the leader's posted lists, in seconds.
    #[arg(long, env = "AGGREGATOR_STORAGE_TIMEOUT_S")]
    storage_timeout_s: Option<f64>,
    /// Validate the configuration (file, flags, environment), print it as TOML with the secret redacted, and exit.
    #[arg(long)]
    check_config: bool,
}

/// The configuration from the file, then the flags and environment variables (clap gives a flag precedence over its
/// variable), then `device` (the global `--device` / `AGGREGATOR_DEVICE`), validated.
fn merge(args: &RunArgs, device: Option<crate::DeviceKind>) -> anyhow::Result<DaemonConfig> {
    let mut c = match &args.config {
        Some(p) => {
            DaemonConfig::from_toml(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("config file {}", p.display()))?
        }
        None => DaemonConfig::default(),
    };
    macro_rules! set {
        ($($field:ident).+ = $value:expr) => {
            if let Some(v) = &$value {
                c.$($field).+ = v.clone();
            }
        };
    }
    set!(chain_url = args.chain_url);
    set!(netuid = args.netuid);
    set!(blocks_per_window = args.blocks_per_window);
    set!(version = args.version);
    set!(model = args.model);
    set!(state_dir = args.state_dir);
    set!(max_backfill = args.max_backfill);
    set!(retention_windows = args.retention_windows);
    set!(peer_endpoint = args.peer_endpoint);
    set!(output.endpoint = args.output_endpoint);
    set!(output.name = args.output_name);
    set!(output.access_key_id = args.output_access_key_id);
    set!(output.secret = args.output_secret);
    set!(gather.timeout_s = args.gather_timeout_s);
    set!(gather.concurrency = args.gather_concurrency);
    set!(policy.peer_selection = args.peer_selection);
    set!(policy.time_bounds = args.time_bounds);
    set!(policy.catchup_verification = args.catchup_verification);
    set!(metrics = args.metrics);
    set!(policy_cache = args.policy_cache);
    set!(chain_timeout_s = args.chain_timeout_s);
    set!(storage_timeout_s = args.storage_timeout_s);
    for kv in &args.policy_settings {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--policy-setting {kv:?}: expected KEY=VALUE"))?;
        c.policy.settings.insert(k.trim().to_string(), v.trim().to_string());
    }
    if let Some(d) = device {
        c.device = <crate::DeviceKind as clap::ValueEnum>::to_possible_value(&d)
            .map_or_else(|| c.device.clone(), |v| v.get_name().to_string());
    }
    c.validate()?;
    Ok(c)
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(args: RunArgs, device: Option<crate::DeviceKind>) -> anyhow::Result<()> {
    let config = merge(&args, device)?;
    if args.check_config {
        let mut shown = config.clone();
        if !shown.output.secret.is_empty() {
            shown.output.secret = "<redacted>".into();
        }
        print!("{}", shown.to_toml());
        return Ok(());
    }
    // Flag or environment first, then the file's `device` (both in `config.device`, validated by `merge`).
    let device = <crate::DeviceKind as clap::ValueEnum>::from_str(&config.device, false)
        .map_err(|e| anyhow::anyhow!("device {:?}: {e}", config.device))?;
    let numeric = device.open()?;
    let output = config.output_bucket(|k| std::env::var(k).ok())?;
    tracing::info!(model = %config.model, netuid = config.netuid, chain = %config.chain_url, output = ?output, "starting");
    runtime()?.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            tracing::info!("signal received: finishing the current window (30 s grace), then exiting");
            let _ = stop_tx.send(true);
        });
        aggregator_daemon::run(config, BackendHandle(numeric.backend), output, stop_rx, None).await
    })?;
    Ok(())
}

/// Arguments of `aggregator sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Windows to process.
    #[arg(long, default_value_t = 3)]
    windows: u64,
    /// Simulated miners.
    #[arg(long, default_value_t = 6)]
    peers: u16,
    /// Model preset or JSON file.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Inject faults: early, late, missing, malformed and oversized uploads.
    #[arg(long)]
    faults: bool,
    /// Use this S3 server instead of a local directory (the buckets must exist; see `--help` of the sim module docs).
    #[arg(long, value_name = "URL")]
    s3: Option<String>,
    /// S3 key id and secret allowed to write every bucket, as KEY:SECRET.
    #[arg(
        long,
        value_name = "KEY:SECRET",
        env = "AGGREGATOR_SIM_S3_WRITER",
        hide_env_values = true
    )]
    s3_writer: Option<String>,
    /// Directory for the store, state and outputs (default: a fresh temporary directory, printed).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds between blocks.
    #[arg(long, default_value_t = 1.0)]
    block_time: f64,
    /// Blocks per window (at least 3; default 3, or 12 for models over 100 M parameters).
    #[arg(long)]
    blocks_per_window: Option<u32>,
    /// Upload window Δ in seconds (Templar: 10).
    #[arg(long, default_value_t = 4)]
    delta: u64,
    /// Serve the daemon's /metrics here while simulating.
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

/// Runs a simulation and prints its table.
pub fn sim(args: SimArgs, device: crate::DeviceKind) -> anyhow::Result<()> {
    if !(args.block_time.is_finite() && args.block_time > 0.0) {
        anyhow::bail!("--block-time must be a positive number of seconds");
    }
    let s3 = match args.s3 {
        None => None,
        Some(endpoint) => {
            let w = args.s3_writer.context("--s3 needs --s3-writer KEY:SECRET")?;
            let (k, s) = w.split_once(':').context("--s3-writer: expected KEY:SECRET")?;
            Some(S3Target {
                endpoint,
                writer: (k.to_string(), s.to_string()),
            })
        }
    };
    let options = SimOptions {
        windows: args.windows,
        peers: args.peers,
        model: args.model.clone(),
        faults: args.faults,
        s3,
        data_dir: args.data_dir,
        block_time: Duration::from_secs_f64(args.block_time),
        blocks_per_window: match args.blocks_per_window {
            Some(n) => n,
            None => {
                let model = aggregator_model::ModelSpec::load(&args.model)?;
                if model.numel() > aggregator_daemon::sim::LARGE_MODEL {
                    12
                } else {
                    3
                }
            }
        },
        delta_s: args.delta,
        metrics: args.metrics,
        backend: BackendHandle(device.open()?.backend),
        ..SimOptions::default()
    };
    let outcome = runtime()?.block_on(aggregator_daemon::sim::run(options))?;
    let failed = outcome
        .reports
        .iter()
        .filter(|r| matches!(r.result, WindowResult::Failed(_)))
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} windows failed");
    }
    Ok(())
}
