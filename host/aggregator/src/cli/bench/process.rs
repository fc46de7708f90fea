//! `aggregator bench process`: times the per-window numeric work on synthetic peers and prints a table.
//!
//! Peers are synthesised through the miner-side code (random parameter values → block DCT → top-k), seeded per
//! (peer, parameter, block row), so every run and thread count sees the same inputs. Independent random peers choose
//! nearly disjoint coefficient slots, which is the worst case for the scatter and the first transform stage.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aggregator_kernels::{Backend, Contribution, Cpu, PeerSparse};
use aggregator_model::ModelSpec;
use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::resources::{load_average, usage};
use aggregator_kernels::Device;

/// Arguments of `bench process`.
#[derive(clap::Args)]
pub struct ProcessArgs {
    /// Model preset (tiny, small, templar-1b) or model JSON file.
    #[arg(long)]
    model: String,
    /// Number of synthetic peers.
    #[arg(long, default_value_t = 15)]
    peers: usize,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed runs; the table shows the median and the minimum.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seed of the synthetic gradients.
    #[arg(long, default_value_t = 2073)]
    seed: u64,
}

/// One peer's compressed gradient: `(idxs, vals)` per parameter, in model order.
pub(crate) type PeerData = Vec<(Vec<i16>, Vec<f32>)>;

