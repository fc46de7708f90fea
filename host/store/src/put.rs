//! Writing the server's own objects, retention, and reading the leader's posted lists.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use aggregator_codec::{MAX_JSON_BYTES, PeerList, StartWindow};

use crate::{StoreError, keys};

/// How large objects are uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOptions {
    /// Objects larger than this go up in parts.
    pub multipart_above: usize,
    /// Size of every part but the last (R2 requires equal parts, 5 MiB to 5 GiB).
    pub part_size: usize,
    /// Parts in flight at once.
    pub concurrency: usize,
}

impl Default for PutOptions {
    fn default() -> Self {
        Self {
            multipart_above: 64 << 20,
            part_size: 16 << 20,
            concurrency: 4,
        }
    }
}

/// Uploads `bytes` under `key`. Small objects are one PUT; large ones a multipart upload of equal parts, which
/// readers never see until it completes. Any failure aborts the upload and is returned: nothing is "stored" unless
/// this returns `Ok`.
pub async fn put(store: &dyn ObjectStore, key: &str, bytes: Bytes, o: &PutOptions) -> Result<(), StoreError> {
    let fail = |e: object_store::Error| StoreError::Upload {
        key: key.to_string(),
        reason: e.to_string(),
    };
    let path = Path::from(key);
    if bytes.len() <= o.multipart_above {
        store.put(&path, PutPayload::from(bytes)).await.map_err(fail)?;
        return Ok(());
    }
    let mut upload = store.put_multipart(&path).await.map_err(fail)?;
    // Parts are numbered in call order; the futures then run with bounded concurrency.
    let parts: Vec<_> = (0..bytes.len())
        .step_by(o.part_size.max(1))
        .map(|start| {
            upload.put_part(PutPayload::from(
                bytes.slice(start..(start + o.part_size).min(bytes.len())),
            ))
        })
        .collect();
    let sent = futures::stream::iter(parts)
        .buffer_unordered(o.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await;
    let result = match sent {
        Ok(_) => upload.complete().await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        let _ = upload.abort().await;
        return Err(fail(e));
    }
    Ok(())
}

/// An object uploaded as its bytes are made: a multipart upload whose parts of `part_size` (all equal but the last,
/// as R2 requires) go up as they fill, at most `concurrency` in flight, so the memory held is about
/// `part_size × (concurrency + 1)` whatever the object's size. Readers see nothing until [`StreamingPut::complete`];
/// [`StreamingPut::abort`] (or dropping it, or any failure) leaves the object absent: complete or absent, as
/// [`put`].
pub struct StreamingPut {
    writer: object_store::WriteMultipart,
    key: String,
    concurrency: usize,
    written: u64,
}

impl StreamingPut {
    /// Starts the upload of `key`.
    pub async fn begin(store: &dyn ObjectStore, key: &str, o: &PutOptions) -> Result<Self, StoreError> {
        let upload = store
            .put_multipart(&Path::from(key))
            .await
            .map_err(|e| StoreError::Upload {
                key: key.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            writer: object_store::WriteMultipart::new_with_chunk_size(upload, o.part_size.max(5 << 20)),
            key: key.to_string(),
            concurrency: o.concurrency.max(1),
            written: 0,
        })
    }

    fn fail(&self, e: object_store::Error) -> StoreError {
        StoreError::Upload {
            key: self.key.clone(),
            reason: e.to_string(),
        }
    }

    /// Adds `data` to the object, once fewer than `concurrency` parts are in flight.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        if let Err(e) = self.writer.wait_for_capacity(self.concurrency).await {
            return Err(self.fail(e));
        }
        self.writer.write(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Uploads what is left and completes the upload: the object appears, whole.
    pub async fn complete(self) -> Result<(), StoreError> {
        let key = self.key;
        self.writer.finish().await.map(|_| ()).map_err(|e| StoreError::Upload {
            key,
            reason: e.to_string(),
        })
    }

    /// Abandons the upload: its parts are deleted and the object stays absent (an error here leaves it absent too;
    /// the parts then expire with the bucket's lifecycle rules).
    pub async fn abort(self) -> Result<(), StoreError> {
        let key = self.key;
        self.writer.abort().await.map_err(|e| StoreError::Upload {
            key,
            reason: e.to_string(),
        })
    }
}

/// The window of `key` if it is exactly `{prefix}{window}{suffix}` (the version is matched literally, unlike
/// Templar's unescaped regex).
/// The root keys that `parse` accepts, with the number it reads from each, by that number. `prefix` only names the
/// listing in errors.
async fn windows(
    store: &dyn ObjectStore,
    prefix: &str,
    parse: impl Fn(&str) -> Option<u64>,
) -> Result<Vec<(u64, Path)>, StoreError> {
    // object_store prefixes are whole path segments, and Templar's keys sit flat at the bucket root: list the bucket
    // and match each key exactly.
    let listed: Vec<_> = store.list(None).try_collect().await.map_err(|e| StoreError::Object {
        bucket: format!("{store}"),
        key: format!("{prefix}*"),
        reason: e.to_string(),
    })?;
    let mut found: Vec<(u64, Path)> = listed
        .into_iter()
        .filter_map(|m| parse(m.location.as_ref()).map(|w| (w, m.location)))
        .collect();
    // Some stores (a local directory) list in no particular order.
    found.sort_by_key(|(w, _)| *w);
    Ok(found)
}

/// Deletes this server's objects of windows `w < keep_from`: aggregates `aggregator-{w}-v{V}.pt`, receipts
/// `receipt-{w}-v{V}.json` and archived inputs `inputs/{w}/…`. Other objects are never touched. Returns the deleted
/// keys.
pub async fn delete_old_windows(
    store: &dyn ObjectStore,
    version: &str,
    keep_from: u64,
) -> Result<Vec<String>, StoreError> {
    let mut deleted = Vec::new();
    let ours = |k: &str| {
        keys::parse_aggregate(k, version)
            .or_else(|| keys::parse_receipt(k, version))
            .or_else(|| keys::parse_archived_input(k, version))
    };
    for (w, path) in windows(store, keys::AGGREGATE_PREFIX, ours).await? {
        if w >= keep_from {
            continue;
        }
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted.push(path.to_string()),
            Err(e) => {
                return Err(StoreError::Object {
                    bucket: format!("{store}"),
                    key: path.to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(deleted)
}

async fn get_small(store: &dyn ObjectStore, path: &Path) -> Result<Option<Bytes>, StoreError> {
    let err = |e: String| StoreError::Object {
        bucket: format!("{store}"),
        key: path.to_string(),
        reason: e,
    };
    let r = match store.get(path).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    if r.meta.size > MAX_JSON_BYTES as u64 {
        return Err(err(format!(
            "{} bytes, over the limit of {MAX_JSON_BYTES}",
            r.meta.size
        )));
    }
    r.bytes().await.map(Some).map_err(|e| err(e.to_string()))
}

/// The leader's newest and previous peer lists (`peers_{N}_v{V}.json`, by `N`), each with its `N`; the listing and
/// both reads together take at most `timeout` (a bucket that accepts connections and never answers is an error
/// after it, not a stall).
pub async fn posted_lists(
    store: &dyn ObjectStore,
    version: &str,
    timeout: Duration,
) -> Result<(Option<(u64, PeerList)>, Option<(u64, PeerList)>), StoreError> {
    within(
        store,
        &format!("{}*", keys::PEER_LIST_PREFIX),
        timeout,
        read_posted_lists(store, version),
    )
    .await
}

/// Fails with the bucket and key after `timeout`.
async fn within<T>(
    store: &dyn ObjectStore,
    key: &str,
    timeout: Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
        Err(StoreError::Object {
            bucket: format!("{store}"),
            key: key.to_string(),
            reason: format!("no answer within {timeout:?}"),
        })
    })
}

async fn read_posted_lists(
    store: &dyn ObjectStore,
    version: &str,
) -> Result<(Option<(u64, PeerList)>, Option<(u64, PeerList)>), StoreError> {
    let found = windows(store, keys::PEER_LIST_PREFIX, |k| keys::parse_peer_list(k, version)).await?;
    let mut lists = Vec::new();
    for (w, path) in found.iter().rev().take(2) {
        if let Some(bytes) = get_small(store, path).await? {
            let list = PeerList::from_json(&bytes).map_err(|e| StoreError::Object {
                bucket: format!("{store}"),
                key: path.to_string(),
                reason: e.to_string(),
            })?;
            lists.push((*w, list));
        }
    }
    let mut it = lists.into_iter();
    Ok((it.next(), it.next()))
}

/// The leader's `start_window_v{V}.json`, if present, read within `timeout`.
pub async fn start_window(
    store: &dyn ObjectStore,
    version: &str,
    timeout: Duration,
) -> Result<Option<i64>, StoreError> {
    let path = Path::from(keys::start_window(version));
    match within(store, path.as_ref(), timeout, get_small(store, &path)).await? {
        None => Ok(None),
        Some(b) => StartWindow::from_json(&b)
            .map(|s| Some(s.start_window))
            .map_err(|e| StoreError::Object {
                bucket: format!("{store}"),
                key: path.to_string(),
                reason: e.to_string(),
            }),
    }
}
