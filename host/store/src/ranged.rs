//! The gather by byte ranges: per peer, the same `HEAD` and time bounds as [`crate::gather`], then the file's index
//! (its central directory and `data.pkl`, [`GradientIndex`]) read with ranged `GET`s, and later any range of its
//! parameters ([`IndexedFile::read_params`]), so that a reader holds one parameter group of each peer at a time (one
//! node with a memory budget) or only its own share (a shard).
//!
//! **One version per window.** Every ranged read is pinned to the `ETag` the `HEAD` saw (`If-Match`). A file
//! replaced after its `HEAD` (a new upload, a new `ETag`) fails the next read with the store's precondition error:
//! that peer's reads end with [`SkipReason::StorageError`] ("changed during the window"), and no byte of the new
//! version is ever combined with bytes of the old. The caller decides what a failure after validation means (the
//! budgeted window fails its attempt, which is retried; see the daemon).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregator_codec::ranged::{GradientIndex, PtIndex, TailRead};
use aggregator_codec::{Limits, SparseParam};
use aggregator_model::ModelSpec;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};

use crate::gather::{Found, find, size_cap, storage_error};
use crate::{Bounds, Clients, FileRecord, GatherOptions, PeerRequest, SkipReason, keys};

/// Ranged reads of one file in flight at once.
pub const RANGES_IN_FLIGHT: usize = 8;

/// One version of a peer's file: every read is a ranged `GET` with `If-Match` on the `ETag` its `HEAD` saw.
#[derive(Clone)]
pub struct PinnedFile {
    store: Arc<dyn ObjectStore>,
    key: Path,
    etag: String,
    size: u64,
}

impl std::fmt::Debug for PinnedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedFile")
            .field("key", &self.key)
            .field("etag", &self.etag)
            .field("size", &self.size)
            .finish()
    }
}

