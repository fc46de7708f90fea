//! Selection weights, as properties every backend must hold bit for bit (each check written once, instantiated for
//! the CPU, wgpu, and CUDA where a device is present; see `per_backend!` at the end):
//!
//! * weight 0 ≡ the peer left out;
//! * weight 2 ≡ the same file listed twice (exact when the doubled peer comes first, where both sums start at
//!   exactly `2v`: later in the order `fma(2, v, s)` rounds once where `s + v + v` rounds twice, so the two may
//!   differ in the last bit, and the check there is on the decoded values' closeness);
//! * every weight the same power of two ≡ every weight 1.0 (sums and weight sums scale exactly);
//! * a slot touched only by peers of weight 0 stays exactly 0 (never NaN: `0 / 0` is never computed);
//! * hostile weights (NaN, ±∞, negative, below 2^-20, above 2^20) are refused with the same error everywhere.

use aggregator_kernels::{Backend, Contribution, Cpu, KernelError, ParamLayout, PeerSparse};
use common::random_peers;

mod common;

/// The peers `order` (indices into `raw`) at `weights`, normalised as the window step does.
fn contributions<'a>(
    layout: &ParamLayout,
    raw: &'a [(Vec<i16>, Vec<f32>)],
    bufs: &'a mut [Vec<f32>],
    order: &[usize],
    weights: &[f32],
) -> Vec<Contribution<'a>> {
    let normalised: Vec<PeerSparse<'a>> = raw
        .iter()
        .zip(bufs.iter_mut())
        .map(|((i, v), buf)| PeerSparse::new(layout, i, v).unwrap().normalised(buf))
        .collect();
    order
        .iter()
        .zip(weights)
        .map(|(&p, &weight)| Contribution {
            sparse: normalised[p],
            weight,
        })
        .collect()
}

/// Packed bits, decoded values and scatter-mean coefficients of one aggregation.
struct Run {
    packed: Vec<u8>,
    decoded: Vec<f32>,
    dense: Vec<f32>,
}

fn run(b: &dyn Backend, layout: &ParamLayout, peers: &[Contribution]) -> Run {
    let mut packed = vec![0u8; layout.packed_len()];
    let mut decoded = vec![f32::NAN; layout.numel()];
    let mut dense = vec![f32::NAN; layout.n_blocks() * layout.totalk()];
    b.aggregate(layout, peers, &mut packed).unwrap();
    b.aggregate_decoded(layout, peers, &mut decoded).unwrap();
    b.scatter_mean(layout, peers, &mut dense).unwrap();
    Run { packed, decoded, dense }
}

fn same_bits(a: &Run, b: &Run, what: &str) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(a.packed, b.packed, "{what}: packed bits");
    assert!(bits(&a.decoded) == bits(&b.decoded), "{what}: decoded values");
    assert!(bits(&a.dense) == bits(&b.dense), "{what}: scatter-mean coefficients");
}

const SHAPES: [&[usize]; 5] = [&[64, 64], &[96, 100], &[67, 320], &[2048], &[31]];

fn zero_weight_is_left_out(b: &dyn Backend) {
    for (s, shape) in SHAPES.iter().enumerate() {
        let layout = ParamLayout::new(shape, 64, 32).unwrap();
        let raw = random_peers(&layout, 4, 10 + s as u64);
        let mut bufs = vec![Vec::new(); 4];
        let with = run(
            b,
            &layout,
            &contributions(&layout, &raw, &mut bufs, &[0, 1, 2, 3], &[1.0, 0.0, 0.5, 0.0]),
        );
        let mut bufs = vec![Vec::new(); 4];
        let without = run(
            b,
            &layout,
            &contributions(&layout, &raw, &mut bufs, &[0, 2], &[1.0, 0.5]),
        );
        same_bits(&with, &without, &format!("{shape:?}: weight 0 vs left out"));
    }
}

fn weight_two_is_listed_twice(b: &dyn Backend) {
    for (s, shape) in SHAPES.iter().enumerate() {
        let layout = ParamLayout::new(shape, 64, 32).unwrap();
        let raw = random_peers(&layout, 3, 20 + s as u64);
        let mut bufs = vec![Vec::new(); 3];
        let doubled = run(
            b,
            &layout,
            &contributions(&layout, &raw, &mut bufs, &[0, 1, 2], &[2.0, 1.0, 1.0]),
        );
        let mut bufs = vec![Vec::new(); 3];
        let twice = run(
            b,
            &layout,
            &contributions(&layout, &raw, &mut bufs, &[0, 0, 1, 2], &[1.0; 4]),
        );
        same_bits(
            &doubled,
            &twice,
            &format!("{shape:?}: weight 2 first vs listed twice first"),
        );
        // Later in the order: the same up to the last bit of each sum.
        let mut bufs = vec![Vec::new(); 3];
        let late = run(
            b,
            &layout,
            &contributions(&layout, &raw, &mut bufs, &[1, 0, 2], &[1.0, 2.0, 1.0]),
        );
        let mut bufs = vec![Vec::new(); 3];
        let late_twice = run(
            b,
            &layout,
            &contributions(&layout, &raw, &mut bufs, &[1, 0, 0, 2], &[1.0; 4]),
        );
        // (relative to the largest coefficient: a slot whose sum cancels keeps its absolute rounding error)
        let scale = late.dense.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in late.dense.iter().zip(&late_twice.dense).enumerate() {
            assert!(
                (x - y).abs() <= 4.0 * f32::EPSILON * scale,
                "{shape:?}: coefficient {i}: {x} vs {y}"
            );
        }
    }
}

