//! Objects through which processes that share a window agree (a plan, each shard's report): written once with a
//! conditional create, so that two writers never both succeed, and awaited with a bound, so that a lost writer
//! fails the window instead of hanging it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions as StorePutOptions, PutPayload};

use crate::StoreError;

/// What [`create_once`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// This call wrote the object.
    Written,
    /// The object was there already (another writer won); its bytes are not read.
    Exists,
}

/// Writes `key` only if it does not exist (`If-None-Match: *` on S3, an exclusive create on a local directory).
pub async fn create_once(store: &dyn ObjectStore, key: &str, bytes: Bytes) -> Result<Created, StoreError> {
    let opts = StorePutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store.put_opts(&Path::from(key), PutPayload::from(bytes), opts).await {
        Ok(_) => Ok(Created::Written),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::Exists),
        Err(e) => Err(StoreError::Upload {
            key: key.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Waits for `key` to exist and returns its bytes (at most `max_bytes`), asking every `poll` until `timeout` has
/// passed; then a storage error naming the key and the wait. Errors other than "not found" end the wait at once.
pub async fn wait_for(
    store: &dyn ObjectStore,
    key: &str,
    max_bytes: u64,
    poll: Duration,
    timeout: Duration,
) -> Result<Bytes, StoreError> {
    let started = Instant::now();
    let path = Path::from(key);
    let object = |reason: String| StoreError::Object {
        bucket: store.to_string(),
        key: key.to_string(),
        reason,
    };
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, store.get(&path)).await {
            Ok(Ok(got)) => {
                if got.meta.size > max_bytes {
                    return Err(object(format!(
                        "{} bytes, more than the {max_bytes} allowed",
                        got.meta.size
                    )));
                }
                let left = timeout.saturating_sub(started.elapsed());
                return match tokio::time::timeout(left, got.bytes()).await {
                    Ok(r) => r.map_err(|e| object(e.to_string())),
                    Err(_) => Err(object(format!("not read within {timeout:?}"))),
                };
            }
            Ok(Err(object_store::Error::NotFound { .. })) => {}
            Ok(Err(e)) => return Err(object(e.to_string())),
            Err(_) => {}
        }
        if started.elapsed() + poll > timeout {
            return Err(object(format!("not there after waiting {timeout:?}")));
        }
        tokio::time::sleep(poll).await;
    }
}
