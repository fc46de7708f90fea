//! `aggregator bench window`: one window's work once the last peer's upload has landed, against a local SeaweedFS
//! started by the bench, on the daemon's own code path: gather (download, decode, validate every selected peer's
//! file), aggregate (normalise, scatter-mean, inverse DCT, sign, pack), encode the `.pt`, put it in the output
//! bucket.
//!
//! Two figures per run. **Whole window**: the four phases in a row, as the daemon runs them today (it gathers once
//! the window's time bounds have closed, so this is its critical path). **Critical path with per-peer gather**:
//! the same with only the last peer's file fetched and decoded on the path (the others would have been decoded as
//! they arrived), timed by gathering that peer alone; the daemon does not gather that way yet, so this is the bound
//! such a change could reach, not what it does.
//!
//! With `--memory-budget-mib`, the window as the daemon runs it within that budget ([`RangedWindow`]: judge by
//! ranged reads group by group, then write group by group up a multipart upload), with each run's peak RSS (the
//! set-up excluded). With `--synthesis random`, large models (an 8 B one) are set up in seconds per peer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregator_daemon::window::RangedWindow;
use aggregator_model::ModelSpec;
use aggregator_store::{Bucket, ClientSettings, Clients, PeerRequest, PutOptions, SkipReason, gather, keys, put};
use aggregator_testkit::seaweed::{BucketAccess, SeaweedFs, install};
use aggregator_window::{OutputBuffers, PeerInput, aggregate_window_into, python_utc_now};
use anyhow::{Context, bail};
use object_store::ObjectStore;

use super::gather::{VERSION, WINDOW, gather_settings, upload_peers};
use super::process::{Synthesis, mib};
use crate::resources::{load_average, peak_rss_since_reset, reset_peak_rss, usage};
use aggregator_kernels::Device;

/// Arguments of `bench window`.
#[derive(clap::Args)]
pub struct WindowArgs {
    /// Model preset or JSON file.
    #[arg(long, default_value = "templar-1b")]
    model: String,
    /// Number of peers (all selected, weight 1).
    #[arg(long, default_value_t = 15)]
    peers: usize,
    /// Timed windows; the table shows each and the medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Peers fetched at once (the daemon's `gather.concurrency`).
    #[arg(long, default_value_t = 15)]
    concurrency: usize,
    /// Virtual environment holding SeaweedFS (pip-installed there on first use).
    #[arg(long, default_value = "target/seaweedfs-venv")]
    seaweed_venv: std::path::PathBuf,
    /// Seed of the synthetic gradients.
    #[arg(long, default_value_t = 2073)]
    seed: u64,
    /// How the peers' gradients are made: dct (through the miner-side compressor) or random (top-k slots drawn
    /// directly: same sizes and cost to gather, seconds per peer at any model size).
    #[arg(long, value_enum, default_value_t = Synthesis::Dct)]
    synthesis: Synthesis,
    /// Runs the window within this memory budget, as the daemon with `memory_budget_mib` does (indexes and ranged
    /// reads, parameters in groups, the output streamed up a multipart upload), and reports each run's peak RSS.
    /// 0: the whole-file window.
    #[arg(long, default_value_t = 0)]
    memory_budget_mib: u64,
}

/// Runs the benchmark.
pub fn window(args: WindowArgs, device: Device) -> anyhow::Result<()> {
    if args.peers == 0 || args.peers > 256 || args.runs == 0 {
        bail!("--peers must be 1..=256 and --runs at least 1");
    }
    let model = Arc::new(ModelSpec::load(&args.model)?);
    let numeric = crate::open_device(device)?;
    eprintln!(
        "bench window: model {} ({} elements), {} peers, backend {}",
        model.name,
        model.numel(),
        args.peers,
        numeric.description
    );
    crate::runtime()?.block_on(run(args, model, numeric.backend.clone()))
}

/// One run's phase times.
struct Phases {
    gather: Duration,
    last: Duration,
    process: Duration,
    encode: Duration,
    put: Duration,
}

impl Phases {
    fn whole(&self) -> Duration {
        self.gather + self.process + self.encode + self.put
    }
    fn incremental(&self) -> Duration {
        self.last + self.process + self.encode + self.put
    }
}