impl PinnedFile {
    /// The file `key` in `store` at `etag`, of `size` bytes.
    pub fn new(store: Arc<dyn ObjectStore>, key: Path, etag: String, size: u64) -> Self {
        Self { store, key, etag, size }
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The bytes `range` of the pinned version (exactly that many, or an error).
    pub async fn read(&self, range: Range<u64>) -> Result<Bytes, SkipReason> {
        if range.end > self.size || range.is_empty() {
            return Err(SkipReason::Malformed {
                detail: format!("byte range {range:?} lies outside the {}-byte file", self.size),
            });
        }
        let options = GetOptions {
            if_match: Some(self.etag.clone()),
            range: Some(GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        let result = self.store.get_opts(&self.key, options).await.map_err(|e| match e {
            object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. } => {
                SkipReason::StorageError {
                    detail: format!(
                        "{}: the file changed during the window (its ETag is no longer {}): {e}",
                        self.key, self.etag
                    ),
                }
            }
            e => storage_error(e),
        })?;
        let want = (range.end - range.start) as usize;
        // Read at most the range: a store that answers with more is cut off at the first extra byte.
        let mut body = Vec::with_capacity(want);
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(storage_error)?;
            if body.len() + chunk.len() > want {
                return Err(storage_error(format!(
                    "{}: more than the {want} bytes asked for at {range:?}",
                    self.key
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if body.len() != want {
            return Err(storage_error(format!(
                "{}: {} bytes for the {want} asked for at {range:?}",
                self.key,
                body.len()
            )));
        }
        Ok(Bytes::from(body))
    }

    /// Each of `ranges`, as `(offset, bytes)`, in order, [`RANGES_IN_FLIGHT`] at a time (a group's records need not
    /// be adjacent: torch writes them in the lexicographic order of their keys, `0, 1, 10, 100, …`).
    pub async fn read_all(&self, ranges: &[Range<u64>]) -> Result<Vec<(u64, Bytes)>, SkipReason> {
        futures::stream::iter(
            ranges
                .iter()
                .map(|r| async move { Ok((r.start, self.read(r.clone()).await?)) }),
        )
        .buffered(RANGES_IN_FLIGHT)
        .collect::<Vec<Result<_, SkipReason>>>()
        .await
        .into_iter()
        .collect()
    }
}

/// A peer's file as its index: judged (structure, object graph, shapes and dtypes) with no tensor data read.
#[derive(Debug, Clone)]
pub struct IndexedFile {
    /// Where everything lies, and the metadata.
    pub index: Arc<GradientIndex>,
    /// The version it was read from.
    pub pinned: PinnedFile,
}

/// One peer's outcome of [`gather_indexes`].
#[derive(Debug)]
pub struct Indexed {
    /// The uid.
    pub uid: u16,
    /// The indexed file, or why the peer is skipped.
    pub outcome: Result<IndexedFile, SkipReason>,
    /// The object seen, if one was found (its `sha256` is none: the file is never read whole).
    pub file: Option<FileRecord>,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Time spent on this peer.
    pub elapsed: Duration,
}

/// [`crate::gather`] by ranges: each peer's file found inside `bounds`, then indexed; outcomes in the order of
/// `peers`. Memory: per peer, its tail (256 KiB) and `data.pkl`.
pub async fn gather_indexes(
    clients: &Clients,
    window: u64,
    version: &str,
    peers: &[PeerRequest],
    bounds: Bounds,
    model: Arc<ModelSpec>,
    options: &GatherOptions,
) -> Vec<Indexed> {
    let cap = size_cap(&model);
    let mut results: Vec<(usize, Indexed)> = futures::stream::iter(peers.iter().enumerate())
        .map(|(i, p)| {
            let model = model.clone();
            async move {
                let started = Instant::now();
                let (outcome, file, bytes) = match &p.bucket {
                    None => (Err(SkipReason::NoBucket), None, 0),
                    Some(bucket) => match clients.get(bucket) {
                        Err(e) => (Err(storage_error(e)), None, 0),
                        Ok(store) => {
                            let key = Path::from(keys::gradient(window, p.uid, version));
                            index_one(store, key, bounds, cap, model, options).await
                        }
                    },
                };
                (
                    i,
                    Indexed {
                        uid: p.uid,
                        outcome,
                        file,
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

async fn index_one(
    store: Arc<dyn ObjectStore>,
    key: Path,
    bounds: Bounds,
    cap: u64,
    model: Arc<ModelSpec>,
    o: &GatherOptions,
) -> (Result<IndexedFile, SkipReason>, Option<FileRecord>, u64) {
    let Found { file, deadline } = match find(store.as_ref(), &key, bounds, cap, o).await {
        Ok(found) => found,
        Err((reason, file)) => return (Err(reason), file, 0),
    };
    let Some(etag) = file.etag.clone() else {
        let detail = format!("{key}: the store gives no ETag to pin ranged reads to");
        return (Err(SkipReason::StorageError { detail }), Some(file), 0);
    };
    let pinned = PinnedFile::new(store, key, etag, file.size);
    let remaining = deadline.saturating_duration_since(Instant::now());
    let limits = Limits::for_gradient(model.sparse_bytes() as u64);
    match tokio::time::timeout(remaining, read_index(&pinned, model, limits, o.tail_bytes)).await {
        Err(_) => (Err(SkipReason::Timeout), Some(file), 0),
        Ok(Err((reason, bytes))) => (Err(reason), Some(file), bytes),
        Ok(Ok((index, bytes))) => (
            Ok(IndexedFile {
                index: Arc::new(index),
                pinned,
            }),
            Some(file),
            bytes,
        ),
    }
}

fn malformed(e: aggregator_codec::CodecError) -> SkipReason {
    SkipReason::Malformed { detail: e.to_string() }
}

/// The tail, the directory if it lies before the tail, and the spans of `data.pkl` and the small records; then the
/// index judged on a blocking thread. Returns the bytes read with the outcome.
async fn read_index(
    pinned: &PinnedFile,
    model: Arc<ModelSpec>,
    limits: Limits,
    tail_bytes: u64,
) -> Result<(GradientIndex, u64), (SkipReason, u64)> {
    let len = pinned.size();
    if len == 0 {
        return Err((
            malformed(aggregator_codec::CodecError::Zip("the file is empty".into())),
            0,
        ));
    }
    let mut bytes = 0u64;
    let tail = PtIndex::tail_range_of(len, tail_bytes);
    let got = pinned.read(tail.clone()).await.map_err(|r| (r, bytes))?;
    bytes += got.len() as u64;
    let pt = match PtIndex::read(len, tail.start, got.to_vec(), &limits).map_err(|e| (malformed(e), bytes))? {
        TailRead::Index(pt) => pt,
        TailRead::NeedFrom(from) => {
            let got = pinned.read(from..len).await.map_err(|r| (r, bytes))?;
            bytes += got.len() as u64;
            match PtIndex::read(len, from, got.to_vec(), &limits).map_err(|e| (malformed(e), bytes))? {
                TailRead::Index(pt) => pt,
                TailRead::NeedFrom(_) => {
                    let e = aggregator_codec::CodecError::Zip("the central directory could not be located".into());
                    return Err((malformed(e), bytes));
                }
            }
        }
    };
    let fetched = pinned.read_all(&pt.meta_spans()).await.map_err(|r| (r, bytes))?;
    bytes += fetched.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
    let judged = tokio::task::spawn_blocking(move || {
        let pieces: Vec<(u64, &[u8])> = fetched.iter().map(|(o, b)| (*o, b.as_ref())).collect();
        GradientIndex::read(*pt, &pieces, &model)
    })
    .await;
    match judged {
        Ok(Ok(index)) => Ok((index, bytes)),
        Ok(Err(e)) => Err((malformed(e), bytes)),
        Err(e) => Err((malformed_task(e), bytes)),
    }
}

fn malformed_task(e: tokio::task::JoinError) -> SkipReason {
    SkipReason::Malformed {
        detail: format!("decoder failed: {e}"),
    }
}

impl IndexedFile {
    /// Reads, decodes and checks parameters `params` of this file (the same checks as a whole-file read), within
    /// `timeout`; returns them (one per parameter of the range, `None` where the peer sent nothing) and the bytes
    /// read.
    pub async fn read_params(
        &self,
        params: Range<usize>,
        model: Arc<ModelSpec>,
        timeout: Duration,
    ) -> Result<(Vec<Option<SparseParam>>, u64), SkipReason> {
        let spans = self.index.spans(params.clone());
        let fetched = tokio::time::timeout(timeout, self.pinned.read_all(&spans))
            .await
            .map_err(|_| SkipReason::Timeout)??;
        let bytes = fetched.iter().map(|(_, b)| b.len() as u64).sum();
        let index = self.index.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            let pieces: Vec<(u64, &[u8])> = fetched.iter().map(|(o, b)| (*o, b.as_ref())).collect();
            index.decode(params, &pieces, &model)
        })
        .await
        .map_err(malformed_task)?;
        Ok((decoded.map_err(malformed)?, bytes))
    }
}
