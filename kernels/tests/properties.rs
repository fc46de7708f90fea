//! Property tests of the numeric core: round trips, determinism (threads and ISA), scatter-mean semantics, and
//! rejection of hostile inputs.

use aggregator_kernels::{Contribution, Cpu, Isa, KernelError, ParamLayout, PeerSparse, pack_signs, unpack_signs};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

fn random_vec(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// Shapes with power-of-two, composite, prime and tiny dimensions, 1-D and 2-D.
fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        (1usize..400).prop_map(|l| vec![l]),
        (1usize..200, 1usize..200).prop_map(|(r, c)| vec![r, c]),
        prop::sample::select(vec![64usize, 128, 96, 100, 48, 50, 67, 192]).prop_flat_map(|r| {
            prop::sample::select(vec![64usize, 128, 96, 100, 48, 50, 67, 320]).prop_map(move |c| vec![r, c])
        }),
    ]
}

/// `n` peers compressed from random parameters by the miner-side code.
fn peers(cpu: &Cpu, layout: &ParamLayout, n: usize, seed: u64) -> Vec<(Vec<i16>, Vec<f32>)> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let x = random_vec(&mut rng, layout.numel());
            let (mut i, mut v) = (vec![0i16; layout.sparse_len()], vec![0f32; layout.sparse_len()]);
            cpu.compress(layout, &x, &mut i, &mut v).unwrap();
            (i, v)
        })
        .collect()
}

