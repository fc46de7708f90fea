//! The inverse of one block, [`Arch::LANES`] columns at a time (a *strip*), with the strip's whole column in
//! registers.
//!
//! Stage 1 builds `U` a row at a time from the block's non-zero coefficients with the row's 64 columns in registers
//! ([`stage1`]), stage 2 runs Lee's DCT-III down the strip as a recursion over fixed-size arrays of vectors (the
//! compiler keeps the small sizes in registers; the 64-point transform is unrolled into four 16-point ones, and size
//! 32 goes through a scratch array), and the result goes to the sink. The previous formulation (`cpu::stage1_rows` and
//! `cpu::stage2`, still used for blocks taller than [`MAX_H`]) made `2 log2(h)` passes over the whole block in memory
//! for stage 2 and a read-modify-write of a whole `U` row per coefficient for stage 1.
//!
//! Every element sees exactly the operations of the documented order (crate docs, `fastdct`), so the bits are those of
//! the row-pass formulation on every ISA: only which independent operations run side by side changes.

use crate::plan::{Axis, Plan};

/// Tallest block the strip path takes (Templar's target chunk is 64, so every block of its models).
pub(crate) const MAX_H: usize = 64;

/// A vector of [`Arch::LANES`] f32 and the operations the strip path needs, per instruction set. Chosen by the
/// ISA-specific entry points of `cpu` (a type parameter, so each entry point is compiled with its own).
///
/// Written against the ISA's own vector type where there is one: with plain arrays and element-wise loops
/// ([`Portable`]), LLVM split the arrays of the transform into scalars and re-vectorised them across lanes in odd
/// shapes (half-width moves, inserts, gathers), and the 64-point transform spent most of its time moving data.
pub(crate) trait Arch {
    /// `LANES` floats, one column each.
    type V: Copy;
    /// Columns per strip.
    const LANES: usize;
    /// All lanes `+0`.
    fn zero() -> Self::V;
    /// The first `LANES` values of `s`.
    fn load(s: &[f32]) -> Self::V;
    /// `v` into the first `LANES` values of `out`.
    fn store(v: Self::V, out: &mut [f32]);
    /// `a + b` per lane.
    fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `a * c + acc` per lane, fused (one rounding, as `f32::mul_add`).
    fn mul_add(a: Self::V, c: f32, acc: Self::V) -> Self::V;
    /// `-a * c + acc` per lane, fused: bit for bit `mul_add(-a, c, acc)`.
    fn neg_mul_add(a: Self::V, c: f32, acc: Self::V) -> Self::V;
    /// Bit `j` set where lane `j` is `> 0` (the packing rule: zero, -0 and NaN give 0).
    fn sign_bits(v: Self::V) -> u64;
}

/// Eight lanes as a plain array: for the baseline ISA, where a fused multiply-add may be a libm call anyway.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Lanes8([f32; 8]);

/// Plain Rust on [`Lanes8`].
pub(crate) struct Portable;

impl Arch for Portable {
    type V = Lanes8;
    const LANES: usize = 8;
    #[inline(always)]
    fn zero() -> Lanes8 {
        Lanes8([0.0; 8])
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Lanes8 {
        let mut a = [0.0; 8];
        a.copy_from_slice(&s[..8]);
        Lanes8(a)
    }
    #[inline(always)]
    fn store(v: Lanes8, out: &mut [f32]) {
        out[..8].copy_from_slice(&v.0);
    }
    #[inline(always)]
    fn add(a: Lanes8, b: Lanes8) -> Lanes8 {
        Lanes8(std::array::from_fn(|i| a.0[i] + b.0[i]))
    }
    #[inline(always)]
    fn mul_add(a: Lanes8, c: f32, acc: Lanes8) -> Lanes8 {
        Lanes8(std::array::from_fn(|i| a.0[i].mul_add(c, acc.0[i])))
    }
    #[inline(always)]
    fn neg_mul_add(a: Lanes8, c: f32, acc: Lanes8) -> Lanes8 {
        Lanes8(std::array::from_fn(|i| (-a.0[i]).mul_add(c, acc.0[i])))
    }
    #[inline(always)]
    fn sign_bits(v: Lanes8) -> u64 {
        let mut m = 0u64;
        for j in 0..8 {
            m |= ((v.0[j] > 0.0) as u64) << j;
        }
        m
    }
}

/// x86-64 with AVX2 and FMA: `__m256` and its intrinsics. The sign mask is one compare and one `vmovmskps`.
///
/// Only the entry points compiled with AVX2 and FMA (`cpu::inverse_avx2`, `cpu::inverse_avx512`) use it, and they
/// run only where the machine has both (`Isa::detect`); the intrinsics inline into them.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx;

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::{Arch, Avx};

