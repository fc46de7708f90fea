//! The GPU backends against the CPU path, bit for bit. Each check is written once and instantiated per backend
//! (cubecl's `testgen` style, see `per_backend!` at the end): wgpu runs everywhere (lavapipe in CI), CUDA where a
//! device is present (elsewhere its instances say so and return).

use aggregator_gpu::AnyGpu;
use aggregator_kernels::{Backend, Contribution, Cpu, KernelError, ParamLayout, PeerSparse};
use aggregator_model::ModelSpec;
use common::random_peers;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

mod common;

/// Normalised contributions with the given weights (Templar's gather normalisation, as the window step does).
fn contributions<'a>(
    layout: &ParamLayout,
    raw: &'a [(Vec<i16>, Vec<f32>)],
    bufs: &'a mut [Vec<f32>],
    weights: &[f32],
) -> Vec<Contribution<'a>> {
    raw.iter()
        .zip(bufs.iter_mut())
        .zip(weights)
        .map(|(((i, v), buf), &weight)| Contribution {
            sparse: PeerSparse::new(layout, i, v).unwrap().normalised(buf),
            weight,
        })
        .collect()
}

fn mismatched_bits(a: &[u8], b: &[u8]) -> u64 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones() as u64).sum()
}

fn mismatched_floats(a: &[f32], b: &[f32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count()
}

/// Every backend entry point on one parameter: packed bits, decoded floats, scatter-mean and dense decode must all
/// equal the CPU path's bits.
fn compare(gpu: &AnyGpu, layout: &ParamLayout, peers: &[Contribution], what: &str) {
    let cpu = Cpu::new();
    let (mut want, mut got) = (vec![0u8; layout.packed_len()], vec![0u8; layout.packed_len()]);
    cpu.aggregate(layout, peers, &mut want).unwrap();
    gpu.aggregate(layout, peers, &mut got).unwrap();
    assert_eq!(mismatched_bits(&want, &got), 0, "{what}: packed bits differ");

    let (mut want, mut got) = (vec![0f32; layout.numel()], vec![1f32; layout.numel()]);
    cpu.aggregate_decoded(layout, peers, &mut want).unwrap();
    gpu.aggregate_decoded(layout, peers, &mut got).unwrap();
    assert_eq!(mismatched_floats(&want, &got), 0, "{what}: decoded values differ");

    let n = layout.n_blocks() * layout.totalk();
    let (mut dense, mut got_dense) = (vec![0f32; n], vec![1f32; n]);
    cpu.scatter_mean(layout, peers, &mut dense).unwrap();
    gpu.scatter_mean(layout, peers, &mut got_dense).unwrap();
    assert_eq!(mismatched_floats(&dense, &got_dense), 0, "{what}: scatter-mean differs");

    let (mut want, mut got) = (vec![0f32; layout.numel()], vec![1f32; layout.numel()]);
    cpu.decode(layout, &dense, &mut want).unwrap();
    gpu.decode(layout, &dense, &mut got).unwrap();
    assert_eq!(mismatched_floats(&want, &got), 0, "{what}: decode differs");
}

/// Power-of-two, composite, prime and tiny shapes, 1-D and 2-D, with columns that make row segments straddle
/// packed words; 1, 3 and 15 peers; equal and unequal weights.
fn random_shapes(gpu: &AnyGpu) {
    let shapes: [&[usize]; 12] = [
        &[64, 64],
        &[128, 192],
        &[96, 100],
        &[50, 48],
        &[67, 320],
        &[3, 7],
        &[1, 1],
        &[192, 33],
        &[2048],
        &[100],
        &[31],
        &[256, 130],
    ];
    for (s, shape) in shapes.iter().enumerate() {
        let layout = ParamLayout::new(shape, 64, 32).unwrap();
        for (n, weights) in [
            (1, vec![1.0]),
            (3, vec![1.0, 1.0, 1.0]),
            (15, vec![1.0; 15]),
            (3, vec![0.25, 1.5, 0.0]),
        ] {
            let raw = random_peers(&layout, n, 1000 * s as u64 + n as u64);
            let mut bufs = vec![Vec::new(); n];
            let peers = contributions(&layout, &raw, &mut bufs, &weights);
            compare(
                gpu,
                &layout,
                &peers,
                &format!("{shape:?}, {n} peers, weights {weights:?}"),
            );
        }
    }
}

/// Every distinct parameter shape of `templar-1b` (its real layouts: 64x64 blocks, top-k 32), 15 peers of random
/// sparse gradients: the packed bits equal the CPU path's.
fn templar_1b_shapes(gpu: &AnyGpu) {
    let model = ModelSpec::preset("templar-1b").unwrap();
    let mut seen: Vec<&ParamLayout> = Vec::new();
    for p in &model.params {
        if seen.iter().any(|l| l.shape() == p.layout.shape()) {
            continue;
        }
        seen.push(&p.layout);
        let layout = &p.layout;
        let raw = random_peers(layout, 15, layout.numel() as u64);
        let mut bufs = vec![Vec::new(); 15];
        let peers = contributions(layout, &raw, &mut bufs, &[1.0; 15]);
        let (mut want, mut got) = (vec![0u8; layout.packed_len()], vec![0u8; layout.packed_len()]);
        Cpu::new().aggregate(layout, &peers, &mut want).unwrap();
        gpu.aggregate(layout, &peers, &mut got).unwrap();
        let bad = mismatched_bits(&want, &got);
        println!(
            "{} {:?}: {} bits, {bad} mismatched",
            p.name,
            layout.shape(),
            layout.numel()
        );
        assert_eq!(bad, 0, "{}: {bad} of {} bits differ", p.name, layout.numel());
    }
    assert!(seen.len() >= 5, "templar-1b has {} distinct shapes", seen.len());
}

/// The shared golden vectors from the reference implementation, through the GPU backend: from `VECTORS` where set
/// (`scripts/gpu-check` sets it, also where the executable runs away from its checkout), else `../shared/vectors`.
fn shared_vectors(gpu: &AnyGpu) {
    let dir = std::env::var_os("VECTORS").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"),
        std::path::PathBuf::from,
    );
    let outcomes = aggregator_vectors::check_dir(&dir, gpu).expect("shared vectors load");
    assert!(outcomes.len() >= 40, "only {} cases", outcomes.len());
    let failed = aggregator_vectors::failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} failing cases:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// Hostile inputs get the same errors as on the CPU, and the device stays usable after them.
