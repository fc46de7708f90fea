//! `bench catchup`: catch-up time per window, N random aggregates replayed onto a model.

use std::time::{Duration, Instant};

use aggregator_catchup::{CatchupConfig, Checkpoint, catch_up};
use aggregator_codec::Aggregate;
use aggregator_model::ModelSpec;
use aggregator_store::{Bucket, ClientSettings, Clients, PutOptions, put};

use crate::runtime;
use clap::Args;

/// Arguments of `aggregator bench catchup`.
#[derive(Args, Debug)]
pub struct BenchCatchupArgs {
    /// Model preset or JSON file.
    #[arg(long, default_value = "templar-1b")]
    model: String,
    /// Windows to replay.
    #[arg(long, default_value_t = 10)]
    windows: u64,
    /// Write the aggregates under `DIR/aggregates/` and keep them (with the caught-up checkpoint), for
    /// `scripts/bench-compare --catchup` to replay Templar's catch-up on the same files; default: a temporary
    /// directory, removed at the end.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// Times catch-up: random aggregates for N windows in a local store, replayed onto an initial model.
pub fn bench(args: BenchCatchupArgs) -> anyhow::Result<()> {
    let model = ModelSpec::load(&args.model)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("aggregator-bench-catchup-{}", std::process::id())));
    let bucket = Bucket::local(&dir, "aggregates");
    let clients = Clients::new(ClientSettings::default());
    let store = clients.get(&bucket)?;
    let rt = runtime()?;
    eprintln!("writing {} random aggregates of {} …", args.windows, model.name);
    let bar = crate::progress::bar(args.windows, "writing aggregates");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for w in 1..=args.windows {
        bar.inc(1);
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
    bar.finish_and_clear();
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
    if args.dir.is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(())
}