    // SAFETY (every `unsafe` below): `Avx` is used only where AVX2 and FMA are present (see its docs); loads and
    // stores go through slices of at least 8 floats (indexing checks the length first).
    impl Arch for Avx {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        fn load(s: &[f32]) -> __m256 {
            let s = &s[..8];
            unsafe { _mm256_loadu_ps(s.as_ptr()) }
        }
        #[inline(always)]
        fn store(v: __m256, out: &mut [f32]) {
            let out = &mut out[..8];
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn mul_add(a: __m256, c: f32, acc: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, _mm256_set1_ps(c), acc) }
        }
        #[inline(always)]
        fn neg_mul_add(a: __m256, c: f32, acc: __m256) -> __m256 {
            // -(a * c) + acc with one rounding: the same exact value as (-a) * c + acc, so the same bits.
            unsafe { _mm256_fnmadd_ps(a, _mm256_set1_ps(c), acc) }
        }
        #[inline(always)]
        fn sign_bits(v: __m256) -> u64 {
            // `_CMP_GT_OQ` is false for NaN, like `>`.
            unsafe { _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, _mm256_setzero_ps())) as u32 as u64 }
        }
    }
}

/// Lee's DCT-III of size 1: the identity.
#[inline(always)]
fn lee3_1<A: Arch>(y: &[A::V; 1], _tw: &[f32]) -> [A::V; 1] {
    *y
}

/// Lee's DCT-III of one size as a function of the next smaller one: split (`E[m] = Y[2m]`, `Z[0] = Y[1]`,
/// `Z[m] = Y[2m+1] + Y[2m-1]`), two half-size transforms, combine (`y[i] = fma(o[i], c_i, e[i])`,
/// `y[n-1-i] = fma(-o[i], c_i, e[i])`), as `fastdct::dct3_rows` does level by level.
macro_rules! lee3 {
    ($name:ident, $n:literal, $half:literal, $sub:ident) => {
        // Written as index loops to read like the definitions; the size-2 instance has an empty `1..1`.
        #[allow(clippy::reversed_empty_ranges, clippy::needless_range_loop)]
        #[inline(always)]
        fn $name<A: Arch>(y: &[A::V; $n], tw: &[f32]) -> [A::V; $n] {
            let mut e = [A::zero(); $half];
            let mut z = [A::zero(); $half];
            for m in 0..$half {
                e[m] = y[2 * m];
            }
            z[0] = y[1];
            for m in 1..$half {
                z[m] = A::add(y[2 * m + 1], y[2 * m - 1]);
            }
            let (e, o) = ($sub::<A>(&e, tw), $sub::<A>(&z, tw));
            // Level `n`'s factors start at `n/2 - 1` in the flat table.
            let c = &tw[$half - 1..$n - 1];
            let mut out = [A::zero(); $n];
            for i in 0..$half {
                out[i] = A::mul_add(o[i], c[i], e[i]);
                out[$n - 1 - i] = A::neg_mul_add(o[i], c[i], e[i]);
            }
            out
        }
    };
}
lee3!(lee3_2, 2, 1, lee3_1);
lee3!(lee3_4, 4, 2, lee3_2);
lee3!(lee3_8, 8, 4, lee3_4);
lee3!(lee3_16, 16, 8, lee3_8);