fn normalised<'a>(
    layout: &ParamLayout,
    raw: &'a [(Vec<i16>, Vec<f32>)],
    bufs: &'a mut [Vec<f32>],
) -> Vec<Contribution<'a>> {
    raw.iter()
        .zip(bufs.iter_mut())
        .map(|((i, v), buf)| Contribution::new(PeerSparse::new(layout, i, v).unwrap().normalised(buf)))
        .collect()
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn decode_inverts_encode(shape in shape(), seed in any::<u64>()) {
        let layout = ParamLayout::new(&shape, 64, 32).unwrap();
        let x = random_vec(&mut Xoshiro256PlusPlus::seed_from_u64(seed), layout.numel());
        let cpu = Cpu::new();
        let mut coeffs = vec![0f32; layout.n_blocks() * layout.totalk()];
        cpu.encode(&layout, &x, &mut coeffs).unwrap();
        let mut back = vec![0f32; layout.numel()];
        cpu.decode(&layout, &coeffs, &mut back).unwrap();
        for (i, (a, b)) in x.iter().zip(&back).enumerate() {
            prop_assert!((a - b).abs() <= 1e-5, "{shape:?} element {i}: {a} became {b}");
        }
    }

    #[test]
    fn pack_unpack_round_trip(values in prop::collection::vec(any::<f32>(), 0..300)) {
        let mut packed = vec![0u8; values.len().div_ceil(8)];
        pack_signs(&values, &mut packed).unwrap();
        if values.len() % 8 != 0 {
            prop_assert_eq!(packed.last().unwrap() >> (values.len() % 8), 0, "padding bits are 0");
        }
        let mut out = vec![0f32; values.len()];
        unpack_signs(&packed, &mut out).unwrap();
        for (v, u) in values.iter().zip(&out) {
            prop_assert_eq!(*u, if *v > 0.0 { 1.0 } else { -1.0 });
        }
    }

    #[test]
    fn bits_do_not_depend_on_threads_or_isa(shape in shape(), n in 1usize..6, seed in any::<u64>()) {
        let layout = ParamLayout::new(&shape, 64, 32).unwrap();
        let cpu = Cpu::new();
        let raw = peers(&cpu, &layout, n, seed);
        let mut bufs = vec![Vec::new(); n];
        let contributions = normalised(&layout, &raw, &mut bufs);
        let run = |cpu: &Cpu, threads| {
            in_pool(threads, || {
                let mut out = vec![0u8; layout.packed_len()];
                cpu.aggregate(&layout, &contributions, &mut out).unwrap();
                out
            })
        };
        let reference = run(&cpu, 1);
        prop_assert_eq!(&run(&cpu, 2), &reference);
        prop_assert_eq!(&run(&cpu, 3), &reference);
        // Every ISA this machine has (the others fall back to one it has), on the strip path and on the row-pass
        // path it replaced; the decoded values before the sign, bit for bit.
        let decoded = |cpu: &Cpu| {
            let mut out = vec![0f32; layout.numel()];
            cpu.aggregate_decoded(&layout, &contributions, &mut out).unwrap();
            out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        let values = decoded(&cpu);
        for isa in [Isa::Baseline, Isa::Avx2Fma, Isa::Avx512] {
            for other in [Cpu::with_isa(isa), Cpu::with_isa(isa).without_strips()] {
                let name = other.isa().name();
                prop_assert_eq!(&run(&other, 2), &reference, "{} gives the same bits", name);
                prop_assert!(decoded(&other) == values, "{} gives the same decoded values", name);
            }
        }
    }

    #[test]
    fn blocks_taller_than_a_strip_take_the_row_path_with_the_same_bits(
        rows in prop::sample::select(vec![128usize, 96, 256]), cols in 1usize..80, n in 1usize..4, seed in any::<u64>()
    ) {
        // A target chunk of 256 gives blocks up to 256 rows tall: past the strip path's 64.
        let layout = ParamLayout::new(&[rows, cols], 256, 32).unwrap();
        let cpu = Cpu::new();
        let raw = peers(&cpu, &layout, n, seed);
        let mut bufs = vec![Vec::new(); n];
        let contributions = normalised(&layout, &raw, &mut bufs);
        let run = |cpu: &Cpu| {
            let mut out = vec![0f32; layout.numel()];
            cpu.aggregate_decoded(&layout, &contributions, &mut out).unwrap();
            out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        let reference = run(&cpu);
        prop_assert!(run(&cpu.clone().without_strips()) == reference);
        prop_assert!(run(&Cpu::with_isa(Isa::Baseline)) == reference);
    }

    #[test]
    fn fused_path_equals_decode_of_scatter_mean(shape in shape(), n in 1usize..5, seed in any::<u64>()) {
        let layout = ParamLayout::new(&shape, 64, 32).unwrap();
        let cpu = Cpu::new();
        let raw = peers(&cpu, &layout, n, seed);
        let mut bufs = vec![Vec::new(); n];
        let contributions = normalised(&layout, &raw, &mut bufs);
        let mut dense = vec![0f32; layout.n_blocks() * layout.totalk()];
        cpu.scatter_mean(&layout, &contributions, &mut dense).unwrap();
        let (mut a, mut b) = (vec![0f32; layout.numel()], vec![0f32; layout.numel()]);
        cpu.decode(&layout, &dense, &mut a).unwrap();
        cpu.aggregate_decoded(&layout, &contributions, &mut b).unwrap();
        prop_assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        let (mut p, mut q) = (vec![0u8; layout.packed_len()], vec![0u8; layout.packed_len()]);
        pack_signs(&a, &mut p).unwrap();
        cpu.aggregate(&layout, &contributions, &mut q).unwrap();
        prop_assert_eq!(p, q);
    }
}

#[test]
fn zero_and_nan_pack_as_zero() {
    let v = [
        0.0,
        -0.0,
        f32::NAN,
        -f32::NAN,
        f32::MIN_POSITIVE / 4.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-45,
    ];
    let mut packed = [0u8; 2];
    pack_signs(&v, &mut packed).unwrap();
    assert_eq!(packed, [0b0101_0000, 0b0000_0001]);
}

#[test]
fn scatter_mean_averages_over_the_entries_that_chose_a_slot() {
    // 1-D [16]: one block of 16 coefficients, k = 4. Peer 0 repeats index 3; peer 1 shares index 3 and 5.
    let layout = ParamLayout::new(&[16], 64, 4).unwrap();
    let (i0, v0) = (vec![3i16, 3, 5, 9], vec![1.0f32, 2.0, 4.0, 8.0]);
    let (i1, v1) = (vec![3i16, 5, 0, 15], vec![6.0f32, -4.0, 0.5, -0.25]);
    let peers = [
        Contribution::new(PeerSparse::new(&layout, &i0, &v0).unwrap()),
        Contribution::new(PeerSparse::new(&layout, &i1, &v1).unwrap()),
    ];
    let mut dense = vec![f32::NAN; 16];
    Cpu::new().scatter_mean(&layout, &peers, &mut dense).unwrap();
    let mut want = vec![0f32; 16];
    want[3] = (1.0 + 2.0 + 6.0) / 3.0;
    want[5] = 0.0;
    want[9] = 8.0;
    want[0] = 0.5;
    want[15] = -0.25;
    assert_eq!(dense, want);
    // Weights: peer 1 counts three times as much as peer 0.
    let weighted = [
        Contribution {
            weight: 1.0,
            ..peers[0]
        },
        Contribution {
            weight: 3.0,
            ..peers[1]
        },
    ];
    Cpu::new().scatter_mean(&layout, &weighted, &mut dense).unwrap();
    assert_eq!(dense[3], (1.0 + 2.0 + 3.0 * 6.0) / 5.0);
    assert_eq!(dense[5], (4.0 - 3.0 * 4.0) / 4.0);
    // Weight 0 leaves a peer out entirely.
    let dropped = [
        peers[0],
        Contribution {
            weight: 0.0,
            ..peers[1]
        },
    ];
    Cpu::new().scatter_mean(&layout, &dropped, &mut dense).unwrap();
    assert_eq!((dense[0], dense[3], dense[15]), (0.0, 1.5, 0.0));
}

#[test]
fn spec_full_pipeline_golden_vector() {
    // Spec §3.2: 1-D [8], peers A and B, gather normalisation, scatter-mean, inverse DCT, pack → 0x0F.
    let layout = ParamLayout::new(&[8], 64, 8).unwrap();
    let a = (
        vec![0i16, 1, 2, 3, 4, 5, 6, 7],
        vec![1.0f32, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    );
    let b = (
        vec![7i16, 6, 5, 4, 3, 2, 1, 0],
        vec![0.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0],
    );
    let raw = [a, b];
    let mut bufs = vec![Vec::new(); 2];
    let peers = normalised(&layout, &raw, &mut bufs);
    let cpu = Cpu::new();
    let mut dense = vec![0f32; 8];
    cpu.scatter_mean(&layout, &peers, &mut dense).unwrap();
    assert!(
        (dense[0] - 0.223_606_8).abs() < 1e-6 && (dense[1] - 0.947_213_6).abs() < 1e-6,
        "{dense:?}"
    );
    let mut decoded = vec![0f32; 8];
    cpu.decode(&layout, &dense, &mut decoded).unwrap();
    let want = [0.5436, 0.4728, 0.3422, 0.1715, -0.0133, -0.1841, -0.3147, -0.3855];
    assert!(
        decoded.iter().zip(want).all(|(d, w)| (d - w).abs() < 1e-4),
        "{decoded:?}"
    );
    let mut packed = [0u8];
    cpu.aggregate(&layout, &peers, &mut packed).unwrap();
    assert_eq!(packed, [0x0f]);
    // 2-D [2, 4] with one coefficient at flat index 1 → 0x33, at flat index 4 → 0x0F.
    let layout = ParamLayout::new(&[2, 4], 64, 1).unwrap();
    for (idx, byte) in [(1i16, 0x33u8), (4, 0x0f)] {
        let (i, v) = (vec![idx], vec![1.0f32]);
        let p = [Contribution::new(PeerSparse::new(&layout, &i, &v).unwrap())];
        let mut packed = [0u8];
        cpu.aggregate(&layout, &p, &mut packed).unwrap();
        assert_eq!(packed, [byte], "coefficient {idx}");
    }
}

#[test]
fn hostile_inputs_are_errors_not_panics() {
    let layout = ParamLayout::new(&[64, 64], 64, 32).unwrap();
    let (mut idxs, mut vals) = (vec![0i16; 32], vec![0.5f32; 32]);
    assert!(matches!(
        PeerSparse::new(&layout, &idxs[..31], &vals),
        Err(KernelError::Length { field: "idxs", .. })
    ));
    idxs[7] = 4096;
    assert_eq!(
        PeerSparse::new(&layout, &idxs, &vals).unwrap_err(),
        KernelError::IndexOutOfRange {
            position: 7,
            value: 4096,
            totalk: 4096
        }
    );
    idxs[7] = -1;
    assert!(matches!(
        PeerSparse::new(&layout, &idxs, &vals),
        Err(KernelError::IndexOutOfRange { value: -1, .. })
    ));
    idxs[7] = 7;
    vals[11] = f32::NAN;
    assert!(matches!(
        PeerSparse::new(&layout, &idxs, &vals),
        Err(KernelError::NonFinite { position: 11, .. })
    ));
    vals[11] = f32::NEG_INFINITY;
    assert!(matches!(
        PeerSparse::new(&layout, &idxs, &vals),
        Err(KernelError::NonFinite { position: 11, .. })
    ));
    vals[11] = 1.0;
    let ok = PeerSparse::new(&layout, &idxs, &vals).unwrap();
    let cpu = Cpu::new();
    for weight in [f32::NAN, -1.0, f32::INFINITY, 1e-7, 2e6] {
        let mut out = vec![0u8; layout.packed_len()];
        let err = cpu
            .aggregate(&layout, &[Contribution { sparse: ok, weight }], &mut out)
            .unwrap_err();
        assert!(matches!(err, KernelError::BadWeight { peer: 0, .. }), "{err}");
    }
    // A peer checked against another layout (same entry count, larger blocks) is refused.
    let other = ParamLayout::new(&[64, 128], 128, 32).unwrap();
    let big = (vec![8000i16; other.sparse_len()], vec![1f32; other.sparse_len()]);
    let foreign = PeerSparse::new(&other, &big.0, &big.1).unwrap();
    let mut out = vec![0u8; layout.packed_len()];
    assert!(cpu.aggregate(&layout, &[Contribution::new(foreign)], &mut out).is_err());
    assert!(
        cpu.aggregate(&layout, &[], &mut out[..1]).is_err(),
        "wrong output length"
    );
    // No peers at all: every bit is 0.
    out.fill(0xff);
    cpu.aggregate(&layout, &[], &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 0));
}
