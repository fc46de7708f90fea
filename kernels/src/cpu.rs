//! The CPU backend: the reference and production path of the numeric core.
//!
//! Work is split by *block rows* (all blocks of `h` consecutive parameter rows), which own disjoint ranges of the
//! output, so rayon spreads them over the cores without locks. A block never depends on another, and within a block
//! every sum runs in a fixed order, so the output bits do not depend on the thread count.
//!
//! Each block is inverted a strip of columns at a time with the strip's columns in registers ([`crate::strip`]);
//! blocks taller than [`strip::MAX_H`] take the row-pass path (`stage1_rows` and `stage2`). The hot loops are compiled
//! three times: for the baseline ISA (plain arrays, [`strip::Portable`]), with AVX2 + FMA and with AVX-512VL (both
//! `__m256` intrinsics, [`strip::Avx`]; the latter with 32 vector registers), picked at run time; strips are 8 columns
//! wide on all three. All compute correctly rounded fused multiply-adds (`f32::mul_add`, in hardware or in libm; FMA
//! instructions) in the same order, so they give the same bits.

use std::sync::Arc;

use rayon::prelude::*;

use crate::fastdct::{dct2_rows, dct3_rows};
use crate::pack::{or_bits, sign_bits};
use crate::plan::{Axis, Plan, PlanCache};
use crate::strip::{self, Arch, Coefficients, MAX_H, Portable};
use crate::{Contribution, KernelError, ParamLayout, check_len};

/// Instruction set the CPU kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable code; fused multiply-adds go through libm when the target lacks them.
    Baseline,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// x86-64 with AVX-512F and AVX-512VL (and AVX2 and FMA): the AVX2 code with 32 vector registers instead of 16.
    /// Measured as fast as [`Isa::Avx2Fma`] on an AMD Zen 4 since the strip transform keeps its values in registers;
    /// kept for machines where the extra registers may still pay. (Strips of 16 columns in 512-bit registers were
    /// measured 3x slower on Zen 4, which splits them in two, so the strips stay 8 wide.)
    Avx512,
}

impl Isa {
    /// The best instruction set this machine supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
                return Isa::Avx512;
            }
            return Isa::Avx2Fma;
        }
        Isa::Baseline
    }
    /// Whether this machine can run `self`.
    pub fn is_supported(self) -> bool {
        matches!(
            (self, Self::detect()),
            (Isa::Baseline, _) | (Isa::Avx2Fma, Isa::Avx2Fma | Isa::Avx512) | (Isa::Avx512, Isa::Avx512)
        )
    }
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Avx512 => "avx512",
        }
    }
}

/// The CPU implementation of the numeric core. Cheap to clone; plans are shared.
#[derive(Debug, Clone)]
pub struct Cpu {
    isa: Isa,
    plans: Arc<PlanCache>,
    /// Whether blocks up to `strip::MAX_H` tall take the strip path (always, but for the tests that compare it with
    /// the row-pass path).
    strips: bool,
}

impl Default for Cpu {
    fn default() -> Self {
        Self::with_isa(Isa::detect())
    }
}

/// Per-thread working memory for one block shape.
struct Scratch {
    /// Per slot: `[sum of weight * value, sum of weights]`, side by side so that a scatter touches one cache line.
    acc: Vec<[f32; 2]>,
    mask: Vec<u64>,
    u: Vec<f32>,
    tmp: Vec<f32>,
    keys: Vec<u64>,
    coefs: Coefficients,
}

impl Scratch {
    fn new(plan: &Plan) -> Self {
        let totalk = plan.h * plan.w;
        Self {
            acc: vec![[0.0; 2]; totalk],
            mask: vec![0; totalk.div_ceil(64)],
            // `h * wp` for the strip path's padded rows (at least `totalk`).
            u: vec![0.0; plan.h * plan.wp],
            tmp: vec![0.0; totalk],
            keys: Vec::with_capacity(totalk),
            coefs: Coefficients::new(plan.h, totalk),
        }
    }
}

/// `y = fma(a, x, y)` element-wise.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let x = &x[..y.len()];
    for i in 0..y.len() {
        y[i] = a.mul_add(x[i], y[i]);
    }
}

