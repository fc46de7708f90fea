//! The inverse of one block, `L` columns at a time (a *strip*), with the strip's whole column in registers.
//!
//! Stage 1 builds `U` a row at a time from the block's non-zero coefficients with the row's 64 columns in registers
//! ([`stage1`]), stage 2 runs Lee's DCT-III down the strip as a recursion over fixed-size arrays (the
//! compiler keeps the small sizes in registers; sizes 32 and 64 go through a scratch array), and the result goes to
//! the sink. The previous formulation (`cpu::stage1_rows` and `cpu::stage2`, still used for blocks taller than
//! [`MAX_H`]) made `2 log2(h)` passes over the whole block in memory for stage 2 and a read-modify-write of a whole
//! `U` row per coefficient for stage 1.
//!
//! Every element sees exactly the operations of the documented order (crate docs, `fastdct`), so the bits are those of
//! the row-pass formulation on every ISA and strip width: only which independent operations run side by side
//! changes.

use crate::plan::{Axis, Plan};

/// Tallest block the strip path takes (Templar's target chunk is 64, so every block of its models).
pub(crate) const MAX_H: usize = 64;

/// `L` lanes of f32, one column each. Plain arrays with element-wise loops: LLVM maps them onto the vector registers
/// of the ISA the caller was compiled for (hand-written here because `std::simd` is not stable).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct V<const L: usize>(pub(crate) [f32; L]);

impl<const L: usize> V<L> {
    #[inline(always)]
    pub(crate) fn zero() -> Self {
        V([0.0; L])
    }
    /// The first `L` values of `s`.
    #[inline(always)]
    pub(crate) fn load(s: &[f32]) -> Self {
        let mut a = [0.0; L];
        a.copy_from_slice(&s[..L]);
        V(a)
    }
    /// `self * c + acc`, fused.
    #[inline(always)]
    fn mul_add(self, c: f32, acc: Self) -> Self {
        let mut r = acc;
        for i in 0..L {
            r.0[i] = self.0[i].mul_add(c, acc.0[i]);
        }
        r
    }
    /// Bit `j` set where lane `j` is `> 0` (the packing rule: zero, -0 and NaN give 0).
    #[inline(always)]
    pub(crate) fn sign_bits(self) -> u64 {
        let mut m = 0u64;
        for j in 0..L {
            m |= ((self.0[j] > 0.0) as u64) << j;
        }
        m
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        let mut r = self;
        for i in 0..L {
            r.0[i] = self.0[i] + o.0[i];
        }
        r
    }
    #[inline(always)]
    fn neg(self) -> Self {
        let mut r = self;
        for i in 0..L {
            r.0[i] = -self.0[i];
        }
        r
    }
}

/// Lee's DCT-III of size 1: the identity.
#[inline(always)]
fn lee3_1<const L: usize>(y: &[V<L>; 1], _tw: &[f32]) -> [V<L>; 1] {
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
        fn $name<const L: usize>(y: &[V<L>; $n], tw: &[f32]) -> [V<L>; $n] {
            let mut e = [V::zero(); $half];
            let mut z = [V::zero(); $half];
            for m in 0..$half {
                e[m] = y[2 * m];
            }
            z[0] = y[1];
            for m in 1..$half {
                z[m] = y[2 * m + 1].add(y[2 * m - 1]);
            }
            let (e, o) = ($sub(&e, tw), $sub(&z, tw));
            // Level `n`'s factors start at `n/2 - 1` in the flat table.
            let c = &tw[$half - 1..$n - 1];
            let mut out = [V::zero(); $n];
            for i in 0..$half {
                out[i] = o[i].mul_add(c[i], e[i]);
                out[$n - 1 - i] = o[i].neg().mul_add(c[i], e[i]);
            }
            out
        }
    };
}
lee3!(lee3_2, 2, 1, lee3_1);
lee3!(lee3_4, 4, 2, lee3_2);
lee3!(lee3_8, 8, 4, lee3_4);
lee3!(lee3_16, 16, 8, lee3_8);

/// The larger sizes in place, through a scratch array: values this many do not fit in registers anyway, and arrays
/// this large passed by value compile to `memcpy` calls. Same operations as [`lee3!`]: split `y` into `t`, the two
/// half-size transforms in `t` (with `y` as their scratch), combine `t` into `y`.
macro_rules! lee3_in_place {
    ($name:ident, $n:literal, $half:literal, $sub:ident) => {
        #[allow(clippy::needless_range_loop)]
        #[inline(always)]
        fn $name<const L: usize>(y: &mut [V<L>; $n], t: &mut [V<L>; $n], tw: &[f32]) {
            for m in 0..$half {
                t[m] = y[2 * m];
            }
            t[$half] = y[1];
            for m in 1..$half {
                t[$half + m] = y[2 * m + 1].add(y[2 * m - 1]);
            }
            {
                let (te, to) = t.split_at_mut($half);
                let (ye, yo) = y.split_at_mut($half);
                $sub(te.try_into().expect("half"), ye.try_into().expect("half"), tw);
                $sub(to.try_into().expect("half"), yo.try_into().expect("half"), tw);
            }
            let c = &tw[$half - 1..$n - 1];
            for i in 0..$half {
                let (e, o) = (t[i], t[$half + i]);
                y[i] = o.mul_add(c[i], e);
                y[$n - 1 - i] = o.neg().mul_add(c[i], e);
            }
        }
    };
}