fn stream_seed(seed: u64, peer: usize, param: usize, block_row: usize) -> u64 {
    // SplitMix64-style mixing of the coordinates into one seed.
    let mut z = seed ^ (peer as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for v in [param as u64, block_row as u64] {
        z = (z ^ v).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
    }
    z
}

/// Synthesises peer `p` through the miner-side compressor, streaming each parameter in bands of block rows.
pub(crate) fn synthesize_peer(model: &ModelSpec, p: usize, seed: u64, cpu: &Cpu) -> anyhow::Result<PeerData> {
    const BAND_ELEMENTS: usize = 1 << 22;
    let mut x = Vec::new();
    let mut data = Vec::with_capacity(model.params.len());
    for (pi, param) in model.params.iter().enumerate() {
        let l = &param.layout;
        let row_len = l.block_h() * l.cols();
        let entries_per_row = l.blocks_x() * l.k();
        let band = (BAND_ELEMENTS / row_len).max(1);
        let (mut idxs, mut vals) = (vec![0i16; l.sparse_len()], vec![0f32; l.sparse_len()]);
        for by in (0..l.blocks_y()).step_by(band) {
            let m = band.min(l.blocks_y() - by);
            x.resize(m * row_len, 0.0);
            x.par_chunks_mut(row_len).enumerate().for_each(|(r, row)| {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(stream_seed(seed, p, pi, by + r));
                row.iter_mut().for_each(|v| *v = rng.random::<f32>() * 2.0 - 1.0);
            });
            let span = by * entries_per_row..(by + m) * entries_per_row;
            cpu.compress_rows(l, &x, &mut idxs[span.clone()], &mut vals[span])
                .with_context(|| format!("compressing {}", param.name))?;
        }
        data.push((idxs, vals));
    }
    Ok(data)
}

/// Synthesises `n` peers.
fn synthesize(model: &ModelSpec, n: usize, seed: u64, cpu: &Cpu) -> anyhow::Result<Vec<PeerData>> {
    let bar = crate::progress::bar(n as u64, "synthesising peers");
    let peers = (0..n)
        .map(|p| {
            let started = Instant::now();
            let data = synthesize_peer(model, p, seed, cpu)?;
            bar.inc(1);
            if bar.is_hidden() {
                eprintln!(
                    "  synthesised peer {}/{n} in {:.1} s",
                    p + 1,
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(data)
        })
        .collect();
    bar.finish_and_clear();
    peers
}

/// Timings of one parameter in one run.
#[derive(Clone, Copy, Default)]
struct ParamTiming {
    normalise: Duration,
    aggregate: Duration,
}

fn run_once(
    model: &ModelSpec,
    sparse: &[Vec<PeerSparse>],
    backend: &dyn Backend,
    scratch: &mut [Vec<f32>],
    out: &mut [u8],
) -> anyhow::Result<Vec<ParamTiming>> {
    let mut timings = Vec::with_capacity(model.params.len());
    let mut off = 0;
    for (pi, param) in model.params.iter().enumerate() {
        let l = &param.layout;
        let t0 = Instant::now();
        let contributions: Vec<Contribution> = scratch
            .par_iter_mut()
            .zip(sparse.par_iter())
            .map(|(buf, peer)| Contribution::new(peer[pi].normalised(buf)))
            .collect();
        let t1 = Instant::now();
        backend
            .aggregate(l, &contributions, &mut out[off..off + l.packed_len()])
            .with_context(|| format!("aggregating {}", param.name))?;
        timings.push(ParamTiming {
            normalise: t1 - t0,
            aggregate: t1.elapsed(),
        });
        off += l.packed_len();
    }
    Ok(timings)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Runs the benchmark and prints its table.
pub fn process(args: ProcessArgs, device: Device) -> anyhow::Result<()> {
    if args.peers == 0 || args.runs == 0 {
        bail!("--peers and --runs must be at least 1");
    }
    let model = ModelSpec::load(&args.model)?;
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(t) = args.threads {
        pool = pool.num_threads(t);
    }
    let pool = pool.build()?;
    let threads = pool.current_num_threads();
    let cpu = Cpu::new();
    let numeric = crate::open_device(device)?;
    let backend = numeric.backend.clone();
    eprintln!(
        "bench process: model {} ({} parameters, {} elements), {} peers, backend {}, {threads} threads",
        model.name,
        model.params.len(),
        model.numel(),
        args.peers,
        numeric.description,
    );
    pool.install(|| -> anyhow::Result<()> {
        let started = Instant::now();
        let peers = synthesize(&model, args.peers, args.seed, &cpu)?;
        eprintln!(
            "  inputs: {} per peer, {} in all, synthesised in {:.1} s",
            mib(model.sparse_bytes() as u64),
            mib((model.sparse_bytes() * args.peers) as u64),
            started.elapsed().as_secs_f64()
        );
        let sparse: Vec<Vec<PeerSparse>> = peers
            .iter()
            .map(|data| {
                model
                    .params
                    .iter()
                    .zip(data)
                    .map(|(p, (i, v))| PeerSparse::new(&p.layout, i, v))
                    .collect()
            })
            .collect::<Result<_, _>>()?;
        let max_len = model.params.iter().map(|p| p.layout.sparse_len()).max().unwrap_or(0);
        let mut scratch: Vec<Vec<f32>> = (0..args.peers).map(|_| Vec::with_capacity(max_len)).collect();
        let mut out = vec![0u8; model.packed_len()];

        let load_before = load_average();
        let (mut runs, mut walls, mut cpus, mut digests) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..args.runs {
            let (u0, t0) = (usage(), Instant::now());
            runs.push(run_once(&model, &sparse, backend.as_ref(), &mut scratch, &mut out)?);
            let (wall, u1) = (t0.elapsed(), usage());
            walls.push(wall);
            cpus.push(u1.cpu - u0.cpu);
            digests.push(Sha256::digest(&out));
            eprintln!("  run {}/{}: {:.3} s", r + 1, args.runs, wall.as_secs_f64());
        }
        let load_after = load_average();
        print_table(&model, &runs);
        let peak = usage().peak_rss;
        let (wall, cpu_t) = (median(walls.clone()), median(cpus));
        println!();
        println!(
            "process step: median {:.3} s, min {:.3} s over {} runs; CPU time {:.3} s per run ({:.2} cores busy)",
            wall.as_secs_f64(),
            walls.iter().min().copied().unwrap_or_default().as_secs_f64(),
            args.runs,
            cpu_t.as_secs_f64(),
            cpu_t.as_secs_f64() / wall.as_secs_f64()
        );
        println!(
            "throughput {:.2} G elements/s; peak RSS {} (inputs {}, output {})",
            model.numel() as f64 / wall.as_secs_f64() / 1e9,
            mib(peak),
            mib((model.sparse_bytes() * args.peers) as u64),
            mib(model.packed_len() as u64)
        );
        let fmt_load = |l: Option<f64>| l.map_or("n/a".into(), |l| format!("{l:.2}"));
        println!(
            "machine: {threads} threads, ISA {}, load average {} before / {} after",
            cpu.isa().name(),
            fmt_load(load_before),
            fmt_load(load_after)
        );
        let hex: String = digests[0].iter().map(|b| format!("{b:02x}")).collect();
        if digests.iter().any(|d| *d != digests[0]) {
            bail!("output bits differ between runs (first run sha256 {hex}): determinism is broken");
        }
        println!("output sha256 {hex} (identical in all {} runs)", args.runs);
        if backend.name() != "cpu" {
            let mut reference = vec![0u8; model.packed_len()];
            run_once(&model, &sparse, &cpu, &mut scratch, &mut reference)?;
            let bad: u64 = reference
                .iter()
                .zip(&out)
                .map(|(a, b)| (a ^ b).count_ones() as u64)
                .sum();
            println!("bits against the CPU path: {bad} of {} mismatched", model.numel());
            if bad != 0 {
                bail!("{} gives different bits from the CPU path", backend.name());
            }
        }
        #[cfg(feature = "gpu")]
        if let Some(gpu) = &numeric.gpu {
            resident(&model, &sparse, gpu, args.runs, &out)?;
        }
        drop(sparse);
        evidence(&model, peers, args.runs, wall)
    })
}

/// The contribution-weighting evidence (`aggregator_window::evidence`) on the same inputs, which move into
/// gradients (no copy), timed beside the process step `process`.
fn evidence(model: &ModelSpec, peers: Vec<PeerData>, runs: usize, process: Duration) -> anyhow::Result<()> {
    use aggregator_codec::{Gradient, GradientMetadata, SparseParam};
    use aggregator_window::evidence::{EvidencePeer, compute};
    let gradients: Vec<Gradient> = peers
        .into_iter()
        .map(|data| Gradient {
            params: data
                .into_iter()
                .map(|(idxs, vals)| Some(SparseParam { idxs, vals }))
                .collect(),
            metadata: GradientMetadata::default(),
            global_step: 0,
        })
        .collect();
    let inputs: Vec<EvidencePeer> = gradients
        .iter()
        .enumerate()
        .map(|(i, g)| EvidencePeer {
            uid: i as u16 + 1,
            gradient: g,
            weight: 1.0,
            last_modified_ms: 0,
            sha256: None,
        })
        .collect();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(compute(model, &inputs));
        times.push(t.elapsed());
    }
    let t = median(times);
    println!(
        "evidence for contribution weighting (norms, overlap, leave-one-out, copies): median {:.3} s, {:.0}% of the \
         process step",
        t.as_secs_f64(),
        100.0 * t.as_secs_f64() / process.as_secs_f64()
    );
    Ok(())
}

/// The process step with the inputs already on the device: every parameter's normalised inputs are uploaded once,
/// then each run launches every parameter's kernel and waits; the packed outputs are copied back at the end.
#[cfg(feature = "gpu")]
fn resident(
    model: &ModelSpec,
    sparse: &[Vec<PeerSparse>],
    gpu: &aggregator_gpu::AnyGpu,
    runs: usize,
    expected: &[u8],
) -> anyhow::Result<()> {
    let normalised: Vec<Vec<Vec<f32>>> = sparse
        .par_iter()
        .map(|peer| {
            peer.iter()
                .map(|p| {
                    let mut buf = Vec::new();
                    p.normalised(&mut buf);
                    buf
                })
                .collect()
        })
        .collect();
    let params: Vec<_> = model
        .params
        .iter()
        .enumerate()
        .map(|(pi, p)| {
            let peers = sparse
                .iter()
                .zip(&normalised)
                .map(|(peer, bufs)| {
                    let s = PeerSparse::new(&p.layout, peer[pi].idxs(), &bufs[pi])?;
                    Ok(Contribution::new(s))
                })
                .collect::<Result<Vec<_>, aggregator_kernels::KernelError>>()?;
            Ok((p.layout.clone(), peers))
        })
        .collect::<anyhow::Result<_>>()?;
    let t = gpu.time_resident(&params, runs)?;
    let packed: Vec<u8> = t.packed.concat();
    let same = packed == expected;
    let process = median(t.process.clone());
    println!();
    println!("on-device process step ({}):", gpu.description());
    println!(
        "  upload {} ms (all inputs, once); process median {} ms, min {} ms over {} runs; download {} ms",
        ms(t.upload),
        ms(process),
        ms(t.process.iter().min().copied().unwrap_or_default()),
        t.process.len(),
        ms(t.download)
    );
    println!(
        "  with copies: {} ms; outputs {}",
        ms(t.upload + process + t.download),
        if same {
            "identical to the end-to-end run"
        } else {
            "DIFFER from the end-to-end run"
        }
    );
    if !same {
        bail!("the on-device run gave different bits");
    }
    Ok(())
}

fn print_table(model: &ModelSpec, runs: &[Vec<ParamTiming>]) {
    // Group parameters by shape, in order of first appearance.
    let mut order: Vec<Vec<usize>> = Vec::new();
    let mut groups: HashMap<Vec<usize>, Vec<usize>> = HashMap::new();
    for (i, p) in model.params.iter().enumerate() {
        let shape = p.layout.shape().to_vec();
        if !groups.contains_key(&shape) {
            order.push(shape.clone());
        }
        groups.entry(shape).or_default().push(i);
    }
    let header = format!(
        "{:<14} {:>6} {:>14} {:>12} {:>12} {:>12} {:>10} {:>11}",
        "shape", "params", "elements", "normalise ms", "aggregate ms", "median ms", "min ms", "Gelem/s"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    let row = |label: String, idx: &[usize]| {
        let per_run = |f: &dyn Fn(&ParamTiming) -> Duration| -> Vec<Duration> {
            runs.iter().map(|r| idx.iter().map(|&i| f(&r[i])).sum()).collect()
        };
        let total = per_run(&|t| t.normalise + t.aggregate);
        let elements: usize = idx.iter().map(|&i| model.params[i].layout.numel()).sum();
        let med = median(total.clone());
        println!(
            "{label:<14} {:>6} {:>14} {:>12} {:>12} {:>12} {:>10} {:>11.2}",
            idx.len(),
            elements,
            ms(median(per_run(&|t| t.normalise))),
            ms(median(per_run(&|t| t.aggregate))),
            ms(med),
            ms(total.iter().min().copied().unwrap_or_default()),
            elements as f64 / med.as_secs_f64().max(1e-12) / 1e9
        );
    };
    for shape in &order {
        let label = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        row(label, &groups[shape]);
    }
    println!("{}", "-".repeat(header.len()));
    row("total".into(), &(0..model.params.len()).collect::<Vec<_>>());
}

/// How `bench gather` and `bench window` make their peers' gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Synthesis {
    /// Random dense gradients through the miner-side compressor ([`synthesize_peer`]): the slots a real top-k
    /// picks. A minute or more per peer of an 8 B model on two cores.
    Dct,
    /// Random top-k slots and values drawn directly ([`random_peer`]): the same shapes, sizes and cost to gather,
    /// check and aggregate, in about a second per peer at any model size.
    Random,
}

/// Peer `p`'s compressed gradient drawn directly: per block, `k` distinct slots in ascending order (as a miner's
/// top-k) and values in [-1, 1), seeded per (peer, parameter, run of blocks) so that every run sees the same peers.
/// No dense gradient and no transform: for models whose compression would dominate a benchmark's set-up.
pub(crate) fn random_peer(model: &ModelSpec, p: usize, seed: u64) -> PeerData {
    const BLOCKS_PER_TASK: usize = 4096;
    model
        .params
        .iter()
        .enumerate()
        .map(|(pi, param)| {
            let l = &param.layout;
            let (k, totalk) = (l.k(), l.totalk());
            let (mut idxs, mut vals) = (vec![0i16; l.sparse_len()], vec![0f32; l.sparse_len()]);
            idxs.par_chunks_mut(k * BLOCKS_PER_TASK)
                .zip(vals.par_chunks_mut(k * BLOCKS_PER_TASK))
                .enumerate()
                .for_each(|(t, (ti, tv))| {
                    // A different stream from synthesize_peer's for the same coordinates.
                    let mut rng = Xoshiro256PlusPlus::seed_from_u64(stream_seed(!seed, p, pi, t));
                    for (bi, bv) in ti.chunks_mut(k).zip(tv.chunks_mut(k)) {
                        let mut n = 0;
                        while n < k {
                            let slot = rng.random_range(0..totalk) as i16;
                            if !bi[..n].contains(&slot) {
                                bi[n] = slot;
                                n += 1;
                            }
                        }
                        bi.sort_unstable();
                        bv.iter_mut().for_each(|v| *v = rng.random::<f32>() * 2.0 - 1.0);
                    }
                });
            (idxs, vals)
        })
        .collect()
}
