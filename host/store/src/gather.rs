//! Time-bounded, concurrent gather of the selected peers' gradients (spec §2.2–2.4), with one outcome per peer.
//!
//! Per peer: poll `HEAD gradient-{w}-{uid}-v{V}.pt` about every `poll_interval` until it exists, the gather timeout
//! passes, or one try has been made after the upper bound; `LastModified` must lie inside the bounds; `GET` with a
//! size cap from the model layout; decode and validate with the codec on a blocking thread (overlapping the other
//! peers' downloads). One peer's failure never touches another's; memory is bounded by `concurrency × size cap`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aggregator_codec::{Gradient, Limits};
use aggregator_model::ModelSpec;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

use crate::{Bucket, Clients, SkipReason, keys};

/// Valid upload times, in ms since the Unix epoch (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Earlier uploads are too early.
    pub not_before_ms: u64,
    /// Later uploads are too late.
    pub not_after_ms: u64,
}

/// How a gather runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatherOptions {
    /// Pause between polls of a missing object.
    pub poll_interval: Duration,
    /// Time allowed per peer (Templar: 15 s).
    pub timeout: Duration,
    /// Peers fetched at once.
    pub concurrency: usize,
    /// Keep each valid file's bytes in [`Gathered::body`] (for `archive_inputs`; otherwise they are dropped once
    /// decoded, and a window holds only the decoded gradients).
    pub keep_bytes: bool,
    /// Bytes of a file's end read first by the ranged gather ([`crate::gather_indexes`]):
    /// [`aggregator_codec::ranged::TAIL_BYTES`] unless a test wants the files' records outside it.
    pub tail_bytes: u64,
}

impl Default for GatherOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(100),
            timeout: Duration::from_secs(15),
            concurrency: 15,
            keep_bytes: false,
            tail_bytes: aggregator_codec::ranged::TAIL_BYTES,
        }
    }
}

/// One selected peer: its uid and, if it has a valid commitment, its bucket.
#[derive(Debug, Clone)]
pub struct PeerRequest {
    /// The uid.
    pub uid: u16,
    /// Its bucket.
    pub bucket: Option<Bucket>,
}

/// The object a peer's outcome is about, as the store described it and as it was read: what a window receipt
/// records (as is: its serde form is the receipt's `file`) so that anyone can check later that they hold the same
/// file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// Its key in the peer's bucket.
    pub key: String,
    /// The store's `ETag` (none when the store gives none: a local directory gives one derived from metadata).
    pub etag: Option<String>,
    /// Size from the store's listing (`HEAD`).
    pub size: u64,
    /// `LastModified`, in ms since the Unix epoch.
    pub last_modified_ms: u64,
    /// SHA-256 (hex) of the bytes actually read; none when the file was judged on its `HEAD` alone (too early, too
    /// late, too large) or the read did not complete.
    pub sha256: Option<String>,
}

/// A peer's outcome with what it cost.
#[derive(Debug)]
pub struct Gathered {
    /// The uid.
    pub uid: u16,
    /// The decoded and validated gradient, or why the peer is skipped.
    pub outcome: Result<Box<Gradient>, SkipReason>,
    /// The object seen, if one was found.
    pub file: Option<FileRecord>,
    /// The file's bytes, for a valid peer when [`GatherOptions::keep_bytes`] is set.
    pub body: Option<Bytes>,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Time spent on this peer.
    pub elapsed: Duration,
}

/// What [`fetch`] found for one peer.
struct Fetched {
    outcome: Result<Box<Gradient>, SkipReason>,
    file: Option<FileRecord>,
    body: Option<Bytes>,
    bytes: u64,
}

