//! Validated sparse inputs (one peer's `idxs`/`vals` for one parameter) and per-peer L2 normalisation.

use crate::{KernelError, ParamLayout};

/// One peer's compressed gradient for one parameter, checked against its layout:
/// `n_blocks * k` entries, every index in `[0, totalk)`, every value finite.
#[derive(Debug, Clone, Copy)]
pub struct PeerSparse<'a> {
    totalk: usize,
    idxs: &'a [i16],
    vals: &'a [f32],
}

impl<'a> PeerSparse<'a> {
    /// Validates `idxs` and `vals` (flattened `idxs_shape` tensors) against `layout`.
    pub fn new(layout: &ParamLayout, idxs: &'a [i16], vals: &'a [f32]) -> Result<Self, KernelError> {
        let expected = layout.sparse_len();
        for (field, actual) in [("idxs", idxs.len()), ("vals", vals.len())] {
            if actual != expected {
                return Err(KernelError::Length {
                    field,
                    expected,
                    actual,
                });
            }
        }
        let totalk = layout.totalk();
        // Branch-free scan first; locate the culprit only on failure. In 16-bit lanes: `totalk <= MAX_TOTALK`
        // (`i16::MAX`, checked by `ParamLayout::new`), so a negative index, read as u16, is `>= 32768 > totalk`; the
        // same test as `i < 0 || i >= totalk` at four times the width of a comparison widened to usize.
        debug_assert!(totalk <= crate::MAX_TOTALK);
        let tk = totalk as u16;
        if idxs.iter().fold(false, |bad, &i| bad | (i as u16 >= tk)) {
            let position = idxs.iter().position(|&i| i < 0 || i as usize >= totalk).unwrap_or(0);
            return Err(KernelError::IndexOutOfRange {
                position,
                value: idxs[position] as i64,
                totalk,
            });
        }
        check_finite("vals", vals)?;
        Ok(Self { totalk, idxs, vals })
    }

    /// Coefficients per block of the layout this input was checked against.
    pub fn totalk(&self) -> usize {
        self.totalk
    }
    /// The indices (`[n_blocks, k]`, row-major).
    pub fn idxs(&self) -> &'a [i16] {
        self.idxs
    }
    /// The values (`[n_blocks, k]`, row-major).
    pub fn vals(&self) -> &'a [f32] {
        self.vals
    }

    /// The same indices with the values divided by `l2_norm(vals) + 1e-8` (Templar's gather normalisation),
    /// written to `out`. Normalised values are finite by construction, so no second validation is needed.
    pub fn normalised<'b>(&self, out: &'b mut Vec<f32>) -> PeerSparse<'b>
    where
        'a: 'b,
    {
        out.clear();
        let denom = l2_norm(self.vals) + 1e-8f32;
        out.extend(self.vals.iter().map(|&v| v / denom));
        PeerSparse {
            totalk: self.totalk,
            idxs: self.idxs,
            vals: out,
        }
    }
}

/// Errors if any value is NaN or infinite.
pub fn check_finite(field: &'static str, vals: &[f32]) -> Result<(), KernelError> {
    if vals.iter().fold(false, |bad, v| bad | !v.is_finite()) {
        let position = vals.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(KernelError::NonFinite {
            field,
            position,
            value: vals[position],
        });
    }
    Ok(())
}

/// L2 norm of a whole tensor, as f32.
///
/// Deterministic by construction: squares are summed in f64 over 8 fixed lanes (element `e` into lane `e % 8`),
/// the lanes are added in a fixed tree, and the square root is rounded once to f32. The result is independent of
/// thread count and ISA, and is the correctly rounded norm for all practical inputs.
///
/// Overflow follows the reference, which sums the squares in float32 (`torch.norm` of a float32 tensor): where the
/// sum of squares is past `f32::MAX` the norm is `inf` (so Templar's normalised values are all ±0), although the f64
/// sum is finite. (A sum within float32 rounding of `f32::MAX` may round either way in the reference, depending on
/// its summation order; the sum of squares here is compared once, rounded to f32.)
pub fn l2_norm(vals: &[f32]) -> f32 {
    let mut lanes = [0f64; 8];
    let mut chunks = vals.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v as f64 * v as f64;
        }
    }
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *l += v as f64 * v as f64;
    }
    let s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    if (s as f32).is_infinite() {
        return f32::INFINITY;
    }
    s.sqrt() as f32
}