/// `out = sum_r coef(r) * rows[r]` over the rows of `rows` (each `out.len()` long) in ascending `r`, from `+0`: the
/// dense transform steps, all with the same order of operations.
#[inline(always)]
fn combine_rows(out: &mut [f32], rows: &[f32], coef: impl Fn(usize) -> f32) {
    out.fill(0.0);
    for (r, row) in rows.chunks_exact(out.len()).enumerate() {
        axpy(coef(r), row, out);
    }
}

/// Scatter of block `b` of every peer into the accumulators: per slot, `sum = fma(weight, v, sum)`,
/// `wsum += weight`, in peer order, then entry order (Templar's concatenation order).
#[inline(always)]
fn scatter(peers: &[Contribution], b: usize, k: usize, s: &mut Scratch) {
    // The peers' entries are read once, from as many streams as there are peers (two each): more than the hardware
    // prefetchers follow, so the scatter waited on memory. Ask for the block `PREFETCH` ahead of this one.
    const PREFETCH: usize = 4;
    for p in peers {
        let (ix, vs) = (p.sparse.idxs(), p.sparse.vals());
        let ahead = (b + PREFETCH) * k;
        if ahead < ix.len() {
            prefetch(ix[ahead..].as_ptr().cast());
            prefetch(vs[ahead..].as_ptr().cast());
            prefetch(vs[ahead..].as_ptr().wrapping_add(16).cast());
        }
    }
    for p in peers {
        let (ix, vs) = (
            &p.sparse.idxs()[b * k..(b + 1) * k],
            &p.sparse.vals()[b * k..(b + 1) * k],
        );
        let (acc, mask) = (&mut s.acc[..], &mut s.mask[..]);
        for (&i, &v) in ix.iter().zip(vs) {
            let slot = i as usize;
            // Indices were checked against `totalk` (`PeerSparse::new`) and the peer against the layout (`usable`);
            // the scratch has `totalk` slots. Checked here only in debug builds: this loop is the scatter's hot path.
            debug_assert!(slot < acc.len() && slot >> 6 < mask.len());
            // SAFETY: `slot < totalk == acc.len()` and `slot >> 6 < totalk.div_ceil(64) == mask.len()`, as above.
            unsafe {
                let a = acc.get_unchecked_mut(slot);
                a[0] = p.weight.mul_add(v, a[0]);
                a[1] += p.weight;
                *mask.get_unchecked_mut(slot >> 6) |= 1u64 << (slot & 63);
            }
        }
    }
}

/// A hint to bring the cache line at `p` into the caches (nothing where there is no such instruction).
#[inline(always)]
fn prefetch(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not access memory architecturally; any address is allowed. SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Visits the touched slots of the accumulators in ascending order with their means, and resets them.
#[inline(always)]
fn drain_means(s: &mut Scratch, mut visit: impl FnMut(usize, f32)) {
    for wi in 0..s.mask.len() {
        let mut m = std::mem::take(&mut s.mask[wi]);
        while m != 0 {
            let slot = wi * 64 + m.trailing_zeros() as usize;
            m &= m - 1;
            let [sum, wsum] = std::mem::take(&mut s.acc[slot]);
            visit(slot, sum / wsum);
        }
    }
}

/// Stage-1 table row for coefficient row `kr`, column `l`.
#[inline(always)]
fn table_row(plan: &Plan, kr: usize, l: usize) -> &[f32] {
    let t = if kr == 0 { &plan.t_first } else { &plan.t_rest };
    &t[l * plan.w..(l + 1) * plan.w]
}

/// Where a block's coefficients come from.
trait Source: Sync {
    /// The non-zero coefficients of block `b` (zeros may be left in: `fma(0, t, acc)` is `acc` here), into
    /// `s.coefs`.
    fn coefficients(&self, plan: &Plan, b: usize, s: &mut Scratch);
    /// Block `b` for the strip path's stage 1: its coefficients in `s.coefs` (returns `false`), or, where the source
    /// can hand over the scatter's accumulators for [`strip::stage1_from_sums`] instead (64-wide blocks of peer
    /// contributions), those (returns `true`).
    #[inline(always)]
    fn strip_input(&self, plan: &Plan, b: usize, s: &mut Scratch) -> bool {
        self.coefficients(plan, b, s);
        false
    }
}

/// Dense coefficients (`xshape`), e.g. a decompressed gradient.
struct DenseSource<'a>(&'a [f32]);

