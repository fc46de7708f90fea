//! One multipart upload written by several processes (the shards of a window): created by one, its parts put by
//! any of them by number and in any order, completed or aborted by the one that created it. Nobody sees the object
//! until it is completed: a window is complete or absent, never partial. S3-compatible stores only (object_store's
//! `MultipartStore`); the part ids (ETags) travel between processes as strings.

use std::sync::Arc;

use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;

use crate::StoreError;

/// A multipart upload shared by several writers (see the module docs).
pub struct SharedUpload {
    store: Arc<dyn MultipartStore>,
    key: String,
    id: String,
}

impl SharedUpload {
    /// Starts an upload of `key` (invisible until [`SharedUpload::complete`]).
    pub async fn create(store: Arc<dyn MultipartStore>, key: &str) -> Result<Self, StoreError> {
        let id = store
            .create_multipart(&Path::from(key))
            .await
            .map_err(|e| upload(key, "creating the upload", e))?;
        Ok(Self {
            store,
            key: key.to_string(),
            id,
        })
    }

    /// The upload `id` of `key` that another process created.
    pub fn join(store: Arc<dyn MultipartStore>, key: &str, id: String) -> Self {
        Self {
            store,
            key: key.to_string(),
            id,
        }
    }

    /// The upload's id, for the other writers.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Puts part `index` (0-based: S3's part number `index + 1`); returns its id, for the completing writer.
    pub async fn put_part(&self, index: usize, data: Bytes) -> Result<String, StoreError> {
        let part = self
            .store
            .put_part(&Path::from(self.key.as_str()), &self.id, index, data.into())
            .await
            .map_err(|e| upload(&self.key, &format!("part {index}"), e))?;
        Ok(part.content_id)
    }

    /// Completes the upload from every part's id, in part order: the object appears whole, at once.
    pub async fn complete(&self, parts: Vec<String>) -> Result<(), StoreError> {
        let parts = parts.into_iter().map(|content_id| PartId { content_id }).collect();
        self.store
            .complete_multipart(&Path::from(self.key.as_str()), &self.id, parts)
            .await
            .map(drop)
            .map_err(|e| upload(&self.key, "completing the upload", e))
    }

    /// Aborts the upload: its parts are discarded and the object stays as it was (absent).
    pub async fn abort(&self) -> Result<(), StoreError> {
        self.store
            .abort_multipart(&Path::from(self.key.as_str()), &self.id)
            .await
            .map_err(|e| upload(&self.key, "aborting the upload", e))
    }
}

fn upload(key: &str, what: &str, e: object_store::Error) -> StoreError {
    StoreError::Upload {
        key: key.to_string(),
        reason: format!("{what}: {e}"),
    }
}
