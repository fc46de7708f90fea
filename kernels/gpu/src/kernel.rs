//! The cube kernel: one cube per DCT block, from the peers' sparse pairs (or dense coefficients) to packed sign bits
//! (or floats), with the block held in shared memory throughout.
//!
//! It follows the CPU path's order of operations exactly (see `aggregator_kernels`' crate docs), which is what makes
//! the bits equal:
//!
//! 1. **Scatter-mean** without float atomics: unit `u` owns the slots `s` with `s % UNITS == u` and walks every
//!    peer's entries of the block in peer order, then entry order, accumulating `sum = fma(weight, v, sum)` and
//!    `wsum += weight` for its own slots only. The mean is `sum / wsum`, corrected to the correctly rounded quotient
//!    (WGSL allows 2.5 ULP division; see [`div_rn`]). An untouched slot is `+0`, and `fma(+0, t, acc)` leaves `acc`
//!    unchanged, so the dense stage 1 below equals the CPU's walk over touched slots only.
//! 2. **Stage 1** (width axis): `U[kr, j] = fma(D[kr, l], T_kr[l, j], U[kr, j])` over `l` ascending, from `+0`,
//!    visiting only the non-zero coefficients through a bitmask of the tile (as the CPU walks the touched slots).
//! 3. **Stage 2** (height axis): Lee's DCT-III pass by pass (split: copies and adds; combine: `fma(±o, c, e)`), or
//!    the dense sum `fma(F[i, k], U[k, j], acc)` over `k` ascending. Every pass reads the tile into registers, syncs,
//!    writes it back and syncs again.
//! 4. **Sign and pack**: bit `e % 32` of word `e / 32` is `value > 0`. A word can straddle two blocks (or rows of a
//!    block), so words are merged with an integer atomic OR, which is exact and order-independent.
//!
//! No product is rounded before an add anywhere, so NVRTC's default contraction (`--fmad=true`) cannot change a
//! result; division is not fast-math on either runtime, and is corrected to the rounded quotient anyway ([`div_rn`]).
//! Every fused multiply-add goes through [`fma_x`]: the hardware instruction where the backend's `fma` is proven
//! exact, else an emulation from correctly rounded adds and multiplies ([`soft_fma`]).

use cubecl::prelude::*;

/// Units per cube. Each unit owns `tile / UNITS` slots of the block's tile.
pub const UNITS: u32 = 256;

const UNITS_USIZE: usize = UNITS as usize;

/// Source: the peers' sparse `(index, value)` pairs, scatter-meaned.
pub const SOURCE_SPARSE: u32 = 0;
/// Source: dense coefficients (`xshape`).
pub const SOURCE_DENSE: u32 = 1;

/// Sink: packed sign bits (`bits`).
pub const SINK_BITS: u32 = 0;
/// Sink: decoded values before the sign (`floats`, the parameter's row-major shape).
pub const SINK_FLOATS: u32 = 1;
/// Sink: the scatter-meaned coefficients only (`floats`, `xshape`); no transform.
pub const SINK_COEFFS: u32 = 2;

/// `a * b + c` rounded once: the backend's `fma` when `native` (CUDA's is IEEE's fusedMultiplyAdd), else
/// [`soft_fma`]. WGSL lets an implementation compute `fma` as a multiply then an add (lavapipe does), so wgpu
/// backends use `native` only when the start-up probe proved it exact (see `Gpu::new`). `zero` is a run-time 0.
#[cube]
pub fn fma_x(a: f32, b: f32, c: f32, zero: u32, #[comptime] native: bool) -> f32 {
    if comptime!(native) {
        fma(a, b, c)
    } else {
        soft_fma(a, b, c, zero)
    }
}

