//! Block layout of one parameter: the chunk rule, encoded shape, top-k and packed length.
//!
//! Spec: `templar-0.2.73.md` §1.4.2. A 1-D parameter `[L]` is handled internally as the 2-D parameter `[1, L]`:
//! the chunk rule gives `h = split(1) = 1` and `w = split(L)`, the blocks have the same memory order and the inverse
//! transform along a height of 1 is the identity, so one code path serves both.

use crate::KernelError;

/// Chunk size along one dimension of length `n` for a target chunk `target` (Templar's `_get_smaller_split`):
/// `n` itself when `n <= target`, otherwise the largest divisor of `n` that is not above `target`
/// (so a prime `n > target` gives 1).
pub fn split(n: usize, target: usize) -> usize {
    if n <= target {
        return n;
    }
    (1..=target).rev().find(|&d| n.is_multiple_of(d)).unwrap_or(1)
}

/// Largest number of coefficients per block: indices travel as int16.
pub const MAX_TOTALK: usize = i16::MAX as usize;

/// How one parameter is cut into DCT blocks and compressed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParamLayout {
    shape: Vec<usize>,
    rows: usize,
    cols: usize,
    h: usize,
    w: usize,
    k: usize,
}

impl ParamLayout {
    /// Layout of a 1-D or 2-D parameter with the given target chunk and top-k.
    pub fn new(shape: &[usize], target_chunk: usize, topk: usize) -> Result<Self, KernelError> {
        if target_chunk == 0 {
            return Err(KernelError::ZeroTargetChunk);
        }
        let bad = |reason| KernelError::Shape {
            shape: shape.to_vec(),
            reason,
        };
        let (rows, cols) = match *shape {
            [l] => (1, l),
            [r, c] => (r, c),
            _ => return Err(bad("only 1-D and 2-D parameters are supported")),
        };
        if rows == 0 || cols == 0 {
            return Err(bad("a dimension is 0"));
        }
        rows.checked_mul(cols).ok_or_else(|| bad("element count overflows"))?;
        let (h, w) = (split(rows, target_chunk), split(cols, target_chunk));
        let totalk = h * w;
        if totalk > MAX_TOTALK {
            return Err(bad(
                "a block has more than 32767 coefficients, which int16 indices cannot address",
            ));
        }
        Ok(Self {
            shape: shape.to_vec(),
            rows,
            cols,
            h,
            w,
            k: topk.clamp(1, totalk),
        })
    }

    /// The parameter's shape as given.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Rows of the 2-D view (1 for a 1-D parameter).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns of the 2-D view.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Block height (`split(rows)`; 1 for a 1-D parameter).
    pub fn block_h(&self) -> usize {
        self.h
    }
    /// Block width (`split(cols)`).
    pub fn block_w(&self) -> usize {
        self.w
    }
    /// Blocks along the rows.
    pub fn blocks_y(&self) -> usize {
        self.rows / self.h
    }
    /// Blocks along the columns.
    pub fn blocks_x(&self) -> usize {
        self.cols / self.w
    }
    /// Number of blocks (rows of the `idxs`/`vals` tensors).
    pub fn n_blocks(&self) -> usize {
        self.blocks_y() * self.blocks_x()
    }
    /// Coefficients per block.
    pub fn totalk(&self) -> usize {
        self.h * self.w
    }
    /// Effective top-k: `clamp(topk, 1, totalk)`.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Number of elements of the parameter.
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }
    /// Bytes of the 1-bit packed parameter: `ceil(numel / 8)`.
    pub fn packed_len(&self) -> usize {
        self.numel().div_ceil(8)
    }
    /// Number of entries in a peer's `idxs` (and `vals`) tensor.
    pub fn sparse_len(&self) -> usize {
        self.n_blocks() * self.k
    }
    /// Shape of the encoded tensor: `[L/n, n]` (1-D) or `[R/h, C/w, h, w]` (2-D).
    pub fn xshape(&self) -> Vec<usize> {
        if self.shape.len() == 1 {
            vec![self.blocks_x(), self.w]
        } else {
            vec![self.blocks_y(), self.blocks_x(), self.h, self.w]
        }
    }
    /// Shape of a peer's `idxs`/`vals` tensors: `[L/n, k]` (1-D) or `[R/h, C/w, k]` (2-D).
    pub fn idxs_shape(&self) -> Vec<usize> {
        if self.shape.len() == 1 {
            vec![self.blocks_x(), self.k]
        } else {
            vec![self.blocks_y(), self.blocks_x(), self.k]
        }
    }
    /// Chunk size per dimension of the parameter (`[n]` or `[h, w]`).
    pub fn chunk(&self) -> Vec<usize> {
        if self.shape.len() == 1 {
            vec![self.w]
        } else {
            vec![self.h, self.w]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_templar_examples() {
        for (n, c) in [
            (2048, 64),
            (8192, 64),
            (32000, 64),
            (14336, 64),
            (128256, 64),
            (100, 50),
            (96, 48),
            (32, 32),
        ] {
            assert_eq!(split(n, 64), c, "split({n})");
        }
        assert_eq!(split(67, 64), 1);
        assert_eq!(split(65, 64), 13);
    }

    #[test]
    fn layouts_of_templar_1b_shapes() {
        let l = ParamLayout::new(&[32000, 2048], 64, 32).unwrap();
        assert_eq!(l.xshape(), [500, 32, 64, 64]);
        assert_eq!(l.idxs_shape(), [500, 32, 32]);
        assert_eq!(l.packed_len(), 8_192_000);
        let n = ParamLayout::new(&[2048], 64, 32).unwrap();
        assert_eq!(n.xshape(), [32, 64]);
        assert_eq!(n.idxs_shape(), [32, 32]);
        assert_eq!(n.block_h(), 1);
        let s = ParamLayout::new(&[3, 5], 64, 32).unwrap();
        assert_eq!((s.totalk(), s.k()), (15, 15));
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(ParamLayout::new(&[], 64, 32).is_err());
        assert!(ParamLayout::new(&[2, 3, 4], 64, 32).is_err());
        assert!(ParamLayout::new(&[0, 3], 64, 32).is_err());
        assert!(
            ParamLayout::new(&[256, 256], 256, 32).is_err(),
            "totalk 65536 exceeds int16"
        );
        assert_eq!(ParamLayout::new(&[4], 0, 32), Err(KernelError::ZeroTargetChunk));
    }
}