impl Source for DenseSource<'_> {
    #[inline(always)]
    fn coefficients(&self, plan: &Plan, b: usize, s: &mut Scratch) {
        let (h, w) = (plan.h, plan.w);
        let block = &self.0[b * h * w..(b + 1) * h * w];
        let c = &mut s.coefs;
        let mut n = 0;
        for (slot, &d) in block.iter().enumerate() {
            // Skipping a zero is bit-identical to fma(0, t, acc): acc starts at +0 and never becomes -0.
            if d != 0.0 {
                c.slots[n] = slot as u32;
                c.vals[n] = d;
                n += 1;
            }
        }
        c.len = n;
        c.index_rows(w);
    }
}

/// The peers' sparse contributions, scatter-meaned on the fly.
struct PeerSource<'a> {
    peers: &'a [Contribution<'a>],
    k: usize,
}

impl Source for PeerSource<'_> {
    #[inline(always)]
    fn coefficients(&self, plan: &Plan, b: usize, s: &mut Scratch) {
        scatter(self.peers, b, self.k, s);
        let c = &mut s.coefs;
        let mut n = 0;
        for (wi, word) in s.mask.iter_mut().enumerate() {
            n = drain_word(word, wi * 64, &mut s.acc, c, n);
        }
        c.len = n;
        // The means, in a loop of their own that vectorises (one division per touched slot is the drain's cost).
        for (v, &d) in c.vals[..n].iter_mut().zip(&c.wsums[..n]) {
            *v /= d;
        }
        c.index_rows(plan.w);
    }
    #[inline(always)]
    fn strip_input(&self, plan: &Plan, b: usize, s: &mut Scratch) -> bool {
        if plan.w == 64 {
            scatter(self.peers, b, self.k, s);
            true
        } else {
            self.coefficients(plan, b, s);
            false
        }
    }
}

/// The touched slots of one mask word (slots `base..base + 64`) into `c` from entry `n` on, as `drain_means` walks
/// them (written out so that it inlines into the ISA-specific entry points); the accumulators are reset. Returns the
/// next entry.
#[inline(always)]
fn drain_word(word: &mut u64, base: usize, acc: &mut [[f32; 2]], c: &mut Coefficients, mut n: usize) -> usize {
    let mut m = std::mem::take(word);
    while m != 0 {
        let slot = base + m.trailing_zeros() as usize;
        m &= m - 1;
        let [sum, wsum] = std::mem::take(&mut acc[slot]);
        // Each touched slot once, so `n < totalk`, the arrays' length.
        debug_assert!(n < c.slots.len());
        // SAFETY: as above; the three arrays have `totalk` entries (`Coefficients::new`).
        unsafe {
            *c.slots.get_unchecked_mut(n) = slot as u32;
            *c.vals.get_unchecked_mut(n) = sum;
            *c.wsums.get_unchecked_mut(n) = wsum;
        }
        n += 1;
    }
    n
}

/// Stage 1 of the row-pass path: `U` (`h x w`) from the block's coefficients, a whole row per coefficient.
#[inline(always)]
fn stage1_rows(plan: &Plan, c: &Coefficients, u: &mut [f32]) {
    let w = plan.w;
    u.fill(0.0);
    for (kr, urow) in u.chunks_exact_mut(w).enumerate() {
        let (lo, hi) = (c.starts[kr], c.starts[kr + 1]);
        for (&slot, &v) in c.slots[lo..hi].iter().zip(&c.vals[lo..hi]) {
            axpy(v, table_row(plan, kr, slot as usize - kr * w), urow);
        }
    }
}