async fn run(
    args: WindowArgs,
    model: Arc<ModelSpec>,
    backend: Arc<dyn aggregator_kernels::Backend>,
) -> anyhow::Result<()> {
    let names: Vec<String> = (0..args.peers).map(|p| format!("peer-{p}")).collect();
    let work = std::env::temp_dir().join(format!("bench-window-{}", std::process::id()));
    let weed = install(&args.seaweed_venv)?;
    let access: Vec<BucketAccess> = names
        .iter()
        .chain(std::iter::once(&"aggregates".to_string()))
        .map(|n| BucketAccess {
            name: n.clone(),
            reader: None,
        })
        .collect();
    let server = SeaweedFs::start(&weed, &work, &access).await?;
    eprintln!(
        "SeaweedFS {} at {}",
        aggregator_testkit::seaweed::WHEEL,
        server.endpoint()
    );
    let buckets: Vec<Bucket> = names.iter().map(|n| server.admin_bucket(n)).collect();
    let clients = Clients::new(ClientSettings::default());
    let output = clients.get(&server.admin_bucket("aggregates"))?;
    let (file_bytes, peers) = upload_peers(&model, &clients, &buckets, args.seed, args.synthesis).await?;
    let (options, bounds) = gather_settings(args.concurrency);
    if args.memory_budget_mib > 0 {
        let ranged = RangedWindow {
            clients: &clients,
            model: model.clone(),
            backend: backend.clone(),
            window: WINDOW,
            version: VERSION,
            gather: options,
            budget: args.memory_budget_mib << 20,
        };
        run_budgeted(&args, ranged, output.as_ref(), &peers, file_bytes).await?;
        drop(server);
        return Ok(());
    }
    let load_before = load_average();
    println!(
        "{:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "run", "gather", "last file", "process", "encode", "put", "whole", "per-peer cp"
    );
    let mut runs = Vec::new();
    let mut out_bytes = 0;
    for r in 0..args.runs {
        // The last peer alone, as it would be fetched and decoded once its upload lands.
        let t = Instant::now();
        let last = gather(
            &clients,
            WINDOW,
            VERSION,
            &peers[args.peers - 1..],
            bounds,
            model.clone(),
            &options,
        )
        .await;
        let last_t = t.elapsed();
        drop(last);
        let t = Instant::now();
        // As the daemon: the output's memory is mapped while the gather waits on the downloads.
        let buffers = tokio::task::spawn_blocking({
            let model = model.clone();
            move || OutputBuffers::prefaulted(&model)
        });
        let gathered = gather(&clients, WINDOW, VERSION, &peers, bounds, model.clone(), &options).await;
        let buffers = buffers.await?;
        let gather_t = t.elapsed();
        let mut inputs = Vec::with_capacity(gathered.len());
        for g in gathered {
            match g.outcome {
                Ok(gradient) => inputs.push((
                    g.uid,
                    PeerInput::<SkipReason>::Valid {
                        gradient: *gradient,
                        weight: 1.0,
                    },
                )),
                Err(reason) => bail!("peer {} was not gathered: {reason}", g.uid),
            }
        }
        // The daemon's aggregate phase: the numeric step and the encoding, on a blocking thread.
        let (model2, backend2) = (model.clone(), backend.clone());
        let (bytes, process_t, encode_t) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let t = Instant::now();
            let a = aggregate_window_into(
                &model2,
                backend2.as_ref(),
                WINDOW as i64,
                VERSION,
                &inputs,
                python_utc_now(),
                buffers,
            )?;
            let process_t = t.elapsed();
            drop(inputs);
            let t = Instant::now();
            let bytes = a.file.context("no aggregate")?.to_bytes()?;
            Ok((bytes, process_t, t.elapsed()))
        })
        .await??;
        out_bytes = bytes.len() as u64;
        let key = keys::aggregate(WINDOW + r as u64, VERSION);
        let t = Instant::now();
        put(output.as_ref(), &key, bytes.into(), &PutOptions::default()).await?;
        let phases = Phases {
            gather: gather_t,
            last: last_t,
            process: process_t,
            encode: encode_t,
            put: t.elapsed(),
        };
        let s = |d: Duration| format!("{:.3}", d.as_secs_f64());
        println!(
            "{:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
            r + 1,
            s(phases.gather),
            s(phases.last),
            s(phases.process),
            s(phases.encode),
            s(phases.put),
            s(phases.whole()),
            s(phases.incremental())
        );
        runs.push(phases);
    }
    let median = |f: &dyn Fn(&Phases) -> Duration| {
        let mut v: Vec<Duration> = runs.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    let process = median(&|p| p.process).as_secs_f64();
    let whole = median(&|p| p.whole()).as_secs_f64();
    let incremental = median(&|p| p.incremental()).as_secs_f64();
    println!();
    println!(
        "{} peers x {} from a local SeaweedFS over HTTP, output {}: medians: process {:.3} s; whole window after \
         the last upload (as the daemon runs it: gather all, process, encode, put) {:.3} s = {:.2}x process; with \
         per-peer gather (last file, process, encode, put) {:.3} s = {:.2}x process",
        args.peers,
        mib(file_bytes),
        mib(out_bytes),
        process,
        whole,
        whole / process,
        incremental,
        incremental / process
    );
    let fmt_load = |l: Option<f64>| l.map_or("n/a".into(), |l| format!("{l:.2}"));
    println!(
        "peak RSS {} (whole process, synthesis included); load average {} before, {} after",
        mib(usage().peak_rss),
        fmt_load(load_before),
        fmt_load(load_average())
    );
    drop(server);
    Ok(())
}