fn equal_powers_of_two_are_all_ones(b: &dyn Backend) {
    for (s, shape) in SHAPES.iter().enumerate() {
        let layout = ParamLayout::new(shape, 64, 32).unwrap();
        let raw = random_peers(&layout, 5, 30 + s as u64);
        let mut bufs = vec![Vec::new(); 5];
        let ones = run(
            b,
            &layout,
            &contributions(&layout, &raw, &mut bufs, &[0, 1, 2, 3, 4], &[1.0; 5]),
        );
        for w in [2.0f32, 0.25, 1024.0, 1.0 / 1024.0, 1048576.0, 1.0 / 1048576.0] {
            let mut bufs = vec![Vec::new(); 5];
            let scaled = run(
                b,
                &layout,
                &contributions(&layout, &raw, &mut bufs, &[0, 1, 2, 3, 4], &[w; 5]),
            );
            same_bits(&ones, &scaled, &format!("{shape:?}: all weights {w} vs all 1.0"));
        }
    }
}

fn zero_weight_slots_stay_zero(b: &dyn Backend) {
    for (s, shape) in SHAPES.iter().enumerate() {
        let layout = ParamLayout::new(shape, 64, 32).unwrap();
        let raw = random_peers(&layout, 2, 40 + s as u64);
        let totalk = layout.totalk();
        // The slots peer 1 (weight 1) touches; every other slot is touched by peer 0 (weight 0) or by nobody.
        let mut touched = vec![false; layout.n_blocks() * totalk];
        for (e, &i) in raw[1].0.iter().enumerate() {
            touched[(e / layout.k()) * totalk + i as usize] = true;
        }
        let mut bufs = vec![Vec::new(); 2];
        let r = run(
            b,
            &layout,
            &contributions(&layout, &raw, &mut bufs, &[0, 1], &[0.0, 1.0]),
        );
        for (slot, (&v, &t)) in r.dense.iter().zip(&touched).enumerate() {
            if !t {
                assert!(v == 0.0 && v.is_sign_positive(), "{shape:?}: slot {slot} is {v}");
            }
        }
        assert!(
            r.decoded.iter().all(|v| v.is_finite()),
            "{shape:?}: decoded values are finite"
        );
        // Every peer at weight 0: everything is 0, as with no peers at all.
        let mut bufs = vec![Vec::new(); 2];
        let none = run(
            b,
            &layout,
            &contributions(&layout, &raw, &mut bufs, &[0, 1], &[0.0, 0.0]),
        );
        assert!(none.dense.iter().all(|v| *v == 0.0), "{shape:?}: all-zero weights");
        assert!(
            none.packed.iter().all(|v| *v == 0),
            "{shape:?}: all-zero weights, packed"
        );
    }
}

fn hostile_weights_are_refused(b: &dyn Backend) {
    let layout = ParamLayout::new(&[64, 64], 64, 32).unwrap();
    let raw = random_peers(&layout, 2, 50);
    for w in [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -1.0,
        -0.5e-6,
        1e-7,
        2e6,
        f32::MIN_POSITIVE,
    ] {
        let mut bufs = vec![Vec::new(); 2];
        let peers = contributions(&layout, &raw, &mut bufs, &[0, 1], &[1.0, w]);
        let mut out = vec![0u8; layout.packed_len()];
        let err = b.aggregate(&layout, &peers, &mut out).unwrap_err();
        assert!(
            matches!(err, KernelError::BadWeight { peer: 1, .. }),
            "weight {w}: {err}"
        );
        // (as text: a NaN weight is not equal to itself)
        let cpu = Cpu::new().aggregate(&layout, &peers, &mut out).unwrap_err();
        assert_eq!(err.to_string(), cpu.to_string());
    }
}

common::per_backend!(
    cpu;
    zero_weight_is_left_out,
    weight_two_is_listed_twice,
    equal_powers_of_two_are_all_ones,
    zero_weight_slots_stay_zero,
    hostile_weights_are_refused
);