/// A correctly rounded `a * b + c` from correctly rounded `+`, `-` and `*` only (Boldo and Melquiond, "Emulation of
/// FMA and correctly rounded sums: proved algorithms using rounding to odd", IEEE TC 57(4), 2008, algorithm 5.4):
/// Dekker's exact product `uh + ul`, two error-free sums, then the low parts added with rounding to odd. Exact
/// whenever no intermediate overflows or underflows, which the weight and value ranges of the numeric core ensure.
///
/// Shader compilers may simplify `(x + y) - x` to `y` or reassociate sums (WGSL has no way to mark an operation
/// exact; lavapipe does both), which would erase the rounding errors these steps measure. So every intermediate
/// passes through [`opaque`], an integer identity on its bits that no floating-point rewrite can see through.
/// Products of split halves are exact, so a compiler that contracts them into fused operations cannot change a
/// result either.
#[cube]
pub fn soft_fma(a: f32, b: f32, c: f32, zero: u32) -> f32 {
    // Exact product (Veltkamp split with 2^12 + 1 for a 24-bit significand).
    let uh = opaque(a * b, zero);
    let ta = opaque(a * 4097.0, zero);
    let ah = opaque(ta - opaque(ta - a, zero), zero);
    let al = opaque(a - ah, zero);
    let tb = opaque(b * 4097.0, zero);
    let bh = opaque(tb - opaque(tb - b, zero), zero);
    let bl = opaque(b - bh, zero);
    let p1 = opaque(ah * bh - uh, zero);
    let p2 = opaque(p1 + ah * bl, zero);
    let p3 = opaque(p2 + al * bh, zero);
    let ul = opaque(p3 + al * bl, zero);
    // th + tl = c + ul, exactly.
    let th = opaque(c + ul, zero);
    let z1 = opaque(th - c, zero);
    let tl = opaque(opaque(c - opaque(th - z1, zero), zero) + opaque(ul - z1, zero), zero);
    // vh + vl = uh + th, exactly.
    let vh = opaque(uh + th, zero);
    let z2 = opaque(vh - uh, zero);
    let vl = opaque(opaque(uh - opaque(vh - z2, zero), zero) + opaque(th - z2, zero), zero);
    // v = vl + tl rounded to odd: when inexact and the nearest result has an even significand, take its neighbour
    // towards the exact sum.
    let s = opaque(vl + tl, zero);
    let z3 = opaque(s - vl, zero);
    let e = opaque(opaque(vl - opaque(s - z3, zero), zero) + opaque(tl - z3, zero), zero);
    let mut v = s;
    if e != 0.0 {
        let bits = u32::reinterpret(s);
        if bits % 2u32 == 0u32 {
            let away = (e > 0.0 && s > 0.0) || (e < 0.0 && s < 0.0);
            v = f32::reinterpret(select(away, bits + 1u32, bits - 1u32));
        }
    }
    vh + v
}

/// `x` unchanged: its bits XORed with `zero`, a run-time 0, so the optimiser cannot relate it to how it was computed.
#[cube]
pub fn opaque(x: f32, zero: u32) -> f32 {
    f32::reinterpret(u32::reinterpret(x) ^ zero)
}

/// The correctly rounded quotient `a / b` for finite `a` and `b > 0` without underflow.
///
/// `q = a / b` may be off by an ULP or two on backends that do not round division correctly (WGSL allows 2.5 ULP).
/// The remainders `a - c·b` of `q` and its two neighbours are exact when computed with a fused multiply-add, and the
/// candidate with the smallest remainder is the rounded quotient (a quotient of two floats is never a tie). On a
/// backend whose division is already correctly rounded this returns `q`.
#[cube]
pub fn div_rn(a: f32, b: f32, zero: u32, #[comptime] native: bool) -> f32 {
    let q = a / b;
    let mut best = q;
    if q != 0.0 {
        let bits = u32::reinterpret(q);
        let lo = f32::reinterpret(bits - 1u32);
        let hi = f32::reinterpret(bits + 1u32);
        let rq = fma_x(-q, b, a, zero, native);
        let rl = fma_x(-lo, b, a, zero, native);
        let rh = fma_x(-hi, b, a, zero, native);
        let aq = select(rq < 0.0, -rq, rq);
        let al = select(rl < 0.0, -rl, rl);
        let ah = select(rh < 0.0, -rh, rh);
        let mut err = aq;
        if al < err {
            best = lo;
            err = al;
        }
        if ah < err {
            best = hi;
        }
    }
    best
}

/// Evaluates `out[i] = a[i] * b[i] + c[i]` with [`fma_x`] (the start-up probe of a backend's arithmetic).
#[cube(launch_unchecked)]
pub fn fma_probe(
    a: &Array<f32>,
    b: &Array<f32>,
    c: &Array<f32>,
    out: &mut Array<f32>,
    zero: u32,
    #[comptime] native: bool,
) {
    let i = CUBE_POS * UNITS_USIZE + UNIT_POS as usize;
    if i < out.len() {
        out[i] = fma_x(a[i], b[i], c[i], zero, native);
    }
}

/// Reads the tile back from `loc` after all units have read it (one pass of a stage).
#[cube]
fn store_pass(tile: &mut SharedMemory<f32>, loc: &Array<f32>, #[comptime] per: usize) {
    sync_cube();
    let mut e = UNIT_POS;
    #[unroll]
    for i in 0..per {
        tile[e as usize] = loc[i];
        e += UNITS;
    }
    sync_cube();
}

