//! `aggregator run`: the daemon, until SIGINT or SIGTERM.

use std::path::PathBuf;

use aggregator_daemon::{ConfigArgs, DaemonConfig};
use aggregator_kernels::Device;
use anyhow::Context;

use crate::runtime;
use clap::Args;

/// Arguments of `aggregator run`: the configuration file, and every configuration key as a flag with its
/// environment variable ([`ConfigArgs`], derived from [`DaemonConfig`] itself).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML configuration file (keys as the long flags, with `_`; see README "Operating the daemon").
    #[arg(long, env = "AGGREGATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration (file, flags, environment, `--hparams`), print it as TOML with the secret
    /// redacted, and exit.
    #[arg(long, visible_alias = "check")]
    check_config: bool,
    /// Take the keys that apply from Templar's `hparams.json` (`blocks_per_window`, `time_window_delta_seconds`,
    /// `peer_replacement_frequency`, …); the file, flags and variables still win. See README "Coming from Templar".
    #[arg(long, value_name = "FILE")]
    hparams: Option<PathBuf>,
    #[command(flatten)]
    keys: ConfigArgs,
}

/// The configuration from the file, then the flags and environment variables (clap gives a flag precedence over its
/// variable), then `device` (the global `--device` / `AGGREGATOR_DEVICE`), validated.
fn merge(args: &RunArgs, device: Option<Device>) -> anyhow::Result<DaemonConfig> {
    let (mut c, table) = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let c = DaemonConfig::from_toml(&text).with_context(|| format!("config file {}", p.display()))?;
            (c, toml::from_str::<toml::Table>(&text).ok())
        }
        None => (DaemonConfig::default(), None),
    };
    if let Some(path) = &args.hparams {
        for note in crate::cli::hparams::apply(path, &mut c, table.as_ref())? {
            tracing::info!(file = %path.display(), "hparams: {note}");
        }
    }
    args.keys.apply(&mut c)?;
    // Templar's NETUID, when neither the flag nor AGGREGATOR_NETUID is given.
    if !args.keys.is_set("netuid")
        && let Ok(v) = std::env::var("NETUID")
    {
        c.netuid = v
            .trim()
            .parse()
            .with_context(|| format!("NETUID {v:?}: expected a subnet number (0..=65535)"))?;
    }
    if let Some(d) = device {
        c.device = d;
    }
    c.validate()?;
    Ok(c)
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(args: RunArgs, device: Option<Device>) -> anyhow::Result<()> {
    let config = merge(&args, device).map_err(|e| crate::UsageError(format!("{e:#}")))?;
    if args.check_config {
        let mut shown = config.clone();
        if !shown.output.secret.is_empty() {
            shown.output.secret = "<redacted>".into();
        }
        print!("{}", shown.to_toml());
        return Ok(());
    }
    // Flag or environment first, then the file's `device` (both in `config.device` after `merge`).
    let numeric = crate::open_device(config.device)?;
    let output = config.output_bucket(|k| std::env::var(k).ok())?;
    tracing::info!(
        model = %config.model,
        netuid = config.netuid,
        chain = %aggregator_chain::redact_url(&config.chain_url),
        output = %output,
        device = numeric.backend.name(),
        "starting"
    );
    let build = crate::build_info(numeric.backend.name());
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
        let options = aggregator_daemon::RunOptions {
            build,
            ..Default::default()
        };
        aggregator_daemon::run(config, numeric.backend, output, stop_rx, options).await
    })?;
    Ok(())
}