/// Size 32 in place, through a scratch array. Same operations as [`lee3!`]: split `y` into `t`, the two half-size
/// transforms in `t`, combine `t` into `y`.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn lee3_32_in_place<A: Arch>(y: &mut [A::V], t: &mut [A::V], tw: &[f32]) {
    let (y, t) = (&mut y[..32], &mut t[..32]);
    for m in 0..16 {
        t[m] = y[2 * m];
    }
    t[16] = y[1];
    for m in 1..16 {
        t[16 + m] = A::add(y[2 * m + 1], y[2 * m - 1]);
    }
    for half in t.chunks_exact_mut(16) {
        let half: &mut [A::V; 16] = half.try_into().expect("16");
        *half = lee3_16::<A>(half, tw);
    }
    let c = &tw[15..31];
    for i in 0..16 {
        let (e, o) = (t[i], t[16 + i]);
        y[i] = A::mul_add(o, c[i], e);
        y[31 - i] = A::neg_mul_add(o, c[i], e);
    }
}

/// `y[..N] = f(y[..N])` (a macro, not a function taking a closure: closures do not inherit the caller's target
/// features, and a `mul_add` compiled without FMA is a libm call per lane).
macro_rules! on_prefix {
    ($y:expr, $n:literal, $f:ident, $tw:expr) => {{
        let head: &mut [A::V; $n] = (&mut $y[..$n]).try_into().expect("n <= MAX_H");
        *head = $f::<A>(head, $tw);
    }};
}

/// Where stage 2 puts the rows of a strip's result.
pub(crate) trait StripRows<A: Arch> {
    /// Row `i` of the strip; every row `0..h` once, in no particular order.
    fn row(&mut self, i: usize, v: A::V);
}

/// Stage 2 of the strip of `U` (stride `plan.wp`) at column `c0`: the strip's first `h` rows (`h <= MAX_H`) into
/// `out`; `y` and `t` are scratch.
#[inline(always)]
pub(crate) fn stage2<A: Arch, O: StripRows<A>>(
    plan: &Plan,
    u: &[f32],
    c0: usize,
    y: &mut [A::V; MAX_H],
    t: &mut [A::V; MAX_H],
    out: &mut O,
) {
    let h = plan.h;
    match &plan.height {
        Axis::Fast(_) if h == 64 => return lee3_64_strip::<A, O>(u, plan.wp, c0, &plan.height_twiddles, t, out),
        Axis::Fast(_) => {
            load_strip::<A>(plan, u, c0, y);
            let tw = &plan.height_twiddles[..];
            match h {
                1 => {}
                2 => on_prefix!(y, 2, lee3_2, tw),
                4 => on_prefix!(y, 4, lee3_4, tw),
                8 => on_prefix!(y, 8, lee3_8, tw),
                16 => on_prefix!(y, 16, lee3_16, tw),
                32 => lee3_32_in_place::<A>(y, t, tw),
                _ => unreachable!("a fast height is a power of two <= MAX_H"),
            }
        }
        Axis::Dense(f) => {
            load_strip::<A>(plan, u, c0, y);
            // W[i] = sum_k fma(f[i, k], U[k]) in ascending k, from +0.
            for (i, o) in t[..h].iter_mut().enumerate() {
                let mut acc = A::zero();
                for k in 0..h {
                    acc = A::mul_add(y[k], f[i * h + k], acc);
                }
                *o = acc;
            }
            y[..h].copy_from_slice(&t[..h]);
        }
    }
    for (i, &v) in y[..h].iter().enumerate() {
        out.row(i, v);
    }
}

