//! `aggregator catchup` (replay aggregates onto a checkpoint) and `aggregator bench catchup`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aggregator_catchup::{Applied, CatchupConfig, Checkpoint, OnOutOfSync, Schedule, catch_up};
use aggregator_codec::Aggregate;
use aggregator_daemon::parse_endpoint;
use aggregator_model::ModelSpec;
use aggregator_policy::{Policies, PolicyConfig, PolicyEngine, PolicyLimits};
use aggregator_store::{Bucket, ClientSettings, Clients, PutOptions, put};
use anyhow::Context;

use crate::runtime;
use clap::{Args, ValueEnum};

/// What to do when a window is out of sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutOfSyncAction {
    /// Log and continue.
    Warn,
    /// Stop with exit status 1 (the checkpoint so far is written).
    Stop,
}

/// Arguments of `aggregator catchup`.
#[derive(Args, Debug)]
pub struct CatchupArgs {
    /// Checkpoint to start from: `.safetensors` (window in its metadata) or a torch `.pt` state dict.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The checkpoint's window (overrides the file's).
    #[arg(long)]
    from: Option<u64>,
    /// Catch up through this window (inclusive).
    #[arg(long)]
    to: u64,
    /// The network's start window (overrides the file's); the schedule step of window w is w - start - 1.
    #[arg(long)]
    start_window: Option<u64>,
    /// Where to write the caught-up checkpoint (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Model preset or JSON file.
    #[arg(long, default_value = "templar-1b")]
    model: String,
    /// The aggregator's bucket endpoint: `r2:ACCOUNT`, an S3 URL or a directory.
    #[arg(long)]
    store: String,
    /// The aggregator's bucket name.
    #[arg(long)]
    bucket: String,
    /// Read key id (and secret, below) of the aggregator's bucket.
    #[arg(long, default_value = "", env = "AGGREGATOR_READ_ACCESS_KEY_ID")]
    access_key_id: String,
    /// Read secret.
    #[arg(long, default_value = "", env = "AGGREGATOR_READ_SECRET", hide_env_values = true)]
    secret: String,
    /// The leader's bucket (endpoint as --store, same credentials) holding `debug-{w}-{uid}-v{V}.pt`.
    #[arg(long)]
    debug_bucket: Option<String>,
    /// The leader's uid.
    #[arg(long, default_value_t = 0)]
    leader_uid: u16,
    /// Catch-up verification component (.wasm; default: the embedded templar-default).
    #[arg(long)]
    verifier: Option<PathBuf>,
    /// Verification policy setting `key=value` (repeatable), e.g. sync_max_steps_behind=3.
    #[arg(long = "policy-setting", value_name = "KEY=VALUE")]
    policy_settings: Vec<String>,
    /// Action when a window is out of sync.
    #[arg(long, value_enum, default_value_t = OutOfSyncAction::Warn)]
    on_out_of_sync: OutOfSyncAction,
    /// Tries for the last window (a server still writing it), 10 s apart.
    #[arg(long, default_value_t = 8)]
    last_window_tries: u32,
    /// Base learning rate.
    #[arg(long, default_value_t = 4e-4)]
    lr: f64,
    /// T_0 of the cosine restarts.
    #[arg(long, default_value_t = 20_000)]
    t_max: u64,
    /// Weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
}

