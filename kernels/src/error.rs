//! Errors of the numeric core.

use thiserror::Error;

/// What went wrong in the numeric core. Every variant names the field and the offending value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum KernelError {
    /// A parameter shape the block transform does not support.
    #[error("unsupported parameter shape {shape:?}: {reason}")]
    Shape {
        /// The shape as given.
        shape: Vec<usize>,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The DCT target chunk must be at least 1.
    #[error("target_chunk must be at least 1 (got 0)")]
    ZeroTargetChunk,
    /// A buffer has the wrong number of elements.
    #[error("{field}: expected {expected} elements, got {actual}")]
    Length {
        /// Which buffer.
        field: &'static str,
        /// What the layout requires.
        expected: usize,
        /// What was passed.
        actual: usize,
    },
    /// A coefficient index lies outside `[0, totalk)`.
    #[error("idxs[{position}] = {value} is outside [0, {totalk})")]
    IndexOutOfRange {
        /// Flat position in the idxs tensor.
        position: usize,
        /// The index found there.
        value: i64,
        /// Number of coefficients per block.
        totalk: usize,
    },
    /// A value is NaN or infinite.
    #[error("{field}[{position}] = {value} is not finite")]
    NonFinite {
        /// Which buffer.
        field: &'static str,
        /// Flat position.
        position: usize,
        /// The value found there.
        value: f32,
    },
    /// A peer weight is not 0 and not in `[MIN_WEIGHT, MAX_WEIGHT]` (negative, not finite, or out of range).
    #[error("weight of peer #{peer} is {weight}; weights must be 0 or in [2^-20, 2^20]")]
    BadWeight {
        /// Position of the peer in the list.
        peer: usize,
        /// The weight.
        weight: f32,
    },
    /// A device backend (GPU) failed or cannot run this input; the message names the backend and the cause.
    #[error("{backend} backend: {reason}")]
    Device {
        /// Which backend (`wgpu`, `cuda`).
        backend: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// `Ok` when a buffer has the length the layout requires, else [`KernelError::Length`] naming it.
pub fn check_len(field: &'static str, expected: usize, actual: usize) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::Length {
            field,
            expected,
            actual,
        })
    }
}