/// Stage 2 (height axis); returns the block's `h x w` result.
#[inline(always)]
fn stage2<'s>(plan: &Plan, u: &'s mut [f32], tmp: &'s mut [f32]) -> &'s [f32] {
    let (h, w) = (plan.h, plan.w);
    match &plan.height {
        Axis::Fast(tw) => {
            dct3_rows(u, tmp, h, w, tw);
            u
        }
        Axis::Dense(f) => {
            for (i, out) in tmp.chunks_exact_mut(w).enumerate() {
                combine_rows(out, u, |k| f[i * h + k]);
            }
            tmp
        }
    }
}

/// Where a block's decoded rows go.
trait Sink {
    /// Row `row` (relative to the task's first parameter row), starting at column `col0`.
    fn put(&mut self, row: usize, col0: usize, vals: &[f32]);
    /// The strip path's result for the block whose top-left element is `(row0, col0)` (task-relative): row `i` of
    /// the strip at block column `c0`, of which the first `n` lanes are columns of the block. Rows come in the order
    /// stage 2 finishes them, each once.
    fn strip_row<A: Arch>(&mut self, row0: usize, col0: usize, c0: usize, i: usize, v: A::V, n: usize);
    /// Called after the last strip of a block of `h` rows and `w` columns.
    fn end_block(&mut self, row0: usize, col0: usize, h: usize, w: usize);
}

/// Sign bits into the task's byte range (which starts on a byte boundary and is zeroed first).
struct PackSink<'o> {
    out: &'o mut [u8],
    cols: usize,
    /// The current block's sign bits on the strip path, a byte per strip row (strips are 8 columns wide): row `i`'s
    /// columns `8 j ..` in `bits[i * 8 * words + j]`, so row `i`'s columns `64 q ..` are the little-endian word at
    /// byte `8 (i * words + q)`. Every strip's byte is written whole for every block, so nothing is reset; bytes past
    /// the block's width stay zero.
    bits: Vec<u8>,
    words: usize,
}

impl<'o> PackSink<'o> {
    fn new(out: &'o mut [u8], cols: usize, plan: &Plan) -> Self {
        let words = plan.w.div_ceil(64);
        Self {
            out,
            cols,
            bits: vec![0; plan.h.min(MAX_H) * words * 8],
            words,
        }
    }
}

impl Sink for PackSink<'_> {
    #[inline(always)]
    fn put(&mut self, row: usize, col0: usize, vals: &[f32]) {
        let mut off = row * self.cols + col0;
        for chunk in vals.chunks(64) {
            or_bits(self.out, off, sign_bits(chunk), chunk.len());
            off += chunk.len();
        }
    }
    #[inline(always)]
    fn strip_row<A: Arch>(&mut self, _row0: usize, _col0: usize, c0: usize, i: usize, v: A::V, n: usize) {
        // A byte per strip row: a store, where or-ing shifted bits into a word was a read-modify-write.
        const { assert!(A::LANES == 8, "a strip's signs are one byte") };
        // Padding lanes hold +0 (zero table entries), which packs as 0; masked all the same.
        let keep = if n >= 8 { 0xff } else { (1u64 << n) - 1 };
        self.bits[i * 8 * self.words + c0 / 8] = (A::sign_bits(v) & keep) as u8;
    }
    #[inline(always)]
    fn end_block(&mut self, row0: usize, col0: usize, h: usize, w: usize) {
        for i in 0..h {
            for q in 0..self.words {
                let at = 8 * (i * self.words + q);
                let word = u64::from_le_bytes(self.bits[at..at + 8].try_into().expect("8 bytes"));
                or_bits(
                    self.out,
                    (row0 + i) * self.cols + col0 + 64 * q,
                    word,
                    (w - 64 * q).min(64),
                );
            }
        }
    }
}

/// Decoded values into the task's rows.
struct FloatSink<'o> {
    out: &'o mut [f32],
    cols: usize,
}

