//! Publish: the output bucket. Whether the window's aggregate already exists (a restart after the put), the put
//! itself (complete or absent), and retention. Every call is bounded by `storage_timeout_s`.

use std::time::Duration;

use aggregator_chain::Chain;
use aggregator_store::{PutOptions, StoreError, delete_old_aggregates, keys, put};
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

    /// Stores the aggregate; returns its size.
    pub(crate) async fn publish(&self, w: u64, bytes: Vec<u8>) -> Result<u64, PublishError> {
        let key = ObjectPath::from(keys::aggregate(w, &self.config.version));
        let storage = self.config.storage_timeout();
        let len = bytes.len() as u64;
        // A put cut by the timeout is dropped mid-way: a single PUT never completes, a multipart upload is never
        // completed (and expires with the bucket's lifecycle rules): the object is complete or absent.
        tokio::time::timeout(
            storage,
            put(self.output.as_ref(), key.as_ref(), bytes.into(), &PutOptions::default()),
        )
        .await
        .map_err(|_| PublishError::Timeout {
            key: key.to_string(),
            what: "put not done",
            after: storage,
        })??;
        Ok(len)
    }

    /// Deletes aggregates older than `retention_windows`; a failure is logged and counted, never the window's.
    pub(crate) async fn retention(&self, w: u64) {
        let cfg = &self.config;
        let storage = cfg.storage_timeout();
        let retention = delete_old_aggregates(
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
            self.metrics.error("retention");
            tracing::warn!(window = w, %error, "retention");
        }
    }
}