/// Runs a catch-up and prints one line per window.
pub fn run(args: CatchupArgs) -> anyhow::Result<std::process::ExitCode> {
    let model = ModelSpec::load(&args.model)?;
    let mut ckpt = Checkpoint::load(&args.checkpoint, &model, args.from, args.start_window)?;
    if args.to < ckpt.window {
        anyhow::bail!("--to {} is before the checkpoint's window {}", args.to, ckpt.window);
    }
    let endpoint = parse_endpoint(&args.store).map_err(|e| anyhow::anyhow!("--store {e}"))?;
    let bucket = |name: &str| Bucket {
        endpoint: endpoint.clone(),
        name: name.to_string(),
        access_key_id: args.access_key_id.clone(),
        secret: args.secret.clone(),
    };
    let mut settings = vec![];
    for kv in &args.policy_settings {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--policy-setting {kv:?}: expected KEY=VALUE"))?;
        settings.push((k.trim().to_string(), v.trim().to_string()));
    }
    let policies = Policies::new(
        PolicyEngine::new(PolicyLimits::default(), None)?,
        PolicyConfig {
            catchup_verification: args.verifier.clone(),
            settings,
            ..Default::default()
        },
    )?;
    let config = CatchupConfig {
        schedule: Schedule {
            lr: args.lr,
            t_max: args.t_max,
            weight_decay: args.weight_decay,
            ..Schedule::default()
        },
        last_window_tries: args.last_window_tries,
        leader_uid: args.leader_uid,
        on_out_of_sync: match args.on_out_of_sync {
            OutOfSyncAction::Warn => OnOutOfSync::Warn,
            OutOfSyncAction::Stop => OnOutOfSync::Stop,
        },
        ..CatchupConfig::default()
    };
    let clients = Clients::new(ClientSettings::default());
    let aggregates = clients.get(&bucket(&args.bucket))?;
    let debug = args
        .debug_bucket
        .as_deref()
        .map(|b| clients.get(&bucket(b)))
        .transpose()?;
    let from = ckpt.window;
    let result = runtime()?.block_on(catch_up(
        &mut ckpt,
        args.to,
        &model,
        aggregates.as_ref(),
        debug.as_deref(),
        Some(&policies),
        &config,
    ));
    ckpt.save(&args.out, &model)?;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "error: {e}; checkpoint at window {} written to {}",
                ckpt.window,
                args.out.display()
            );
            return Ok(std::process::ExitCode::from(1));
        }
    };
    println!("{:>8} {:>12} {:>10} {:>9}  verdict", "window", "lr", "applied", "ms");
    let mut missing = vec![];
    for r in &report {
        let applied = match &r.applied {
            Applied::Applied(n) => format!("{n} params"),
            Applied::Missing => {
                missing.push(r.window);
                "missing".into()
            }
            Applied::Invalid(_) => {
                missing.push(r.window);
                "invalid".into()
            }
        };
        let verdict = match &r.verdict {
            Some(v) => format!("{}: {}", if v.in_sync { "in sync" } else { "OUT OF SYNC" }, v.note),
            None => "-".into(),
        };
        println!(
            "{:>8} {:>12.4e} {:>10} {:>9.1}  {verdict}",
            r.window,
            r.lr,
            applied,
            r.elapsed.as_secs_f64() * 1e3
        );
    }
    println!(
        "caught up from window {from} to {}: {} windows, missing {:?}; written to {}",
        ckpt.window,
        report.len(),
        missing,
        args.out.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Arguments of `aggregator bench catchup`.
#[derive(Args, Debug)]
pub struct BenchCatchupArgs {
    /// Model preset or JSON file.
    #[arg(long, default_value = "templar-1b")]
    model: String,
    /// Windows to replay.
    #[arg(long, default_value_t = 10)]
    windows: u64,
}

/// Times catch-up: random aggregates for N windows in a local store, replayed onto an initial model.
pub fn bench(args: BenchCatchupArgs) -> anyhow::Result<()> {
    let model = ModelSpec::load(&args.model)?;
    let dir = std::env::temp_dir().join(format!("aggregator-bench-catchup-{}", std::process::id()));
    let bucket = Bucket::local(&dir, "aggregates");
    let clients = Clients::new(ClientSettings::default());
    let store = clients.get(&bucket)?;
    let rt = runtime()?;
    eprintln!("writing {} random aggregates of {} …", args.windows, model.name);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for w in 1..=args.windows {
        let params = model
            .params
            .iter()
            .map(|p| {
                let bytes = (0..p.layout.numel().div_ceil(8))
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                (p.name.clone(), bytes)
            })
            .collect();
        let agg = Aggregate {
            params,
            timestamp: aggregator_window::python_utc_now(),
            window: w as i64,
            version: "0.2.73".into(),
            skipped_uids: vec![],
            success_rate: 1.0,
            global_step: 0,
        };
        let bytes = agg.to_bytes()?;
        rt.block_on(put(
            store.as_ref(),
            &aggregator_store::keys::aggregate(w, "0.2.73"),
            bytes.into(),
            &PutOptions::default(),
        ))?;
    }
    // The real path: a checkpoint file on disk, loaded, caught up, written.
    let path = dir.join("checkpoint-0.safetensors");
    Checkpoint::init(&model, 1, 0, 0).save(&path, &model)?;
    let started = Instant::now();
    let mut ckpt = Checkpoint::load(&path, &model, None, None)?;
    let load = started.elapsed();
    let config = CatchupConfig {
        last_window_tries: 1,
        retry_delay: Duration::ZERO,
        ..CatchupConfig::default()
    };
    let started = Instant::now();
    let report = rt.block_on(catch_up(
        &mut ckpt,
        args.windows,
        &model,
        store.as_ref(),
        None,
        None,
        &config,
    ))?;
    let total = started.elapsed();
    let started = Instant::now();
    ckpt.save(&path, &model)?;
    let save = started.elapsed();
    println!("{:>8} {:>10}", "window", "ms");
    for r in &report {
        println!("{:>8} {:>10.1}", r.window, r.elapsed.as_secs_f64() * 1e3);
    }
    println!(
        "{} windows of {} ({} parameters): {:.2} s in all, {:.0} ms per window (read + decode + apply); \
         checkpoint load {:.2} s, save {:.2} s",
        report.len(),
        model.name,
        model.numel(),
        total.as_secs_f64(),
        total.as_secs_f64() * 1e3 / report.len().max(1) as f64,
        load.as_secs_f64(),
        save.as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
