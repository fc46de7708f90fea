//! Lee's fast DCT (B. G. Lee, 1984) on *row vectors*, for power-of-two sizes.
//!
//! Every "element" of the transform is a row of `v` floats, so each butterfly is a loop over a contiguous row that the
//! compiler vectorises; the transform runs along the row axis of an `n x v` block. Both transforms are iterative (a
//! top-down split phase, then a bottom-up combine phase, ping-ponging between two buffers) so they inline into the
//! ISA-specific entry points of [`crate::cpu`]. With `2 log2(n)` passes the result always lands back in the first buffer.
//!
//! Unnormalised definitions (orthonormal scales are applied by the caller):
//! * DCT-II:  `X[k] = sum_i x[i] cos(pi (2i+1) k / (2n))`
//! * DCT-III: `y[i] = sum_k Y[k] cos(pi (2i+1) k / (2n))`
//!
//! Order of operations (the GPU path must follow it to give the same bits): the DCT-III split phase only adds
//! (`Z[m] = Y[2m+1] + Y[2m-1]`), and its combine phase is exactly `y[i] = fma(o[i], c, e[i])`,
//! `y[s-1-i] = fma(-o[i], c, e[i])` with `c = f32(1 / (2 cos(pi (2i+1) / (2s))))`. No product is ever rounded before an
//! add, so a compiler that contracts `a*b + c` cannot change the result.

use std::f64::consts::PI;

/// Per-level factors `1 / (2 cos(pi (2i+1) / (2s)))` for `s = 2, 4, ..., n`, as f32.
#[derive(Debug, Clone)]
pub(crate) struct Twiddles {
    /// `levels[j]` holds the `s/2` factors of level `s = 2^(j+1)`.
    levels: Vec<Vec<f32>>,
}

impl Twiddles {
    pub(crate) fn new(n: usize) -> Self {
        debug_assert!(n.is_power_of_two());
        let mut levels = Vec::new();
        let mut s = 2;
        while s <= n {
            levels.push(
                (0..s / 2)
                    .map(|i| (0.5 / (PI * (2 * i + 1) as f64 / (2 * s) as f64).cos()) as f32)
                    .collect(),
            );
            s *= 2;
        }
        Self { levels }
    }
    /// All levels, concatenated: level `s` starts at offset `s/2 - 1`.
    pub(crate) fn flat(&self) -> Vec<f32> {
        self.levels.concat()
    }
    #[inline(always)]
    fn level(&self, s: usize) -> &[f32] {
        &self.levels[s.trailing_zeros() as usize - 1]
    }
}

#[inline(always)]
fn row(buf: &[f32], r: usize, v: usize) -> &[f32] {
    &buf[r * v..(r + 1) * v]
}

#[inline(always)]
fn row_mut(buf: &mut [f32], r: usize, v: usize) -> &mut [f32] {
    &mut buf[r * v..(r + 1) * v]
}

// Row operations. Each is a separate function over its own slice arguments so that, once inlined, LLVM still knows
// the rows do not alias and vectorises the loops (a zip over sub-slices of one buffer compiled to scalar code).

/// `d = a + b`.
#[inline(always)]
fn add(d: &mut [f32], a: &[f32], b: &[f32]) {
    let n = d.len();
    let (a, b) = (&a[..n], &b[..n]);
    for i in 0..n {
        d[i] = a[i] + b[i];
    }
}

/// `lo = fma(o, c, e)`, `hi = fma(-o, c, e)`.
#[inline(always)]
fn fma_pair(lo: &mut [f32], hi: &mut [f32], e: &[f32], o: &[f32], c: f32) {
    let n = lo.len();
    let (hi, e, o) = (&mut hi[..n], &e[..n], &o[..n]);
    for i in 0..n {
        lo[i] = o[i].mul_add(c, e[i]);
        hi[i] = (-o[i]).mul_add(c, e[i]);
    }
}

/// `lo = x + y`, `hi = (x - y) * c`.
#[inline(always)]
fn sum_diff(lo: &mut [f32], hi: &mut [f32], x: &[f32], y: &[f32], c: f32) {
    let n = lo.len();
    let (hi, x, y) = (&mut hi[..n], &x[..n], &y[..n]);
    for i in 0..n {
        lo[i] = x[i] + y[i];
        hi[i] = (x[i] - y[i]) * c;
    }
}

/// `(src, dst)` for the current pass of a ping-pong between `a` and `b`.
#[inline(always)]
fn pass<'a>(a: &'a mut [f32], b: &'a mut [f32], src_is_a: bool) -> (&'a [f32], &'a mut [f32]) {
    if src_is_a { (a, b) } else { (b, a) }
}

