//! `aggregator catchup`: replays aggregates onto a checkpoint and verifies sync with the leader.

use std::path::PathBuf;

use aggregator_catchup::{Applied, CatchupConfig, Checkpoint, OnOutOfSync, OnWindow, Schedule, catch_up};
use aggregator_daemon::parse_endpoint;
use aggregator_model::ModelSpec;
use aggregator_policy::{Policies, PolicyConfig, PolicyEngine, PolicyKind, PolicyLimits};
use aggregator_store::{Bucket, ClientSettings, Clients};
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
    /// The aggregator's bucket endpoint: `r2:ACCOUNT`, an S3 URL or a directory (else `r2:` and Templar's
    /// `R2_AGGREGATOR_ACCOUNT_ID`).
    #[arg(long)]
    store: Option<String>,
    /// The aggregator's bucket name (else Templar's `R2_AGGREGATOR_BUCKET_NAME`).
    #[arg(long)]
    bucket: Option<String>,
    /// Read credentials of the aggregator's bucket.
    #[command(flatten)]
    read: super::ReadCredentials,
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
    #[arg(long = "policy-setting", value_name = "KEY=VALUE", value_parser = aggregator_daemon::parse_setting)]
    policy_settings: Vec<(String, String)>,
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
    let loading = crate::progress::spinner(&format!("loading {}", args.checkpoint.display()));
    let mut ckpt = Checkpoint::load(&args.checkpoint, &model, args.from, args.start_window)
        .with_context(|| format!("checkpoint {}", args.checkpoint.display()))?;
    loading.finish_and_clear();
    if args.to < ckpt.window {
        anyhow::bail!("--to {} is before the checkpoint's window {}", args.to, ckpt.window);
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let store = match (&args.store, env("R2_AGGREGATOR_ACCOUNT_ID")) {
        (Some(s), _) => s.clone(),
        (None, Some(account)) => format!("r2:{account}"),
        (None, None) => anyhow::bail!("no --store, and R2_AGGREGATOR_ACCOUNT_ID is not set"),
    };
    let Some(output_name) = args.bucket.clone().or_else(|| env("R2_AGGREGATOR_BUCKET_NAME")) else {
        anyhow::bail!("no --bucket, and R2_AGGREGATOR_BUCKET_NAME is not set");
    };
    let endpoint = parse_endpoint(&store).map_err(|e| anyhow::anyhow!("--store {e}"))?;
    let bucket = |name: &str| Bucket {
        endpoint: endpoint.clone(),
        name: name.to_string(),
        access_key_id: args.read.access_key_id(),
        secret: args.read.secret(),
    };
    let policies = Policies::new(
        PolicyEngine::new(PolicyLimits::default(), None)?,
        PolicyConfig {
            components: args
                .verifier
                .iter()
                .map(|v| (PolicyKind::CatchupVerification, v.clone()))
                .collect(),
            settings: args.policy_settings,
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
        on_window: {
            let bar = crate::progress::bar(args.to.saturating_sub(ckpt.window), "replaying windows");
            let from = ckpt.window;
            OnWindow::new(move |w| {
                bar.set_position(w.saturating_sub(from));
                if w >= args.to {
                    bar.finish_and_clear();
                }
            })
        },
        ..CatchupConfig::default()
    };
    let clients = Clients::new(ClientSettings::default());
    let aggregates = clients.get(&bucket(&output_name))?;
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
    let saving = crate::progress::spinner(&format!("writing {}", args.out.display()));
    ckpt.save(&args.out, &model)
        .with_context(|| format!("writing the checkpoint {}", args.out.display()))?;
    saving.finish_and_clear();
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