impl Fetched {
    fn skipped(reason: SkipReason, file: Option<FileRecord>) -> Self {
        Self {
            outcome: Err(reason),
            file,
            body: None,
            bytes: 0,
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Largest gradient file accepted for `model` (its tensors plus pickle and zip overhead).
pub fn size_cap(model: &ModelSpec) -> u64 {
    Limits::for_gradient(model.sparse_bytes() as u64).max_archive_bytes
}

/// Gathers window `window` from `peers`; outcomes come back in the order of `peers`.
pub async fn gather(
    clients: &Clients,
    window: u64,
    version: &str,
    peers: &[PeerRequest],
    bounds: Bounds,
    model: Arc<ModelSpec>,
    options: &GatherOptions,
) -> Vec<Gathered> {
    let cap = size_cap(&model);
    let mut results: Vec<(usize, Gathered)> = futures::stream::iter(peers.iter().enumerate())
        .map(|(i, p)| {
            let model = model.clone();
            async move {
                let started = Instant::now();
                let f = match &p.bucket {
                    None => Fetched::skipped(SkipReason::NoBucket, None),
                    Some(bucket) => match clients.get(bucket) {
                        Err(e) => Fetched::skipped(storage_error(e), None),
                        Ok(store) => {
                            let key = Path::from(keys::gradient(window, p.uid, version));
                            fetch(store.as_ref(), &key, bounds, cap, model, options).await
                        }
                    },
                };
                (
                    i,
                    Gathered {
                        uid: p.uid,
                        outcome: f.outcome,
                        file: f.file,
                        body: f.body,
                        bytes: f.bytes,
                        elapsed: started.elapsed(),
                    },
                )
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, g)| g).collect()
}

/// A peer's object found inside the bounds and under the size cap, by `HEAD`.
pub(crate) struct Found {
    pub(crate) file: FileRecord,
    pub(crate) deadline: Instant,
}

/// Polls `HEAD key` until the object exists (or the time is up) and checks its time and size: the part of a peer's
/// gather that both the whole-file and the ranged reads share.
pub(crate) async fn find(
    store: &dyn ObjectStore,
    key: &Path,
    bounds: Bounds,
    cap: u64,
    o: &GatherOptions,
) -> Result<Found, (SkipReason, Option<FileRecord>)> {
    let deadline = Instant::now() + o.timeout;
    let mut tried_after_bounds = false;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err((SkipReason::Timeout, None));
        }
        if now_ms() > bounds.not_after_ms {
            if tried_after_bounds {
                return Err((SkipReason::Missing, None));
            }
            tried_after_bounds = true;
        }
        let meta = match tokio::time::timeout(remaining, store.head(key)).await {
            Err(_) => return Err((SkipReason::Timeout, None)),
            Ok(Err(object_store::Error::NotFound { .. })) => {
                tokio::time::sleep(o.poll_interval.min(deadline.saturating_duration_since(Instant::now()))).await;
                continue;
            }
            Ok(Err(e)) => return Err((storage_error(e), None)),
            Ok(Ok(meta)) => meta,
        };
        let last_modified_ms = meta.last_modified.timestamp_millis().max(0) as u64;
        let file = FileRecord {
            key: key.to_string(),
            etag: meta.e_tag.clone(),
            size: meta.size,
            last_modified_ms,
            sha256: None,
        };
        if last_modified_ms < bounds.not_before_ms {
            return Err((SkipReason::TooEarly { last_modified_ms }, Some(file)));
        }
        if last_modified_ms > bounds.not_after_ms {
            return Err((SkipReason::TooLate { last_modified_ms }, Some(file)));
        }
        if meta.size > cap {
            return Err((SkipReason::TooLarge { size: meta.size, cap }, Some(file)));
        }
        return Ok(Found { file, deadline });
    }
}

async fn fetch(
    store: &dyn ObjectStore,
    key: &Path,
    bounds: Bounds,
    cap: u64,
    model: Arc<ModelSpec>,
    o: &GatherOptions,
) -> Fetched {
    let Found { mut file, deadline } = match find(store, key, bounds, cap, o).await {
        Ok(found) => found,
        Err((reason, file)) => return Fetched::skipped(reason, file),
    };
    {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let body = match tokio::time::timeout(remaining, download(store, key, cap, file.etag.as_deref())).await {
            Err(_) => return Fetched::skipped(SkipReason::Timeout, Some(file)),
            Ok(Err(reason)) => return Fetched::skipped(reason, Some(file)),
            Ok(Ok(body)) => body,
        };
        let n = body.len() as u64;
        let limits = Limits::for_gradient(model.sparse_bytes() as u64);
        let keep = o.keep_bytes;
        // The hash and the decoding on one blocking thread per peer (overlapping the other peers' downloads).
        let decoded = tokio::task::spawn_blocking(move || {
            let sha = hex::encode(Sha256::digest(&body));
            let g = Gradient::read(&body, &model, &limits);
            (sha, g, keep.then(|| Bytes::from(body)))
        })
        .await;
        let (outcome, body) = match decoded {
            Ok((sha, g, body)) => {
                file.sha256 = Some(sha);
                match g {
                    Ok(g) => (Ok(Box::new(g)), body),
                    Err(e) => (Err(SkipReason::Malformed { detail: e.to_string() }), None),
                }
            }
            Err(e) => (
                Err(SkipReason::Malformed {
                    detail: format!("decoder failed: {e}"),
                }),
                None,
            ),
        };
        Fetched {
            outcome,
            file: Some(file),
            body,
            bytes: n,
        }
    }
}

/// GET with a size cap enforced on the bytes actually received (the HEAD size may lie), pinned to the `ETag` the
/// `HEAD` saw (`If-Match`) where there is one, so that the bytes hashed and decoded are the object whose time was
/// checked: a file replaced between the two calls fails the read instead of slipping past the bounds.
async fn download(store: &dyn ObjectStore, key: &Path, cap: u64, etag: Option<&str>) -> Result<Vec<u8>, SkipReason> {
    let options = object_store::GetOptions {
        if_match: etag.map(str::to_string),
        ..Default::default()
    };
    let result = store.get_opts(key, options).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => SkipReason::Missing,
        e => storage_error(e),
    })?;
    let declared = result.meta.size;
    if declared > cap {
        return Err(SkipReason::TooLarge { size: declared, cap });
    }
    let mut body = Vec::with_capacity(declared as usize);
    let mut stream = result.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(storage_error)?;
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(SkipReason::TooLarge {
                size: (body.len() + chunk.len()) as u64,
                cap,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn storage_error(e: impl std::fmt::Display) -> SkipReason {
    SkipReason::StorageError { detail: e.to_string() }
}
