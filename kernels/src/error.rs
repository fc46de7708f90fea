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
    /// A peer weight is negative or not finite.
    #[error("weight of peer #{peer} is {weight}; weights must be finite and >= 0")]
    BadWeight {
        /// Position of the peer in the list.
        peer: usize,
        /// The weight.
        weight: f32,
    },
}
