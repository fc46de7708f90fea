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
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

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
}

impl Default for GatherOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(100),
            timeout: Duration::from_secs(15),
            concurrency: 15,
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

/// A peer's outcome with what it cost.
#[derive(Debug)]
pub struct Gathered {
    /// The uid.
    pub uid: u16,
    /// The decoded and validated gradient, or why the peer is skipped.
    pub outcome: Result<Box<Gradient>, SkipReason>,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Time spent on this peer.
    pub elapsed: Duration,
}

fn now_ms() -> u64 {
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
                let (outcome, bytes) = match &p.bucket {
                    None => (Err(SkipReason::NoBucket), 0),
                    Some(bucket) => match clients.get(bucket) {
                        Err(e) => (Err(storage_error(e)), 0),
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
                        outcome,
                        bytes,
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

async fn fetch(
    store: &dyn ObjectStore,
    key: &Path,
    bounds: Bounds,
    cap: u64,
    model: Arc<ModelSpec>,
    o: &GatherOptions,
) -> (Result<Box<Gradient>, SkipReason>, u64) {
    let deadline = Instant::now() + o.timeout;
    let mut tried_after_bounds = false;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return (Err(SkipReason::Timeout), 0);
        }
        if now_ms() > bounds.not_after_ms {
            if tried_after_bounds {
                return (Err(SkipReason::Missing), 0);
            }
            tried_after_bounds = true;
        }
        let meta = match tokio::time::timeout(remaining, store.head(key)).await {
            Err(_) => return (Err(SkipReason::Timeout), 0),
            Ok(Err(object_store::Error::NotFound { .. })) => {
                tokio::time::sleep(o.poll_interval.min(deadline.saturating_duration_since(Instant::now()))).await;
                continue;
            }
            Ok(Err(e)) => return (Err(storage_error(e)), 0),
            Ok(Ok(meta)) => meta,
        };
        let last_modified_ms = meta.last_modified.timestamp_millis().max(0) as u64;
        if last_modified_ms < bounds.not_before_ms {
            return (Err(SkipReason::TooEarly { last_modified_ms }), 0);
        }
        if last_modified_ms > bounds.not_after_ms {
            return (Err(SkipReason::TooLate { last_modified_ms }), 0);
        }
        if meta.size > cap {
            return (Err(SkipReason::TooLarge { size: meta.size, cap }), 0);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let body = match tokio::time::timeout(remaining, download(store, key, cap)).await {
            Err(_) => return (Err(SkipReason::Timeout), 0),
            Ok(Err(reason)) => return (Err(reason), 0),
            Ok(Ok(body)) => body,
        };
        let n = body.len() as u64;
        let limits = Limits::for_gradient(model.sparse_bytes() as u64);
        let decoded = tokio::task::spawn_blocking(move || Gradient::read(&body, &model, &limits)).await;
        return match decoded {
            Ok(Ok(g)) => (Ok(Box::new(g)), n),
            Ok(Err(e)) => (Err(SkipReason::Malformed { detail: e.to_string() }), n),
            Err(e) => (
                Err(SkipReason::Malformed {
                    detail: format!("decoder failed: {e}"),
                }),
                n,
            ),
        };
    }
}

/// GET with a size cap enforced on the bytes actually received (the HEAD size may lie).
async fn download(store: &dyn ObjectStore, key: &Path, cap: u64) -> Result<Vec<u8>, SkipReason> {
    let result = store.get(key).await.map_err(|e| match e {
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

fn storage_error(e: impl std::fmt::Display) -> SkipReason {
    SkipReason::StorageError { detail: e.to_string() }
}
