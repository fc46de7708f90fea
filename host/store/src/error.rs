//! Errors of the store.

use thiserror::Error;

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// A commitment does not follow Templar's rule.
    #[error("commitment: {0}")]
    Commitment(String),
    /// Bad configuration.
    #[error("storage configuration: {0}")]
    Config(String),
    /// The object store refused or failed an operation.
    #[error("{bucket}/{key}: {reason}")]
    Object {
        /// Bucket (with endpoint).
        bucket: String,
        /// Object key.
        key: String,
        /// The store's message.
        reason: String,
    },
    /// An upload failed; nothing was stored.
    #[error("upload of {key} failed, nothing stored: {reason}")]
    Upload {
        /// Object key.
        key: String,
        /// Why.
        reason: String,
    },
}