/// Lee's DCT-III of 64 points (Templar's block height) down the strip of `u` (stride `wp`) at column `c0`, into `out`.
///
/// The recursion of [`lee3!`] unrolled two levels deep, so that nothing but the four 16-point transforms' results
/// goes through memory: the inputs of the four quarter transforms are the splits of both levels at once, computed
/// from `u` as they are needed (a `Z` of the top level, which two second-level sums share, is computed twice, by the
/// same addition, so bit for bit the same value); each quarter runs [`lee3_16`] in registers into `t`; then the
/// combines of both levels run together per index, four results at a time.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn lee3_64_strip<A: Arch, O: StripRows<A>>(
    u: &[f32],
    wp: usize,
    c0: usize,
    tw: &[f32],
    t: &mut [A::V; 64],
    out: &mut O,
) {
    macro_rules! ld {
        ($r:expr) => {
            A::load(&u[$r * wp + c0..])
        };
    }
    // Level 64 splits Y into E[m] = Y[2m] and Z (Z[0] = Y[1], Z[m] = Y[2m+1] + Y[2m-1]); level 32 splits E into
    // EE[m] = E[2m] and EZ, and Z into ZE[m] = Z[2m] and ZZ, the same way.
    let mut q = [A::zero(); 16];
    for m in 0..16 {
        q[m] = ld!(4 * m);
    }
    t[..16].copy_from_slice(&lee3_16::<A>(&q, tw));
    q[0] = ld!(2);
    for m in 1..16 {
        q[m] = A::add(ld!(4 * m + 2), ld!(4 * m - 2));
    }
    t[16..32].copy_from_slice(&lee3_16::<A>(&q, tw));
    q[0] = ld!(1);
    for m in 1..16 {
        q[m] = A::add(ld!(4 * m + 1), ld!(4 * m - 1));
    }
    t[32..48].copy_from_slice(&lee3_16::<A>(&q, tw));
    q[0] = A::add(ld!(3), ld!(1));
    for m in 1..16 {
        q[m] = A::add(
            A::add(ld!(4 * m + 3), ld!(4 * m + 1)),
            A::add(ld!(4 * m - 1), ld!(4 * m - 3)),
        );
    }
    t[48..64].copy_from_slice(&lee3_16::<A>(&q, tw));
    // Level 32 combines (EE, EZ) into E' and (ZE, ZZ) into Z'; level 64 combines (E', Z') into y.
    let (c32, c64) = (&tw[15..31], &tw[31..63]);
    for i in 0..16 {
        let (ee, ez, ze, zz) = (t[i], t[16 + i], t[32 + i], t[48 + i]);
        let (e_lo, e_hi) = (A::mul_add(ez, c32[i], ee), A::neg_mul_add(ez, c32[i], ee));
        let (z_lo, z_hi) = (A::mul_add(zz, c32[i], ze), A::neg_mul_add(zz, c32[i], ze));
        out.row(i, A::mul_add(z_lo, c64[i], e_lo));
        out.row(63 - i, A::neg_mul_add(z_lo, c64[i], e_lo));
        out.row(31 - i, A::mul_add(z_hi, c64[31 - i], e_hi));
        out.row(32 + i, A::neg_mul_add(z_hi, c64[31 - i], e_hi));
    }
}

/// The non-zero coefficients of one block, row by row in ascending column: row `r`'s are entries
/// `starts[r]..starts[r + 1]`, entry `e` at slot `slots[e]` (`r * w + column`) with value `vals[e]`.
///
/// The arrays have a fixed length (`totalk`, `h + 1`) and are filled by index, `len` entries: the drain writes an
/// entry per touched slot, and pushes with their capacity checks were a third of its time.
pub(crate) struct Coefficients {
    pub(crate) starts: Vec<usize>,
    pub(crate) slots: Vec<u32>,
    pub(crate) vals: Vec<f32>,
    /// Scratch of the scatter-mean: the weight sums the values are divided by.
    pub(crate) wsums: Vec<f32>,
    pub(crate) len: usize,
}

impl Coefficients {
    pub(crate) fn new(h: usize, totalk: usize) -> Self {
        Self {
            starts: vec![0; h + 1],
            slots: vec![0; totalk],
            vals: vec![0.0; totalk],
            wsums: vec![0.0; totalk],
            len: 0,
        }
    }
    /// Sets `starts` from the first `len` slots (ascending) for rows of width `w`.
    #[inline(always)]
    pub(crate) fn index_rows(&mut self, w: usize) {
        let (slots, h) = (&self.slots[..self.len], self.starts.len() - 1);
        let mut e = 0;
        for r in 0..h {
            self.starts[r] = e;
            let end = ((r + 1) * w) as u32;
            while e < slots.len() && slots[e] < end {
                e += 1;
            }
        }
        self.starts[h] = self.len;
    }
}

