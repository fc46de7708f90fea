//! Publish: the output bucket. Whether the window's aggregate already exists (a restart after the put), the put
//! itself (complete or absent), and retention. Every call is bounded by `storage_timeout_s`.

use std::time::Duration;

use aggregator_chain::Chain;
use aggregator_store::{PutOptions, StoreError, delete_old_windows, keys, put};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use thiserror::Error;

use crate::daemon::Daemon;

/// Why the output bucket failed a window.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The existence check failed.
    #[error("storage: {key}: {source}")]
    Check {
        /// The aggregate's key.
        key: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// The put failed (nothing was written: puts are all-or-nothing).
    #[error("storage: {0}")]
    Put(#[from] StoreError),
    /// A call got no answer in time.
    #[error("storage: {key}: {what} within {after:?}")]
    Timeout {
        /// The aggregate's key.
        key: String,
        /// `no answer`, `put not done`.
        what: &'static str,
        /// The bound (`storage_timeout_s`).
        after: Duration,
    },
}

impl<C: Chain + 'static> Daemon<C> {
    /// Whether `aggregator-{w}-v{V}.pt` is already stored (then nothing is written again).
    pub(crate) async fn already_stored(&self, w: u64) -> Result<bool, PublishError> {
        let key = ObjectPath::from(keys::aggregate(w, &self.config.version));
        let storage = self.config.storage_timeout();
        match tokio::time::timeout(storage, self.output.head(&key)).await {
            Ok(Ok(meta)) => {
                tracing::info!(
                    window = w,
                    bytes = meta.size,
                    "aggregate already stored; not writing it again"
                );
                self.check_receipt(w).await;
                Ok(true)
            }
            Ok(Err(object_store::Error::NotFound { .. })) => Ok(false),
            Ok(Err(source)) => Err(PublishError::Check {
                key: key.to_string(),
                source,
            }),
            Err(_) => Err(PublishError::Timeout {
                key: key.to_string(),
                what: "no answer",
                after: storage,
            }),
        }
    }

    /// Counts and logs a stored aggregate without a receipt (pending receipts were recovered before this check).
    async fn check_receipt(&self, w: u64) {
        let key = ObjectPath::from(keys::receipt(w, &self.config.version));
        let storage = self.config.storage_timeout();
        if let Ok(Err(object_store::Error::NotFound { .. })) =
            tokio::time::timeout(storage, self.output.head(&key)).await
            && !self.pending.contains(w)
        {
            self.metrics.window_without_receipt();
            tracing::warn!(window = w, %key, "the stored aggregate has no receipt: this window cannot be replayed");
        }
    }

    /// Stores the aggregate; returns its size.
    pub(crate) async fn publish(&self, w: u64, bytes: Vec<u8>) -> Result<u64, PublishError> {
        let len = bytes.len() as u64;
        self.put_within(&keys::aggregate(w, &self.config.version), bytes.into())
            .await?;
        Ok(len)
    }

    /// Puts one object in the output bucket within `storage_timeout_s`. A put cut by the timeout is dropped mid-way:
    /// a single PUT never completes, a multipart upload is never completed (and expires with the bucket's lifecycle
    /// rules): the object is complete or absent.
    pub(crate) async fn put_within(&self, key: &str, bytes: bytes::Bytes) -> Result<(), PublishError> {
        let storage = self.config.storage_timeout();
        tokio::time::timeout(storage, put(self.output.as_ref(), key, bytes, &PutOptions::default()))
            .await
            .map_err(|_| PublishError::Timeout {
                key: key.to_string(),
                what: "put not done",
                after: storage,
            })??;
        Ok(())
    }

    /// Deletes aggregates, receipts and archived inputs older than `retention_windows`; a failure is logged and
    /// counted, never the window's.
    pub(crate) async fn retention(&self, w: u64) {
        let cfg = &self.config;
        let storage = cfg.storage_timeout();
        let retention = delete_old_windows(
            self.output.as_ref(),
            &cfg.version,
            w.saturating_sub(cfg.retention_windows),
        );
        let failed = match tokio::time::timeout(storage, retention).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {storage:?}")),
        };
        if let Some(error) = failed {
            self.metrics.error(crate::metrics::ErrorKind::Retention);
            tracing::warn!(window = w, %error, "retention");
        }
    }
}