fn rejects_like_the_cpu(gpu: &AnyGpu) {
    let layout = ParamLayout::new(&[64, 64], 64, 32).unwrap();
    let raw = random_peers(&layout, 2, 7);
    let mut bufs = vec![Vec::new(); 2];
    let peers = contributions(&layout, &raw, &mut bufs, &[1.0, -1.0]);
    let mut out = vec![0u8; layout.packed_len()];
    let cpu_err = Cpu::new().aggregate(&layout, &peers, &mut out).unwrap_err();
    let gpu_err = gpu.aggregate(&layout, &peers, &mut out).unwrap_err();
    assert_eq!(cpu_err, gpu_err);
    assert!(matches!(gpu_err, KernelError::BadWeight { peer: 1, .. }));
    let mut short = vec![0u8; 3];
    assert!(matches!(
        gpu.aggregate(&layout, &peers[..1], &mut short),
        Err(KernelError::Length { field: "packed", .. })
    ));
    // No peers at all: every bit is 0, as on the CPU.
    gpu.aggregate(&layout, &[], &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 0));
    compare(gpu, &layout, &peers[..1], "after errors");
}

/// Two runs give the same bits (no atomics on floats, fixed orders).
fn deterministic(gpu: &AnyGpu) {
    let layout = ParamLayout::new(&[256, 512], 64, 32).unwrap();
    let raw = random_peers(&layout, 15, 99);
    let mut bufs = vec![Vec::new(); 15];
    let peers = contributions(&layout, &raw, &mut bufs, &[1.0; 15]);
    let (mut a, mut b) = (vec![0u8; layout.packed_len()], vec![0u8; layout.packed_len()]);
    gpu.aggregate(&layout, &peers, &mut a).unwrap();
    gpu.aggregate(&layout, &peers, &mut b).unwrap();
    assert_eq!(a, b);
}

/// Unpacking on the device equals the CPU's, including a tail that ends inside a byte and inside a word.
fn unpacks_like_the_cpu(gpu: &AnyGpu) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    for n in [1usize, 7, 8, 31, 32, 33, 1000, 65_537] {
        let packed: Vec<u8> = (0..n.div_ceil(8)).map(|_| rng.random()).collect();
        let (mut want, mut got) = (vec![0f32; n], vec![0f32; n]);
        aggregator_kernels::unpack_signs(&packed, &mut want).unwrap();
        gpu.unpack_signs(&packed, &mut got).unwrap();
        assert_eq!(mismatched_floats(&want, &got), 0, "{n} elements");
    }
    let mut out = vec![0f32; 9];
    assert!(matches!(
        gpu.unpack_signs(&[0u8; 1], &mut out),
        Err(KernelError::Length { field: "packed", .. })
    ));
}

common::per_backend!(
    random_shapes,
    templar_1b_shapes,
    shared_vectors,
    rejects_like_the_cpu,
    deterministic,
    unpacks_like_the_cpu
);