/// [`lee3_16`] in the in-place calling convention of [`lee3_in_place!`].
#[inline(always)]
fn lee3_16_in_place<const L: usize>(y: &mut [V<L>; 16], _t: &mut [V<L>; 16], tw: &[f32]) {
    *y = lee3_16(y, tw);
}
lee3_in_place!(lee3_32_in_place, 32, 16, lee3_16_in_place);
lee3_in_place!(lee3_64_in_place, 64, 32, lee3_32_in_place);

/// `y[..N] = f(y[..N])` (a macro, not a function taking a closure: closures do not inherit the caller's target
/// features, and a `mul_add` compiled without FMA is a libm call per lane).
macro_rules! on_prefix {
    ($y:expr, $n:literal, $f:ident, $tw:expr) => {{
        let head: &mut [V<L>; $n] = (&mut $y[..$n]).try_into().expect("n <= MAX_H");
        *head = $f(head, $tw);
    }};
}

/// Stage 2 on the strip's first `h` rows (`h <= MAX_H`), in place.
#[inline(always)]
pub(crate) fn stage2<const L: usize>(plan: &Plan, y: &mut [V<L>; MAX_H], t: &mut [V<L>; MAX_H]) {
    let h = plan.h;
    match &plan.height {
        Axis::Fast(_) => {
            let tw = &plan.height_twiddles[..];
            match h {
                1 => {}
                2 => on_prefix!(y, 2, lee3_2, tw),
                4 => on_prefix!(y, 4, lee3_4, tw),
                8 => on_prefix!(y, 8, lee3_8, tw),
                16 => on_prefix!(y, 16, lee3_16, tw),
                32 => {
                    let (y, t) = (&mut y[..32], &mut t[..32]);
                    lee3_32_in_place(y.try_into().expect("32"), t.try_into().expect("32"), tw)
                }
                64 => lee3_64_in_place(y, t, tw),
                _ => unreachable!("a fast height is a power of two <= MAX_H"),
            }
        }
        Axis::Dense(f) => {
            // W[i] = sum_k fma(f[i, k], U[k]) in ascending k, from +0.
            let mut out = [V::zero(); MAX_H];
            for (i, o) in out[..h].iter_mut().enumerate() {
                let mut acc = V::zero();
                for k in 0..h {
                    acc = y[k].mul_add(f[i * h + k], acc);
                }
                *o = acc;
            }
            y[..h].copy_from_slice(&out[..h]);
        }
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
/// A row is built 64 columns at a time with `NV = 64 / L` accumulators in registers, so the FMA chains of a row run
/// side by side (one chain per strip would wait on the FMA latency at every coefficient).
#[inline(always)]
pub(crate) fn stage1<const L: usize, const NV: usize>(plan: &Plan, c: &Coefficients, u: &mut [f32]) {
    let wp = plan.wp;
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
        let base = (r * plan.w * wp) as isize;
        let mut c0 = 0;
        while c0 < wp {
            let n = (wp - c0).min(L * NV) / L;
            let mut acc = [V::<L>::zero(); NV];
            if n == NV {
                for (&slot, &v) in slots.iter().zip(vals) {
                    let trow = &t[(slot as usize * wp) - base as usize + c0..][..L * NV];
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = V::load(&trow[j * L..]).mul_add(v, *a);
                    }
                }
            } else {
                // The last, narrower chunk of a row whose padded width is not a multiple of 64.
                for (&slot, &v) in slots.iter().zip(vals) {
                    let trow = &t[(slot as usize * wp) - base as usize + c0..][..L * n];
                    for (j, a) in acc[..n].iter_mut().enumerate() {
                        *a = V::load(&trow[j * L..]).mul_add(v, *a);
                    }
                }
            }
            for (j, a) in acc[..n].iter().enumerate() {
                urow[c0 + j * L..c0 + (j + 1) * L].copy_from_slice(&a.0);
            }
            c0 += L * n;
        }
    }
}

/// The strip of `U` (stride `wp`) starting at column `c0`, into `y`.
#[inline(always)]
pub(crate) fn load_strip<const L: usize>(plan: &Plan, u: &[f32], c0: usize, y: &mut [V<L>; MAX_H]) {
    for (r, v) in y[..plan.h].iter_mut().enumerate() {
        *v = V::load(&u[r * plan.wp + c0..]);
    }
}