/// Stage 1 of a block into `u` (`h` rows of stride `plan.wp`): row `r` of `U` is `sum fma(coef, T_r[l, :])` over
/// the row's coefficients in ascending `l`, from `+0`.
///
/// A row is built `NV` vectors (64 columns) at a time with the accumulators in registers, so the FMA chains of a row
/// run side by side (one chain per strip would wait on the FMA latency at every coefficient).
#[inline(always)]
pub(crate) fn stage1<A: Arch, const NV: usize>(plan: &Plan, c: &Coefficients, u: &mut [f32]) {
    let (wp, l) = (plan.wp, A::LANES);
    for (r, urow) in u.chunks_exact_mut(wp).take(plan.h).enumerate() {
        let t = if r == 0 {
            &plan.t_first_pad[..]
        } else {
            &plan.t_rest_pad[..]
        };
        let (slots, vals) = (
            &c.slots[c.starts[r]..c.starts[r + 1]],
            &c.vals[c.starts[r]..c.starts[r + 1]],
        );
        // Table row `l` starts at `l * wp`, and `l = slot - r * w`.
        let base = r * plan.w;
        let mut c0 = 0;
        while c0 + l * NV <= wp {
            let acc = row_chunk::<A, NV>(t, slots, vals, base, c0, wp);
            for (j, &a) in acc.iter().enumerate() {
                A::store(a, &mut urow[c0 + j * l..]);
            }
            c0 += l * NV;
        }
        // The last, narrower chunks of a row whose padded width is not a multiple of `LANES * NV`, a strip at a time
        // (`wp` is a multiple of `LANES`).
        while c0 < wp {
            let [a] = row_chunk::<A, 1>(t, slots, vals, base, c0, wp);
            A::store(a, &mut urow[c0..]);
            c0 += l;
        }
    }
}

/// [`stage1`] of a 64-wide block straight from the scatter's accumulators (`acc`, per slot `[sum, weight sum]`, and
/// the touched-slot `mask`, a word per row), which it resets: the coefficient of a touched slot is `sum / weight sum`
/// as the drain computes it, taken in ascending slot order as [`Coefficients`] lists them, so the same values in
/// the same order; without the drain's three arrays and its second pass.
#[inline(always)]
pub(crate) fn stage1_from_sums<A: Arch, const NV: usize>(
    plan: &Plan,
    mask: &mut [u64],
    acc: &mut [[f32; 2]],
    u: &mut [f32],
) {
    const { assert!(A::LANES * NV == 64, "a row of 64 columns in registers") };
    debug_assert!(plan.w == 64 && plan.wp == 64);
    for (r, (urow, word)) in u.chunks_exact_mut(64).zip(mask.iter_mut()).take(plan.h).enumerate() {
        let t = if r == 0 {
            &plan.t_first_pad[..]
        } else {
            &plan.t_rest_pad[..]
        };
        let sums = &mut acc[r * 64..(r + 1) * 64];
        let mut m = std::mem::take(word);
        let mut out = [A::zero(); NV];
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            let [sum, wsum] = std::mem::take(&mut sums[l]);
            let v = sum / wsum;
            let trow = &t[l * 64..(l + 1) * 64];
            for (j, a) in out.iter_mut().enumerate() {
                *a = A::mul_add(A::load(&trow[j * A::LANES..]), v, *a);
            }
        }
        for (j, &a) in out.iter().enumerate() {
            A::store(a, &mut urow[j * A::LANES..]);
        }
    }
}

/// Columns `c0..c0 + LANES * N` of one row of `U`: `sum fma(v, T[slot - base, c0..])` over the row's coefficients.
///
/// A function of its own returning the accumulators by value: with the accumulators in an array the caller also
/// slices, LLVM kept them in memory and stored all of them after every coefficient.
#[inline(always)]
fn row_chunk<A: Arch, const N: usize>(
    t: &[f32],
    slots: &[u32],
    vals: &[f32],
    base: usize,
    c0: usize,
    wp: usize,
) -> [A::V; N] {
    let mut acc = [A::zero(); N];
    for (&slot, &v) in slots.iter().zip(vals) {
        let trow = &t[(slot as usize - base) * wp + c0..][..A::LANES * N];
        for (j, a) in acc.iter_mut().enumerate() {
            *a = A::mul_add(A::load(&trow[j * A::LANES..]), v, *a);
        }
    }
    acc
}

/// The strip of `U` (stride `wp`) starting at column `c0`, into `y`.
#[inline(always)]
fn load_strip<A: Arch>(plan: &Plan, u: &[f32], c0: usize, y: &mut [A::V; MAX_H]) {
    for (r, v) in y[..plan.h].iter_mut().enumerate() {
        *v = A::load(&u[r * plan.wp + c0..]);
    }
}
