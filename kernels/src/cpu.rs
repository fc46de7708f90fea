//! The CPU backend: the reference and production path of the numeric core.
//!
//! Work is split by *block rows* (all blocks of `h` consecutive parameter rows), which own disjoint ranges of the
//! output, so rayon spreads them over the cores without locks. A block never depends on another, and within a block
//! every sum runs in a fixed order, so the output bits do not depend on the thread count.
//!
//! The hot loops are compiled twice: once for the baseline ISA and once with AVX2 + FMA, picked at run time. Both
//! compute `f32::mul_add` (a correctly rounded fused multiply-add, in hardware or in libm), so they give the same bits.

use std::sync::Arc;

use rayon::prelude::*;

use crate::fastdct::{dct2_rows, dct3_rows};
use crate::pack::{or_bits, sign_bits};
use crate::plan::{Axis, Plan, PlanCache};
use crate::{Contribution, KernelError, ParamLayout, check_len};

/// Instruction set the CPU kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable code; fused multiply-adds go through libm when the target lacks them.
    Baseline,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
}

impl Isa {
    /// The best instruction set this machine supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Isa::Avx2Fma;
        }
        Isa::Baseline
    }
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2Fma => "avx2+fma",
        }
    }
}

/// The CPU implementation of the numeric core. Cheap to clone; plans are shared.
#[derive(Debug, Clone)]
pub struct Cpu {
    isa: Isa,
    plans: Arc<PlanCache>,
}

impl Default for Cpu {
    fn default() -> Self {
        Self::with_isa(Isa::detect())
    }
}

/// Per-thread working memory for one block shape.
struct Scratch {
    sums: Vec<f32>,
    wts: Vec<f32>,
    mask: Vec<u64>,
    u: Vec<f32>,
    tmp: Vec<f32>,
    keys: Vec<u64>,
}

impl Scratch {
    fn new(plan: &Plan) -> Self {
        let totalk = plan.h * plan.w;
        Self {
            sums: vec![0.0; totalk],
            wts: vec![0.0; totalk],
            mask: vec![0; totalk.div_ceil(64)],
            u: vec![0.0; totalk],
            tmp: vec![0.0; totalk],
            keys: Vec::with_capacity(totalk),
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
    for p in peers {
        let (ix, vs) = (
            &p.sparse.idxs()[b * k..(b + 1) * k],
            &p.sparse.vals()[b * k..(b + 1) * k],
        );
        for (&i, &v) in ix.iter().zip(vs) {
            let slot = i as usize;
            s.sums[slot] = p.weight.mul_add(v, s.sums[slot]);
            s.wts[slot] += p.weight;
            s.mask[slot >> 6] |= 1u64 << (slot & 63);
        }
    }
}

/// Visits the touched slots of the accumulators in ascending order with their means, and resets them.
#[inline(always)]
fn drain_means(s: &mut Scratch, mut visit: impl FnMut(usize, f32)) {
    for wi in 0..s.mask.len() {
        let mut m = std::mem::take(&mut s.mask[wi]);
        while m != 0 {
            let slot = wi * 64 + m.trailing_zeros() as usize;
            m &= m - 1;
            let mean = s.sums[slot] / s.wts[slot];
            s.sums[slot] = 0.0;
            s.wts[slot] = 0.0;
            visit(slot, mean);
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
    /// Leaves the stage-1 result of block `b` in `s.u`.
    fn stage1(&self, plan: &Plan, b: usize, s: &mut Scratch);
}

/// Dense coefficients (`xshape`), e.g. a decompressed gradient.
struct DenseSource<'a>(&'a [f32]);

impl Source for DenseSource<'_> {
    #[inline(always)]
    fn stage1(&self, plan: &Plan, b: usize, s: &mut Scratch) {
        let (h, w) = (plan.h, plan.w);
        let block = &self.0[b * h * w..(b + 1) * h * w];
        s.u.fill(0.0);
        for kr in 0..h {
            let urow = &mut s.u[kr * w..(kr + 1) * w];
            for (l, &d) in block[kr * w..(kr + 1) * w].iter().enumerate() {
                // Skipping a zero is bit-identical to fma(0, t, acc): acc starts at +0 and never becomes -0.
                if d != 0.0 {
                    axpy(d, table_row(plan, kr, l), urow);
                }
            }
        }
    }
}

/// The peers' sparse contributions, scatter-meaned on the fly.
struct PeerSource<'a> {
    peers: &'a [Contribution<'a>],
    k: usize,
}

