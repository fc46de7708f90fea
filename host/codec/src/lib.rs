//! Templar 0.2.73 files (spec §1.4 and §11): torch `.pt` zip archives with a pickle inside, and the JSON objects.
//!
//! * **Reading never executes anything.** [`PtFile::parse`] reads the zip ([`archive`]), then runs a restricted
//!   pickle machine ([`pickle`]) whose globals come from a fixed allow-list; tensors are rebuilt from
//!   `(storage, offset, size, stride)` with every index checked against the storage record. Sizes, object counts and
//!   nesting are bounded by [`Limits`], so a hostile file gives an error, never a panic, a hang or an out-of-memory.
//! * **Typed payloads**: [`Gradient`] (validated against a model layout), [`Aggregate`], [`DebugDict`],
//!   [`PeerList`], [`StartWindow`].
//! * **Writing** ([`write`]) produces files that `torch.load(..., weights_only=True)` accepts.

pub mod archive;
mod error;
mod json;
pub mod layout;
mod limits;
mod payload;
pub mod pickle;
pub mod ranged;
mod read;
pub mod tensor;
pub mod write;

pub use error::CodecError;
pub use json::{MAX_JSON_BYTES, PeerList, StartWindow};
pub use limits::Limits;
pub use payload::{
    AGGREGATE_METADATA_KEYS, Aggregate, AggregateHeader, AggregateWriter, DebugDict, Gradient, GradientMetadata,
    SparseParam,
};
pub use read::{Element, PtFile};
pub use tensor::DType;
