//! Constant tables for one block shape `(h, w)`, built once and cached.
//!
//! The tables are part of the bit-exact contract: every backend uses exactly these f32 values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::basis::{DctBasis, ortho_scale};
use crate::fastdct::Twiddles;

/// How the transform runs along one axis.
#[derive(Debug, Clone)]
pub(crate) enum Axis {
    /// Power-of-two size: Lee's fast transform (unnormalised; scales folded into tables).
    Fast(Twiddles),
    /// Any other size: the dense orthonormal matrix, row-major `[n, n]`, `m[i * n + k] = f[i, k]`.
    Dense(Vec<f32>),
}

impl Axis {
    fn new(n: usize) -> Self {
        if n.is_power_of_two() {
            Axis::Fast(Twiddles::new(n))
        } else {
            Axis::Dense(DctBasis::new(n).forward().to_vec())
        }
    }
    pub(crate) fn is_fast(&self) -> bool {
        matches!(self, Axis::Fast(_))
    }
}

/// Tables for blocks of `h x w` coefficients.
///
/// Inverse (aggregator side), for block coefficients `D[k, l]`:
/// * stage 1 (width): `U[k, :] = sum_l fma(D[k, l], T_k[l, :])` over `l` ascending, from `+0`, where
///   `T_k[l, j] = f32(sigma_k * b_w[l, j])` with `sigma_k` the orthonormal height scale when the height transform is
///   fast (Lee's DCT-III is unnormalised) and 1 otherwise. `T_0` and `T_{k>0}` are `t_first` and `t_rest`.
/// * stage 2 (height): Lee's DCT-III along `k` (fast), or `W[i, :] = sum_k fma(b_h[k, i], U[k, :])` (dense).
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) t_first: Vec<f32>,
    pub(crate) t_rest: Vec<f32>,
    pub(crate) height: Axis,
    pub(crate) width: Axis,
    /// `w` rounded up to a multiple of 16: the row stride of the padded stage-1 tables.
    pub(crate) wp: usize,
    /// `t_first` and `t_rest` with rows padded with zeros to `wp` columns, so that a strip of 8 columns is always a
    /// whole load (the strip path, [`crate::strip`]).
    pub(crate) t_first_pad: Vec<f32>,
    pub(crate) t_rest_pad: Vec<f32>,
    /// The height axis's Lee factors, level by level (`Twiddles::flat`); empty for a dense height.
    pub(crate) height_twiddles: Vec<f32>,
    /// Encode: per-coefficient scale for the fast axes (`s_k^h * s_l^w`, 1 for dense axes).
    pub(crate) enc_scale: Vec<f32>,
}

impl Plan {
    fn new(h: usize, w: usize) -> Self {
        let (height, width) = (Axis::new(h), Axis::new(w));
        let table = |sigma: f64| -> Vec<f32> {
            (0..w * w)
                .map(|e| (sigma * crate::basis::dct_entry(w, e % w, e / w)) as f32)
                .collect()
        };
        let (t_first, t_rest) = if height.is_fast() {
            (table(ortho_scale(h, 0)), table(ortho_scale(h, 1)))
        } else {
            (table(1.0), table(1.0))
        };
        let enc_scale = (0..h * w)
            .map(|e| {
                let sh = if height.is_fast() { ortho_scale(h, e / w) } else { 1.0 };
                let sw = if width.is_fast() { ortho_scale(w, e % w) } else { 1.0 };
                (sh * sw) as f32
            })
            .collect();
        let wp = w.next_multiple_of(16);
        let pad = |t: &[f32]| -> Vec<f32> {
            let mut p = vec![0.0; w * wp];
            for (dst, src) in p.chunks_exact_mut(wp).zip(t.chunks_exact(w)) {
                dst[..w].copy_from_slice(src);
            }
            p
        };
        let height_twiddles = match &height {
            Axis::Fast(tw) => tw.flat(),
            Axis::Dense(_) => Vec::new(),
        };
        Self {
            h,
            w,
            wp,
            t_first_pad: pad(&t_first),
            t_rest_pad: pad(&t_rest),
            height_twiddles,
            t_first,
            t_rest,
            height,
            width,
            enc_scale,
        }
    }
}

/// The constant tables of one block shape, flattened for device backends (GPU kernels upload them once per shape).
///
/// These are exactly the values the CPU backend uses, so a device that follows the documented order of operations
/// gives the same bits.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockTables {
    /// Block height (coefficient rows).
    pub h: usize,
    /// Block width (coefficient columns).
    pub w: usize,
    /// Stage-1 table for coefficient row 0, row-major `[w, w]`: `t_first[l * w + j]`.
    pub t_first: Vec<f32>,
    /// Stage-1 table for coefficient rows `> 0`, row-major `[w, w]`.
    pub t_rest: Vec<f32>,
    /// Stage-2 (height axis) tables.
    pub height: HeightTables,
}

/// How stage 2 runs along the height axis.
#[derive(Debug, Clone, PartialEq)]
pub enum HeightTables {
    /// Power-of-two height: Lee's DCT-III. `twiddles` holds the `s/2` factors of level `s` (`s = 2, 4, ..., h`) at
    /// offset `s/2 - 1`, `h - 1` values in all (none for `h = 1`).
    Fast {
        /// The factors `f32(1 / (2 cos(pi (2i+1) / (2s))))`, level by level.
        twiddles: Vec<f32>,
    },
    /// Other heights: `W[i, :] = sum_k fma(forward[i * h + k], U[k, :])` in ascending `k`, from `+0`.
    Dense {
        /// The orthonormal DCT-II matrix, row-major `[h, h]`.
        forward: Vec<f32>,
    },
}

impl BlockTables {
    /// The tables of blocks of `h x w` coefficients (`h, w >= 1`).
    pub fn new(h: usize, w: usize) -> Self {
        let plan = Plan::new(h, w);
        let height = match plan.height {
            Axis::Fast(tw) => HeightTables::Fast { twiddles: tw.flat() },
            Axis::Dense(forward) => HeightTables::Dense { forward },
        };
        Self {
            h,
            w,
            t_first: plan.t_first,
            t_rest: plan.t_rest,
            height,
        }
    }
}

/// Plans by block shape.
#[derive(Debug, Default)]
pub(crate) struct PlanCache(Mutex<HashMap<(usize, usize), Arc<Plan>>>);

impl PlanCache {
    pub(crate) fn get(&self, h: usize, w: usize) -> Arc<Plan> {
        let mut map = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        map.entry((h, w)).or_insert_with(|| Arc::new(Plan::new(h, w))).clone()
    }
}
