//! Orthonormal DCT-II basis matrices.

use std::f64::consts::PI;

/// Orthonormal scale of DCT coefficient `k` for size `n`: `sqrt(1/n)` for `k = 0`, else `sqrt(2/n)`.
pub(crate) fn ortho_scale(n: usize, k: usize) -> f64 {
    if k == 0 {
        (1.0 / n as f64).sqrt()
    } else {
        (2.0 / n as f64).sqrt()
    }
}

/// `s_k * cos(pi * (2i + 1) * k / (2n))`, computed in f64.
pub(crate) fn dct_entry(n: usize, i: usize, k: usize) -> f64 {
    ortho_scale(n, k) * (PI * (2 * i + 1) as f64 * k as f64 / (2 * n) as f64).cos()
}

/// The orthonormal DCT-II basis of size `n` as Templar stores it (`f_dict[n]` and `b_dict[n]`), rounded once from f64.
#[derive(Debug, Clone, PartialEq)]
pub struct DctBasis {
    n: usize,
    f: Vec<f32>,
}

impl DctBasis {
    /// Basis of side `n` (n >= 1).
    pub fn new(n: usize) -> Self {
        let f = (0..n * n).map(|e| dct_entry(n, e / n, e % n) as f32).collect();
        Self { n, f }
    }
    /// Side length.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Forward matrix, row-major `[n, n]`: `f[i, k] = s_k cos(pi (2i+1) k / (2n))` (DCT-II of the identity).
    pub fn forward(&self) -> &[f32] {
        &self.f
    }
    /// Inverse matrix, row-major `[n, n]`: `b = f^T` (`b[k, i] = f[i, k]`).
    pub fn inverse(&self) -> Vec<f32> {
        let n = self.n;
        (0..n * n).map(|e| self.f[(e % n) * n + e / n]).collect()
    }
}
