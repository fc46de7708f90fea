//! Resource limits for reading untrusted files: a hostile file yields an error, never an out-of-memory or a hang.

/// Limits applied while reading a `.pt` file. All are checked before the memory is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Size of the whole archive in bytes.
    pub max_archive_bytes: u64,
    /// Number of zip entries.
    pub max_entries: usize,
    /// Size of `data.pkl` in bytes.
    pub max_pickle_bytes: u64,
    /// Objects created by the pickle program (values, containers, memo entries).
    pub max_objects: usize,
    /// Nesting depth of containers and of the mark stack.
    pub max_depth: usize,
    /// Bytes of tensor data materialised from the archive (sum over all tensors read).
    pub max_tensor_bytes: u64,
    /// Bytes decompressed from DEFLATE entries (sum over the archive).
    pub max_inflated_bytes: u64,
}

impl Default for Limits {
    /// Generous limits for the 1.2 B model (a gradient file is about 57 MB, an aggregate about 151 MB).
    fn default() -> Self {
        Self {
            max_archive_bytes: 512 << 20,
            max_entries: 100_000,
            max_pickle_bytes: 64 << 20,
            max_objects: 4_000_000,
            max_depth: 64,
            max_tensor_bytes: 512 << 20,
            max_inflated_bytes: 512 << 20,
        }
    }
}

impl Limits {
    /// Limits sized for a gradient of a model whose compressed tensors take `sparse_bytes` (int16 + f32), with
    /// room for pickle overhead: what a gather should use for untrusted peer files.
    ///
    /// A gradient's `data.pkl` grows with the number of tensors, not their size: about 120 bytes per tensor (5 KB
    /// for the 21-parameter test model, about 40 KB for the 1.2 B model), so 1 MiB plus 1/64 of the tensor bytes
    /// leaves a wide margin while keeping the pickle machine's arena (at most one 32-byte node per 4 program bytes
    /// here) small for every one of the peers decoded at once.
    pub fn for_gradient(sparse_bytes: u64) -> Self {
        let budget = sparse_bytes + (sparse_bytes / 8) + (4 << 20);
        let pickle = (16 << 20).min((1 << 20) + sparse_bytes / 64);
        Self {
            max_archive_bytes: budget,
            max_tensor_bytes: sparse_bytes,
            max_inflated_bytes: budget,
            max_pickle_bytes: pickle,
            max_objects: (pickle / 4) as usize,
            ..Self::default()
        }
    }

    pub(crate) fn check(what: &'static str, actual: u64, limit: u64) -> Result<(), crate::CodecError> {
        if actual > limit {
            Err(crate::CodecError::Limit { what, actual, limit })
        } else {
            Ok(())
        }
    }
}