impl Source for PeerSource<'_> {
    #[inline(always)]
    fn stage1(&self, plan: &Plan, b: usize, s: &mut Scratch) {
        scatter(self.peers, b, self.k, s);
        s.u.fill(0.0);
        let w = plan.w;
        let (mut row, mut row_start) = (0, 0);
        // Same walk as `drain_means`, written out so that it inlines into the ISA-specific entry points.
        for wi in 0..s.mask.len() {
            let mut m = std::mem::take(&mut s.mask[wi]);
            while m != 0 {
                let slot = wi * 64 + m.trailing_zeros() as usize;
                m &= m - 1;
                let mean = s.sums[slot] / s.wts[slot];
                s.sums[slot] = 0.0;
                s.wts[slot] = 0.0;
                while slot >= row_start + w {
                    row += 1;
                    row_start += w;
                }
                axpy(
                    mean,
                    table_row(plan, row, slot - row_start),
                    &mut s.u[row * w..(row + 1) * w],
                );
            }
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
}

/// Sign bits into the task's byte range (which starts on a byte boundary and is zeroed first).
struct PackSink<'o> {
    out: &'o mut [u8],
    cols: usize,
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
}

/// Geometry of a task: block rows `[by0, by1)` of a parameter with `bxn` blocks per row and `cols` columns.
#[derive(Clone, Copy)]
struct Rows {
    by0: usize,
    by1: usize,
    bxn: usize,
}

#[inline(always)]
fn inverse_body<S: Source, K: Sink>(plan: &Plan, src: &S, rows: Rows, sink: &mut K, s: &mut Scratch) {
    let (h, w) = (plan.h, plan.w);
    for by in rows.by0..rows.by1 {
        for bx in 0..rows.bxn {
            src.stage1(plan, by * rows.bxn + bx, s);
            let res = stage2(plan, &mut s.u, &mut s.tmp);
            for i in 0..h {
                sink.put((by - rows.by0) * h + i, bx * w, &res[i * w..(i + 1) * w]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn inverse_avx2<S: Source, K: Sink>(plan: &Plan, src: &S, rows: Rows, sink: &mut K, s: &mut Scratch) {
    inverse_body(plan, src, rows, sink, s)
}

fn inverse<S: Source, K: Sink>(isa: Isa, plan: &Plan, src: &S, rows: Rows, sink: &mut K, s: &mut Scratch) {
    match isa {
        // SAFETY: `Isa::Avx2Fma` is only constructed after run-time detection of both features
        // (or explicitly by a caller who asserts them; see `Cpu::with_isa`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { inverse_avx2(plan, src, rows, sink, s) },
        _ => inverse_body(plan, src, rows, sink, s),
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
        forward_block(plan, &mut s.u, &mut s.tmp);
        match out {
            EncodeOut::Dense(d) => d[bx * totalk..(bx + 1) * totalk].copy_from_slice(&s.u),
            EncodeOut::TopK { idxs, vals, k } => {
                let k = *k;
                // Key: |x| bits (monotonic for non-negative floats), ties to the lower index.
                s.keys.clear();
                s.keys.extend(
                    s.u.iter()
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
                    vals[bx * k + e] = s.u[slot as usize];
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
        // SAFETY: see `inverse`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { encode_avx2(plan, x, cols, bxn, out, s) },
        _ => encode_body(plan, x, cols, bxn, out, s),
    }
}

impl Cpu {
    /// The CPU backend with the best instruction set of this machine.
    pub fn new() -> Self {
        Self::default()
    }

    /// The CPU backend with a given instruction set; falls back to [`Isa::Baseline`] when the machine lacks it.
    pub fn with_isa(isa: Isa) -> Self {
        let isa = if isa == Isa::Avx2Fma && Isa::detect() != Isa::Avx2Fma {
            Isa::Baseline
        } else {
            isa
        };
        Self {
            isa,
            plans: Arc::default(),
        }
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
                inverse(self.isa, &plan, &src, rows, &mut PackSink { out, cols }, s);
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
                inverse(
                    self.isa,
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