impl Sink for FloatSink<'_> {
    #[inline(always)]
    fn put(&mut self, row: usize, col0: usize, vals: &[f32]) {
        let start = row * self.cols + col0;
        self.out[start..start + vals.len()].copy_from_slice(vals);
    }
    #[inline(always)]
    fn strip_row<A: Arch>(&mut self, row0: usize, col0: usize, c0: usize, i: usize, v: A::V, n: usize) {
        let mut lanes = [0.0; 16];
        A::store(v, &mut lanes);
        self.put(row0 + i, col0 + c0, &lanes[..n]);
    }
    #[inline(always)]
    fn end_block(&mut self, _row0: usize, _col0: usize, _h: usize, _w: usize) {}
}

/// Geometry of a task: block rows `[by0, by1)` of a parameter with `bxn` blocks per row and `cols` columns.
#[derive(Clone, Copy)]
struct Rows {
    by0: usize,
    by1: usize,
    bxn: usize,
}

/// The inverse of block rows `rows`: strips of `A::LANES` columns where the block is at most `strip::MAX_H` tall (and
/// `strips`), else the row-pass path.
#[inline(always)]
fn inverse_body<A: Arch, const NV: usize, S: Source, K: Sink>(
    plan: &Plan,
    src: &S,
    rows: Rows,
    sink: &mut K,
    s: &mut Scratch,
    strips: bool,
) {
    let (h, w) = (plan.h, plan.w);
    let strips = strips && h <= MAX_H;
    let (mut y, mut t) = ([A::zero(); MAX_H], [A::zero(); MAX_H]);
    for by in rows.by0..rows.by1 {
        let row0 = (by - rows.by0) * h;
        for bx in 0..rows.bxn {
            let b = by * rows.bxn + bx;
            if strips {
                if src.strip_input(plan, b, s) {
                    strip::stage1_from_sums::<A, NV>(plan, &mut s.mask, &mut s.acc, &mut s.u);
                } else {
                    strip::stage1::<A, NV>(plan, &s.coefs, &mut s.u);
                }
                for c0 in (0..w).step_by(A::LANES) {
                    let mut out = ToSink {
                        sink: &mut *sink,
                        row0,
                        col0: bx * w,
                        c0,
                        n: A::LANES.min(w - c0),
                    };
                    strip::stage2::<A, _>(plan, &s.u, c0, &mut y, &mut t, &mut out);
                }
                sink.end_block(row0, bx * w, h, w);
            } else {
                src.coefficients(plan, b, s);
                let u = &mut s.u[..h * w];
                stage1_rows(plan, &s.coefs, u);
                let res = stage2(plan, u, &mut s.tmp);
                for i in 0..h {
                    sink.put(row0 + i, bx * w, &res[i * w..(i + 1) * w]);
                }
            }
        }
    }
}

/// A strip's rows into a sink (stage 2 hands them over as it finishes them, so a 64-row strip's values go from
/// registers to the sink without a store and reload).
struct ToSink<'k, K> {
    sink: &'k mut K,
    row0: usize,
    col0: usize,
    c0: usize,
    n: usize,
}