/// Unnormalised DCT-III along the rows of `a` (`n` rows of `v` floats); `b` is scratch of the same size.
#[inline(always)]
pub(crate) fn dct3_rows(a: &mut [f32], b: &mut [f32], n: usize, v: usize, tw: &Twiddles) {
    let mut src_is_a = true;
    // Split: E[m] = Y[2m] to the first half, Z[0] = Y[1], Z[m] = Y[2m+1] + Y[2m-1] to the second.
    let mut s = n;
    while s >= 2 {
        let (src, dst) = pass(a, b, src_is_a);
        let half = s / 2;
        for base in (0..n).step_by(s) {
            for m in 0..half {
                row_mut(dst, base + m, v).copy_from_slice(row(src, base + 2 * m, v));
            }
            row_mut(dst, base + half, v).copy_from_slice(row(src, base + 1, v));
            for m in 1..half {
                add(
                    row_mut(dst, base + half + m, v),
                    row(src, base + 2 * m + 1, v),
                    row(src, base + 2 * m - 1, v),
                );
            }
        }
        src_is_a = !src_is_a;
        s /= 2;
    }
    // Combine: y[i] = e[i] + o[i] c_i, y[s-1-i] = e[i] - o[i] c_i, as fused multiply-adds.
    let mut s = 2;
    while s <= n {
        let (src, dst) = pass(a, b, src_is_a);
        let half = s / 2;
        let c = tw.level(s);
        for base in (0..n).step_by(s) {
            for (i, &ci) in c.iter().enumerate() {
                let (e, o) = (row(src, base + i, v), row(src, base + half + i, v));
                let (lo, hi) = dst[(base + i) * v..(base + s - i) * v].split_at_mut(v);
                let at = hi.len() - v;
                let hi = &mut hi[at..];
                fma_pair(lo, hi, e, o, ci);
            }
        }
        src_is_a = !src_is_a;
        s *= 2;
    }
    debug_assert!(src_is_a, "an even number of passes leaves the result in `a`");
}

/// Unnormalised DCT-II along the rows of `a` (`n` rows of `v` floats); `b` is scratch of the same size.
#[inline(always)]
pub(crate) fn dct2_rows(a: &mut [f32], b: &mut [f32], n: usize, v: usize, tw: &Twiddles) {
    let mut src_is_a = true;
    // Butterflies: a[i] = x[i] + x[s-1-i] to the first half, b[i] = (x[i] - x[s-1-i]) c_i to the second.
    let mut s = n;
    while s >= 2 {
        let (src, dst) = pass(a, b, src_is_a);
        let half = s / 2;
        let c = tw.level(s);
        for base in (0..n).step_by(s) {
            for (i, &ci) in c.iter().enumerate() {
                let (x, y) = (row(src, base + i, v), row(src, base + s - 1 - i, v));
                let (lo, hi) = dst[(base + i) * v..(base + half + i + 1) * v].split_at_mut(v);
                let at = hi.len() - v;
                let hi = &mut hi[at..];
                sum_diff(lo, hi, x, y, ci);
            }
        }
        src_is_a = !src_is_a;
        s /= 2;
    }
    // Merge: X[2k] = A[k], X[2k+1] = B[k] + B[k+1], X[s-1] = B[half-1].
    let mut s = 2;
    while s <= n {
        let (src, dst) = pass(a, b, src_is_a);
        let half = s / 2;
        for base in (0..n).step_by(s) {
            for k in 0..half {
                row_mut(dst, base + 2 * k, v).copy_from_slice(row(src, base + k, v));
            }
            for k in 0..half - 1 {
                let (p, q) = (row(src, base + half + k, v), row(src, base + half + k + 1, v));
                for ((d, &x), &y) in row_mut(dst, base + 2 * k + 1, v).iter_mut().zip(p).zip(q) {
                    *d = x + y;
                }
            }
            row_mut(dst, base + s - 1, v).copy_from_slice(row(src, base + s - 1, v));
        }
        src_is_a = !src_is_a;
        s *= 2;
    }
    debug_assert!(src_is_a);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f64], inverse: bool) -> Vec<f64> {
        let n = x.len();
        (0..n)
            .map(|o| {
                (0..n)
                    .map(|i| {
                        let (ii, kk) = if inverse { (o, i) } else { (i, o) };
                        x[i] * (PI * (2 * ii + 1) as f64 * kk as f64 / (2 * n) as f64).cos()
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn lee_matches_the_definition() {
        for n in [1usize, 2, 4, 8, 16, 32, 64, 128] {
            let tw = Twiddles::new(n);
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 31) as f32 - 15.0) / 7.0).collect();
            let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            for inverse in [false, true] {
                // Two columns per row to exercise the row-vector form.
                let mut a: Vec<f32> = x.iter().flat_map(|&v| [v, -v]).collect();
                let mut b = vec![0.0; 2 * n];
                if inverse {
                    dct3_rows(&mut a, &mut b, n, 2, &tw)
                } else {
                    dct2_rows(&mut a, &mut b, n, 2, &tw)
                }
                let want = naive(&xd, inverse);
                for (i, w) in want.iter().enumerate() {
                    let tol = 2e-6 * (n as f64) * (1.0 + w.abs());
                    assert!(
                        (a[2 * i] as f64 - w).abs() < tol,
                        "n={n} inverse={inverse} i={i}: {} vs {w}",
                        a[2 * i]
                    );
                    assert!((a[2 * i + 1] as f64 + w).abs() < tol);
                }
            }
        }
    }
}
