//! Errors of the codec. Each names the record, key, parameter or byte offset and what was wrong.

use aggregator_kernels::KernelError;
use thiserror::Error;

/// Why a file could not be read or written.
#[derive(Debug, Error)]
pub enum CodecError {
    /// Not a readable zip archive.
    #[error("not a torch zip archive: {0}")]
    Zip(String),
    /// The archive has no `<root>/data.pkl`.
    #[error("archive has no data.pkl record")]
    NoPickle,
    /// A record is malformed or unusable.
    #[error("record {name:?}: {reason}")]
    Record {
        /// Record name inside the archive.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A configured limit was exceeded.
    #[error("{what} is {actual}, over the limit of {limit}")]
    Limit {
        /// Which quantity.
        what: &'static str,
        /// Its value.
        actual: u64,
        /// The limit.
        limit: u64,
    },
    /// The pickle program is malformed or uses something not allowed.
    #[error("data.pkl at byte {offset}: {reason}")]
    Pickle {
        /// Byte offset of the opcode.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A global outside the allow-list. Nothing is ever executed; the file is refused.
    #[error(
        "data.pkl at byte {offset}: global {name:?} is not allowed (only tensor rebuilding, storages, dtypes, OrderedDict, set and numpy scalars)"
    )]
    ForbiddenGlobal {
        /// Byte offset of the opcode.
        offset: usize,
        /// `module.name`.
        name: String,
    },
    /// The unpickled object does not have the expected structure.
    #[error("{path}: {reason}")]
    Structure {
        /// Where in the object, e.g. `state_dict["window"]`.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A parameter's tensors fail validation against the model layout.
    #[error("parameter {param:?}: {reason}")]
    Param {
        /// Parameter name.
        param: String,
        /// What is wrong.
        reason: String,
    },
    /// A kernel-level check failed for a parameter.
    #[error("parameter {param:?}: {error}")]
    Kernel {
        /// Parameter name.
        param: String,
        /// The kernel's error.
        error: KernelError,
    },
    /// JSON object (peer list, start window) malformed.
    #[error("{what}: {error}")]
    Json {
        /// Which object.
        what: &'static str,
        /// Parser error.
        error: serde_json::Error,
    },
}

impl CodecError {
    pub(crate) fn structure(path: impl Into<String>, reason: impl Into<String>) -> Self {
        CodecError::Structure {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