/// `out[i] = vals[i] / (l2_norm(vals) + 1e-8)` in f32, as Templar's gather does per peer and parameter (§2.5).
///
/// `out` must have the length of `vals` (extra elements are left untouched).
pub fn normalise_into(vals: &[f32], out: &mut [f32]) {
    let denom = l2_norm(vals) + 1e-8f32;
    for (o, &v) in out.iter_mut().zip(vals) {
        *o = v / denom;
    }
}

/// A peer's contribution to one parameter: its (normalised) sparse gradient and its weight.
///
/// Each slot's value is `sum(weight * v) / sum(weight)` over the entries that chose it; with every weight 1.0 this is
/// exactly Templar's scatter-mean (`fma(1, v, s)` rounds like `v + s`, and the weight sum is the exact count).
/// A peer of weight 0 is left out entirely.
#[derive(Debug, Clone, Copy)]
pub struct Contribution<'a> {
    /// The peer's validated sparse gradient.
    pub sparse: PeerSparse<'a>,
    /// Its weight: 0 (left out) or in `[MIN_WEIGHT, MAX_WEIGHT]`.
    pub weight: f32,
}

impl<'a> Contribution<'a> {
    /// Weight 1.0: reproduces Templar.
    pub fn new(sparse: PeerSparse<'a>) -> Self {
        Self { sparse, weight: 1.0 }
    }
}

/// Smallest non-zero peer weight. Weights are relative (a slot's value is a weighted mean), and the range
/// `[MIN_WEIGHT, MAX_WEIGHT]` keeps every product and sum of the scatter far from overflow and underflow, where a
/// device that emulates fused multiply-adds would stop being exact.
pub const MIN_WEIGHT: f32 = 1.0 / (1u32 << 20) as f32;
/// Largest peer weight (see [`MIN_WEIGHT`]).
pub const MAX_WEIGHT: f32 = (1u32 << 20) as f32;

/// Checks every peer against `layout` (weight 0 or in `[MIN_WEIGHT, MAX_WEIGHT]`, `totalk`, entry count) and drops
/// those of weight 0, in order. Every backend calls this first, so they reject the same inputs with the same errors.
pub fn usable<'a>(layout: &ParamLayout, peers: &[Contribution<'a>]) -> Result<Vec<Contribution<'a>>, KernelError> {
    let mut out = Vec::with_capacity(peers.len());
    for (i, p) in peers.iter().enumerate() {
        if p.weight != 0.0 && !(MIN_WEIGHT..=MAX_WEIGHT).contains(&p.weight) {
            return Err(KernelError::BadWeight {
                peer: i,
                weight: p.weight,
            });
        }
        for (field, expected, actual) in [
            ("totalk", layout.totalk(), p.sparse.totalk()),
            ("idxs", layout.sparse_len(), p.sparse.idxs().len()),
        ] {
            if expected != actual {
                return Err(KernelError::Length {
                    field,
                    expected,
                    actual,
                });
            }
        }
        if p.weight > 0.0 {
            out.push(*p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_overflows_where_a_float32_sum_of_squares_does() {
        // One square past f32::MAX, and a sum past it with every square finite: inf, as torch.norm in float32.
        assert_eq!(l2_norm(&[2e19, 0.0]), f32::INFINITY);
        assert_eq!(l2_norm(&[4e18; 32]), f32::INFINITY);
        // Large but representable: the correctly rounded norm.
        assert_eq!(l2_norm(&[1e18; 32]), (32f64.sqrt() * 1e18) as f32);
        // Squares that underflow float32 still give their (tiny) norm, which the +1e-8 then swamps.
        assert!(l2_norm(&[1e-30; 4]) > 0.0);
        let mut out = vec![0.0; 3];
        normalise_into(&[4e18, -3e19, 0.5], &mut out);
        assert_eq!(out, [0.0, -0.0, 0.0]);
        assert!(
            out[1].is_sign_negative() && out[0].is_sign_positive(),
            "v / inf keeps the sign"
        );
    }
}