/// One launch processes `n_blocks` blocks of one parameter (see the module docs for the stages).
///
/// * `idx`, `val`: `[n_peers, n_blocks, k]` (sparse source); `weight`: `[n_peers]`.
/// * `dense`: `[n_blocks, h * w]` (dense source).
/// * `tables`: `t_first` `[w, w]`, `t_rest` `[w, w]`, then the height table (twiddles or the `[h, h]` matrix).
/// * `bits`: `ceil(numel / 32)` zeroed words; `floats`: `numel` (or `n_blocks * h * w` coefficients).
///
/// Unused buffers may be one element long. Comptime: `tile` (a multiple of [`UNITS`], `>= h * w`), `fast` (Lee's
/// transform along the height), `source`, `sink`, `native` (see [`fma_x`]).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn block_kernel(
    idx: &Array<u32>,
    val: &Array<f32>,
    weight: &Array<f32>,
    dense: &Array<f32>,
    tables: &Array<f32>,
    bits: &mut Array<Atomic<u32>>,
    floats: &mut Array<f32>,
    n_peers: u32,
    n_blocks: u32,
    k: u32,
    h: u32,
    w: u32,
    bxn: u32,
    cols: u32,
    zero: u32,
    #[comptime] tile: usize,
    #[comptime] fast: bool,
    #[comptime] source: u32,
    #[comptime] sink: u32,
    #[comptime] native: bool,
) {
    let b = CUBE_POS as u32;
    if b < n_blocks {
        let u = UNIT_POS;
        let totalk = h * w;
        let per = comptime!(tile / UNITS as usize);
        let mut s = SharedMemory::<f32>::new(tile);
        let mut loc = Array::<f32>::new(per);

        // 1. Source into the tile.
        if comptime!(source == SOURCE_SPARSE) {
            let mut wts = Array::<f32>::new(per);
            #[unroll]
            for i in 0..per {
                loc[i] = 0.0;
                wts[i] = 0.0;
            }
            for p in 0..n_peers {
                let wp = weight[p as usize];
                let base = (p * n_blocks + b) * k;
                for e in 0..k {
                    let slot = idx[(base + e) as usize];
                    if slot % UNITS == u {
                        let i = (slot / UNITS) as usize;
                        loc[i] = fma_x(wp, val[(base + e) as usize], loc[i], zero, native);
                        wts[i] += wp;
                    }
                }
            }
            let mut slot = u;
            #[unroll]
            for i in 0..per {
                let mut mean = 0.0f32;
                if wts[i] > 0.0 {
                    mean = div_rn(loc[i], wts[i], zero, native);
                }
                if comptime!(sink == SINK_COEFFS) {
                    if slot < totalk {
                        floats[(b * totalk + slot) as usize] = mean;
                    }
                } else {
                    s[slot as usize] = mean;
                }
                slot += UNITS;
            }
        } else {
            let mut slot = u;
            #[unroll]
            for _i in 0..per {
                let mut d = 0.0f32;
                if slot < totalk {
                    d = dense[(b * totalk + slot) as usize];
                }
                s[slot as usize] = d;
                slot += UNITS;
            }
        }

        if comptime!(sink != SINK_COEFFS) {
            sync_cube();
            // 2. Stage 1 (width axis): a sum over l ascending of the non-zero coefficients only (skipping a zero is
            // bit-identical). A bitmask of the non-zero slots (bit s % 32 of word s / 32) lets each unit visit just
            // those: a block has at most peers x k of them among its h x w slots.
            let mut mask = SharedMemory::<u32>::new(comptime!(tile / 32));
            let mut wi = u;
            while (wi as usize) < comptime!(tile / 32) {
                let mut m = 0u32;
                #[unroll]
                for bit in 0..32u32 {
                    if s[(wi * 32 + bit) as usize] != 0.0 {
                        m |= 1u32 << bit;
                    }
                }
                mask[wi as usize] = m;
                wi += UNITS;
            }
            sync_cube();
            let ww = w * w;
            let mut e = u;
            #[unroll]
            for i in 0..per {
                let mut acc = 0.0f32;
                if e < totalk {
                    let kr = e / w;
                    let j = e % w;
                    let toff = select(kr == 0, 0u32, ww) + j;
                    let start = kr * w;
                    let end = start + w;
                    let mut word = start / 32;
                    while word * 32 < end {
                        let lo = word * 32;
                        let mut m = mask[word as usize];
                        if lo < start {
                            m &= !((1u32 << (start - lo)) - 1u32);
                        }
                        if lo + 32 > end {
                            m &= (1u32 << (end - lo)) - 1u32;
                        }
                        while m != 0u32 {
                            let slot = lo + m.trailing_zeros();
                            m &= m - 1u32;
                            let d = s[slot as usize];
                            acc = fma_x(d, tables[(toff + (slot - start) * w) as usize], acc, zero, native);
                        }
                        word += 1;
                    }
                }
                loc[i] = acc;
                e += UNITS;
            }
            store_pass(&mut s, &loc, per);

            // 3. Stage 2 (height axis).
            let hoff = 2 * ww;
            if comptime!(fast) {
                // Split: E[m] = Y[2m], Z[0] = Y[1], Z[m] = Y[2m+1] + Y[2m-1].
                let mut size = h;
                while size >= 2 {
                    let half = size / 2;
                    let mut e = u;
                    #[unroll]
                    for i in 0..per {
                        let mut v = 0.0f32;
                        if e < totalk {
                            let r = e / w;
                            let j = e % w;
                            let q = r % size;
                            let base = r - q;
                            if q < half {
                                v = s[((base + 2 * q) * w + j) as usize];
                            } else if q == half {
                                v = s[((base + 1) * w + j) as usize];
                            } else {
                                let m = q - half;
                                v = s[((base + 2 * m + 1) * w + j) as usize] + s[((base + 2 * m - 1) * w + j) as usize];
                            }
                        }
                        loc[i] = v;
                        e += UNITS;
                    }
                    store_pass(&mut s, &loc, per);
                    size /= 2;
                }
                // Combine: y[i] = fma(o[i], c_i, e[i]), y[s-1-i] = fma(-o[i], c_i, e[i]).
                let mut size = 2u32;
                while size <= h {
                    let half = size / 2;
                    let mut e = u;
                    #[unroll]
                    for i in 0..per {
                        let mut v = 0.0f32;
                        if e < totalk {
                            let r = e / w;
                            let j = e % w;
                            let q = r % size;
                            let base = r - q;
                            let ii = select(q < half, q, size - 1 - q);
                            let ev = s[((base + ii) * w + j) as usize];
                            let ov = s[((base + half + ii) * w + j) as usize];
                            let c = tables[(hoff + half - 1 + ii) as usize];
                            if q < half {
                                v = fma_x(ov, c, ev, zero, native);
                            } else {
                                v = fma_x(-ov, c, ev, zero, native);
                            }
                        }
                        loc[i] = v;
                        e += UNITS;
                    }
                    store_pass(&mut s, &loc, per);
                    size *= 2;
                }
            } else {
                let mut e = u;
                #[unroll]
                for i in 0..per {
                    let mut acc = 0.0f32;
                    if e < totalk {
                        let r = e / w;
                        let j = e % w;
                        for kk in 0..h {
                            acc = fma_x(
                                tables[(hoff + r * h + kk) as usize],
                                s[(kk * w + j) as usize],
                                acc,
                                zero,
                                native,
                            );
                        }
                    }
                    loc[i] = acc;
                    e += UNITS;
                }
                store_pass(&mut s, &loc, per);
            }

            // 4. Sink.
            let by = b / bxn;
            let bx = b % bxn;
            if comptime!(sink == SINK_FLOATS) {
                let mut e = u;
                #[unroll]
                for _i in 0..per {
                    if e < totalk {
                        let r = e / w;
                        let j = e % w;
                        floats[((by * h + r) * cols + bx * w + j) as usize] = s[e as usize];
                    }
                    e += UNITS;
                }
            } else {
                // A row segment of w bits touches at most w / 32 + 2 words.
                let wpr = w / 32 + 2;
                let tasks = h * wpr;
                let mut t = u;
                while t < tasks {
                    let r = t / wpr;
                    let g0 = (by * h + r) * cols + bx * w;
                    let word = g0 / 32 + t % wpr;
                    let lo = word * 32;
                    if lo < g0 + w {
                        let mut acc = 0u32;
                        #[unroll]
                        for bit in 0..32u32 {
                            let pos = lo + bit;
                            if pos >= g0 && pos < g0 + w {
                                let v = s[(r * w + pos - g0) as usize];
                                if v > 0.0 {
                                    acc |= 1u32 << bit;
                                }
                            }
                        }
                        if acc != 0 {
                            bits[word as usize].fetch_or(acc);
                        }
                    }
                    t += UNITS;
                }
            }
        }
    }
}

/// Sets every word of `out` to 0 (the packed output is merged with atomic OR).
#[cube(launch_unchecked)]
pub fn zero_kernel(out: &mut Array<u32>) {
    // The grid may be 2-D (see `Gpu::cube_count`); CUBE_POS is the linear cube index.
    let i = CUBE_POS * UNITS_USIZE + UNIT_POS as usize;
    if i < out.len() {
        out[i] = 0u32;
    }
}

/// Unpacks `out.len()` signs from packed words (bit `e % 32` of word `e / 32`) as +1.0 / -1.0; bits past the last
/// element are never read.
#[cube(launch_unchecked)]
pub fn unpack_kernel(words: &Array<u32>, out: &mut Array<f32>) {
    let i = CUBE_POS * UNITS_USIZE + UNIT_POS as usize;
    if i < out.len() {
        let word = words[i / 32];
        let bit = (word >> (i % 32) as u32) & 1u32;
        out[i] = select(bit == 1u32, 1.0f32, -1.0f32);
    }
}