/// One budgeted run's phase times.
struct BudgetPhases {
    judge: Duration,
    write: Duration,
    complete: Duration,
    peak_rss: Option<u64>,
}

/// `bench window --memory-budget-mib`: the daemon's window within a memory budget ([`RangedWindow`]), every peer
/// weighted 1 (the daemon asks its weighting policy; that call is timed by `bench policy`).
async fn run_budgeted(
    args: &WindowArgs,
    ranged: RangedWindow<'_>,
    output: &dyn ObjectStore,
    peers: &[PeerRequest],
    file_bytes: u64,
) -> anyhow::Result<()> {
    let (_, bounds) = gather_settings(args.concurrency);
    let weights = vec![1.0f32; peers.len()];
    let key = keys::aggregate(WINDOW, VERSION);
    println!(
        "{:>4} {:>7} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "run", "groups", "judge", "write", "complete", "whole", "peak RSS"
    );
    let mut runs = Vec::new();
    let mut out_bytes = 0;
    let mut groups = 0;
    for r in 0..args.runs {
        // The synthesis and uploads before (and the run before) do not count in this run's peak.
        let reset = reset_peak_rss();
        let t = Instant::now();
        let judged = ranged.judge(peers, &weights, bounds).await?;
        if judged.live.len() != peers.len() {
            bail!("peers were skipped: {:?}", judged.skipped());
        }
        let judge = t.elapsed();
        groups = judged.groups.len();
        let header = judged.header(WINDOW, VERSION, python_utc_now());
        let t = Instant::now();
        let streamed = ranged.write(&judged, &weights, header, output, &key).await?;
        let write = t.elapsed();
        let t = Instant::now();
        out_bytes = streamed.bytes;
        streamed.upload.complete().await?;
        let phases = BudgetPhases {
            judge,
            write,
            complete: t.elapsed(),
            peak_rss: peak_rss_since_reset().filter(|_| reset),
        };
        let s = |d: Duration| format!("{:.3}", d.as_secs_f64());
        println!(
            "{:>4} {:>7} {:>9} {:>9} {:>9} {:>9} {:>12}",
            r + 1,
            groups,
            s(phases.judge),
            s(phases.write),
            s(phases.complete),
            s(phases.judge + phases.write + phases.complete),
            phases.peak_rss.map_or("n/a".into(), mib)
        );
        runs.push(phases);
    }
    let median = |f: &dyn Fn(&BudgetPhases) -> Duration| {
        let mut v: Vec<Duration> = runs.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    let (judge, write) = (median(&|p| p.judge), median(&|p| p.write));
    let whole = median(&|p| p.judge + p.write + p.complete);
    let read = peers.len() as f64 * file_bytes as f64;
    let peak = runs.iter().filter_map(|p| p.peak_rss).max();
    println!();
    println!(
        "{} peers x {} from a local SeaweedFS over HTTP, output {}, budget {} in {groups} groups: medians: judge \
         (indexes, every group read and checked, evidence) {:.3} s = {:.1} MB/s of peer files; write (every group \
         read again, aggregated, streamed up the upload) {:.3} s; whole window {:.3} s",
        args.peers,
        mib(file_bytes),
        mib(out_bytes),
        mib(ranged.budget),
        judge.as_secs_f64(),
        read / 1e6 / judge.as_secs_f64(),
        write.as_secs_f64(),
        whole.as_secs_f64(),
    );
    match peak {
        Some(p) => println!(
            "peak RSS of the window {} ({} the budget; set-up excluded: VmHWM reset before each run)",
            mib(p),
            if p <= ranged.budget { "within" } else { "OVER" }
        ),
        None => println!("peak RSS of the window: n/a (this platform cannot reset VmHWM)"),
    }
    Ok(())
}