impl<A: Arch, K: Sink> strip::StripRows<A> for ToSink<'_, K> {
    #[inline(always)]
    fn row(&mut self, i: usize, v: A::V) {
        self.sink.strip_row::<A>(self.row0, self.col0, self.c0, i, v, self.n);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn inverse_avx2<S: Source, K: Sink>(
    plan: &Plan,
    src: &S,
    rows: Rows,
    sink: &mut K,
    s: &mut Scratch,
    strips: bool,
) {
    inverse_body::<strip::Avx, 8, S, K>(plan, src, rows, sink, s, strips)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn inverse_avx512<S: Source, K: Sink>(
    plan: &Plan,
    src: &S,
    rows: Rows,
    sink: &mut K,
    s: &mut Scratch,
    strips: bool,
) {
    inverse_body::<strip::Avx, 8, S, K>(plan, src, rows, sink, s, strips)
}

impl Cpu {
    fn inverse<S: Source, K: Sink>(&self, plan: &Plan, src: &S, rows: Rows, sink: &mut K, s: &mut Scratch) {
        match self.isa {
            // SAFETY: `Isa::Avx2Fma` and `Isa::Avx512` are only held by a `Cpu` on a machine that has their features
            // (run-time detection in `Isa::detect`, checked again by `Cpu::with_isa`).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { inverse_avx2(plan, src, rows, sink, s, self.strips) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { inverse_avx512(plan, src, rows, sink, s, self.strips) },
            _ => inverse_body::<Portable, 8, S, K>(plan, src, rows, sink, s, self.strips),
        }
    }
}

/// Forward 2-D block DCT of `a` (`h x w`, row-major) in place; `b` is scratch.
#[inline(always)]
fn forward_block(plan: &Plan, a: &mut [f32], b: &mut [f32]) {
    let (h, w) = (plan.h, plan.w);
    match &plan.height {
        Axis::Fast(tw) => dct2_rows(a, b, h, w, tw),
        Axis::Dense(f) => {
            for (k, out) in b.chunks_exact_mut(w).enumerate() {
                combine_rows(out, a, |i| f[i * h + k]);
            }
            a.copy_from_slice(b);
        }
    }
    match &plan.width {
        Axis::Fast(tw) => {
            transpose(a, b, h, w);
            dct2_rows(b, a, w, h, tw);
            transpose(b, a, w, h);
        }
        Axis::Dense(f) => {
            for (k, out) in b.chunks_exact_mut(w).enumerate() {
                combine_rows(out, f, |j| a[k * w + j]);
            }
            a.copy_from_slice(b);
        }
    }
    for (x, &sc) in a.iter_mut().zip(&plan.enc_scale) {
        *x *= sc;
    }
}

/// `dst[j * r + i] = src[i * c + j]` for an `r x c` source.
#[inline(always)]
fn transpose(src: &[f32], dst: &mut [f32], r: usize, c: usize) {
    for i in 0..r {
        for j in 0..c {
            dst[j * r + i] = src[i * c + j];
        }
    }
}

/// What the encoder emits per block.
enum EncodeOut<'o> {
    /// All coefficients (`xshape` order).
    Dense(&'o mut [f32]),
    /// Top-k by magnitude per block.
    TopK {
        idxs: &'o mut [i16],
        vals: &'o mut [f32],
        k: usize,
    },
}

#[inline(always)]
fn encode_body(plan: &Plan, x: &[f32], cols: usize, bxn: usize, out: &mut EncodeOut, s: &mut Scratch) {
    let (h, w) = (plan.h, plan.w);
    let totalk = h * w;
    for bx in 0..bxn {
        for i in 0..h {
            s.u[i * w..(i + 1) * w].copy_from_slice(&x[i * cols + bx * w..i * cols + (bx + 1) * w]);
        }
        let u = &mut s.u[..totalk];
        forward_block(plan, u, &mut s.tmp);
        match out {
            EncodeOut::Dense(d) => d[bx * totalk..(bx + 1) * totalk].copy_from_slice(u),
            EncodeOut::TopK { idxs, vals, k } => {
                let k = *k;
                // Key: |x| bits (monotonic for non-negative floats), ties to the lower index.
                s.keys.clear();
                s.keys.extend(
                    u.iter()
                        .enumerate()
                        .map(|(i, v)| ((v.to_bits() & 0x7fff_ffff) as u64) << 16 | (0xffff - i as u64)),
                );
                if k < totalk {
                    s.keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
                }
                let top = &mut s.keys[..k];
                for key in top.iter_mut() {
                    *key = 0xffff - (*key & 0xffff);
                }
                top.sort_unstable();
                for (e, &slot) in top.iter().enumerate() {
                    idxs[bx * k + e] = slot as i16;
                    vals[bx * k + e] = u[slot as usize];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn encode_avx2(plan: &Plan, x: &[f32], cols: usize, bxn: usize, out: &mut EncodeOut, s: &mut Scratch) {
    encode_body(plan, x, cols, bxn, out, s)
}

fn encode_rows(isa: Isa, plan: &Plan, x: &[f32], cols: usize, bxn: usize, out: &mut EncodeOut, s: &mut Scratch) {
    match isa {
        // SAFETY: see `Cpu::inverse`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma | Isa::Avx512 => unsafe { encode_avx2(plan, x, cols, bxn, out, s) },
        _ => encode_body(plan, x, cols, bxn, out, s),
    }
}

impl Cpu {
    /// The CPU backend with the best instruction set of this machine.
    pub fn new() -> Self {
        Self::default()
    }

    /// The CPU backend with a given instruction set; falls back to the best one this machine has below it
    /// (AVX-512 to AVX2 + FMA to the baseline) when the machine lacks it.
    pub fn with_isa(isa: Isa) -> Self {
        let isa = match isa {
            Isa::Avx512 if !isa.is_supported() && Isa::Avx2Fma.is_supported() => Isa::Avx2Fma,
            i if !i.is_supported() => Isa::Baseline,
            i => i,
        };
        Self {
            isa,
            plans: Arc::default(),
            strips: true,
        }
    }

    /// The same backend on the row-pass path only (`stage1_rows`, `stage2`), which every block took before the strip path:
    /// for the tests that hold the two to the same bits.
    #[doc(hidden)]
    pub fn without_strips(mut self) -> Self {
        self.strips = false;
        self
    }

    /// The instruction set in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    fn plan(&self, layout: &ParamLayout) -> Arc<Plan> {
        self.plans.get(layout.block_h(), layout.block_w())
    }

    /// Block rows per task so that every task starts on a byte boundary of the packed output.
    fn rows_per_pack_task(layout: &ParamLayout) -> usize {
        let bits_per_block_row = layout.block_h() * layout.cols();
        (1..=8)
            .find(|g| (g * bits_per_block_row).is_multiple_of(8))
            .unwrap_or(8)
    }

    /// Aggregates one parameter: scatter-mean of the peers' contributions, inverse block DCT, sign, and 1-bit packing
    /// into `packed` (`layout.packed_len()` bytes). Peers should already be normalised (see
    /// [`crate::PeerSparse::normalised`]).
    pub fn aggregate(
        &self,
        layout: &ParamLayout,
        peers: &[Contribution],
        packed: &mut [u8],
    ) -> Result<(), KernelError> {
        check_len("packed", layout.packed_len(), packed.len())?;
        let peers = crate::sparse::usable(layout, peers)?;
        let plan = self.plan(layout);
        let (g, bxn, cols) = (Self::rows_per_pack_task(layout), layout.blocks_x(), layout.cols());
        let src = PeerSource {
            peers: &peers,
            k: layout.k(),
        };
        let task_bytes = g * layout.block_h() * cols / 8;
        packed.par_chunks_mut(task_bytes).enumerate().for_each_init(
            || Scratch::new(&plan),
            |s, (t, out)| {
                out.fill(0);
                let rows = Rows {
                    by0: t * g,
                    by1: ((t + 1) * g).min(layout.blocks_y()),
                    bxn,
                };
                self.inverse(&plan, &src, rows, &mut PackSink::new(out, cols, &plan), s);
            },
        );
        Ok(())
    }

    /// Like [`Cpu::aggregate`], but writes the decoded values (before the sign) instead of packed bits.
    pub fn aggregate_decoded(
        &self,
        layout: &ParamLayout,
        peers: &[Contribution],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        check_len("decoded", layout.numel(), out.len())?;
        let peers = crate::sparse::usable(layout, peers)?;
        let src = PeerSource {
            peers: &peers,
            k: layout.k(),
        };
        self.inverse_floats(layout, &src, out);
        Ok(())
    }

    /// Scatter-mean of the peers' contributions into dense coefficients (`xshape`, `layout.n_blocks() * totalk`).
    pub fn scatter_mean(
        &self,
        layout: &ParamLayout,
        peers: &[Contribution],
        dense: &mut [f32],
    ) -> Result<(), KernelError> {
        let totalk = layout.totalk();
        check_len("dense", layout.n_blocks() * totalk, dense.len())?;
        let peers = crate::sparse::usable(layout, peers)?;
        let plan = self.plan(layout);
        let (bxn, k) = (layout.blocks_x(), layout.k());
        dense.par_chunks_mut(bxn * totalk).enumerate().for_each_init(
            || Scratch::new(&plan),
            |s, (by, row)| {
                row.fill(0.0);
                for bx in 0..bxn {
                    scatter(&peers, by * bxn + bx, k, s);
                    let block = &mut row[bx * totalk..(bx + 1) * totalk];
                    drain_means(s, |slot, mean| block[slot] = mean);
                }
            },
        );
        Ok(())
    }

    /// Inverse block DCT of dense coefficients (`xshape`) into parameter values (`shape`, row-major).
    pub fn decode(&self, layout: &ParamLayout, dense: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        check_len("dense", layout.n_blocks() * layout.totalk(), dense.len())?;
        check_len("decoded", layout.numel(), out.len())?;
        self.inverse_floats(layout, &DenseSource(dense), out);
        Ok(())
    }

    fn inverse_floats<S: Source>(&self, layout: &ParamLayout, src: &S, out: &mut [f32]) {
        let plan = self.plan(layout);
        let (h, cols, bxn) = (layout.block_h(), layout.cols(), layout.blocks_x());
        out.par_chunks_mut(h * cols).enumerate().for_each_init(
            || Scratch::new(&plan),
            |s, (by, out)| {
                self.inverse(
                    &plan,
                    src,
                    Rows {
                        by0: by,
                        by1: by + 1,
                        bxn,
                    },
                    &mut FloatSink { out, cols },
                    s,
                )
            },
        );
    }

    /// Forward block DCT (miner side): parameter values (`shape`) into dense coefficients (`xshape`).
    pub fn encode(&self, layout: &ParamLayout, x: &[f32], coeffs: &mut [f32]) -> Result<(), KernelError> {
        check_len("x", layout.numel(), x.len())?;
        check_len("encoded", layout.n_blocks() * layout.totalk(), coeffs.len())?;
        let plan = self.plan(layout);
        let (h, cols, bxn) = (layout.block_h(), layout.cols(), layout.blocks_x());
        coeffs
            .par_chunks_mut(bxn * layout.totalk())
            .zip(x.par_chunks(h * cols))
            .for_each_init(
                || Scratch::new(&plan),
                |s, (out, x)| encode_rows(self.isa, &plan, x, cols, bxn, &mut EncodeOut::Dense(out), s),
            );
        Ok(())
    }

    /// Encode and top-k compression (miner side): per block, the `k` coefficients of largest magnitude (ties to the
    /// lower index), in ascending index order, into `idxs`/`vals` (`idxs_shape`).
    pub fn compress(
        &self,
        layout: &ParamLayout,
        x: &[f32],
        idxs: &mut [i16],
        vals: &mut [f32],
    ) -> Result<(), KernelError> {
        check_len("x", layout.numel(), x.len())?;
        self.compress_rows(layout, x, idxs, vals)
    }

    /// [`Cpu::compress`] of a band of whole block rows (`x` holds `m * block_h` parameter rows, `m <= blocks_y`),
    /// so that a producer can stream a large parameter without holding it whole.
    pub fn compress_rows(
        &self,
        layout: &ParamLayout,
        x: &[f32],
        idxs: &mut [i16],
        vals: &mut [f32],
    ) -> Result<(), KernelError> {
        let (h, cols, bxn, k) = (layout.block_h(), layout.cols(), layout.blocks_x(), layout.k());
        let band = h * cols;
        if !x.len().is_multiple_of(band) || x.len() > layout.numel() {
            return Err(KernelError::Length {
                field: "x",
                expected: layout.numel(),
                actual: x.len(),
            });
        }
        let entries = x.len() / band * bxn * k;
        check_len("idxs", entries, idxs.len())?;
        check_len("vals", entries, vals.len())?;
        crate::sparse::check_finite("x", x)?;
        let plan = self.plan(layout);
        idxs.par_chunks_mut(bxn * k)
            .zip(vals.par_chunks_mut(bxn * k))
            .zip(x.par_chunks(band))
            .for_each_init(
                || Scratch::new(&plan),
                |s, ((idxs, vals), x)| {
                    encode_rows(self.isa, &plan, x, cols, bxn, &mut EncodeOut::TopK { idxs, vals, k }, s)
                },
            );
        Ok(())
    }
}
