//! One window split across shards (`shards` > 1): each process judges and aggregates a range of the model's
//! parameters, and the output is one multipart upload whose parts the shards put. The processes share nothing but
//! the output bucket: every step is an object under `shards/{w}/{attempt}/`, written once (a conditional create)
//! and awaited with a bound.
//!
//! 1. **Plan** (shard 0, the coordinator, after its chain reads and policy decisions, as on one node):
//!    `plan.json` holds the selected peers with their buckets and selection weights, the time bounds, the parameter
//!    range each shard judges ([`judging_ranges`]: contiguous, equal by output size), the aggregate's key and the
//!    multipart upload's id. `shards/current.json` then names the window and attempt, which the other shards poll.
//! 2. **Judge, in rounds**: every shard reads every peer's index and judges its range of every peer
//!    ([`RangedWindow::judge_range`]), then writes `judge-{r}-{i}.json`: each peer's object (ETag), why it is skipped
//!    (or not), the parameters it sent in the range, and the evidence's first pass over the range. A peer invalid
//!    anywhere is skipped everywhere: when the shards' valid sets differ, the coordinator writes `round-{r+1}.json`
//!    with their intersection and every shard judges again over those peers (the set only shrinks, so the rounds
//!    end). A peer whose object (ETag) differs between shards or rounds was replaced during the window: the
//!    attempt fails and the window is retried, so no output ever mixes two versions of a file.
//! 3. **Evidence**: the coordinator adds the shards' first passes in order (the same bits as one process; see
//!    `aggregator_window::evidence`). When some peers are copies it writes `copies.json`; every shard runs the
//!    second pass over its range and writes `second-{i}.json`, which the coordinator adds too.
//! 4. **Weights**: the coordinator calls the `contribution-weighting` policy on the evidence and writes
//!    `weights.json`: the valid peers, their weights, the file's metadata and the parameters it holds. The file's
//!    layout follows from these alone ([`AggregateLayout::plan`]), so every shard knows every byte's place.
//! 5. **Parts**: the layout is cut into equal parts and a tail ([`PartPlan`]); each shard computes the parameters
//!    whose entries overlap its parts (the real writer, zeros for the others' parameters), puts its parts, and
//!    writes `parts-{i}.json` (their ids and its parameters' CRC-32s). The coordinator computes the tail (the last
//!    entries and the central directory), writes the other shards' CRCs into the directory, puts the tail, saves
//!    the receipt pending (its output SHA-256 still empty), completes the upload, reads the object back for its
//!    SHA-256, and stores the receipt, which names every shard (after a crash in between, the next run's
//!    `recover_receipts` digests the stored object and stores the receipt).
//!
//! Any failure (a shard's `failed-{i}.json`, a wait past its bound, a storage error) makes the coordinator write
//! `aborted.json` and abort the upload: the aggregate stays absent and the window is retried by the driver with a
//! new attempt. The output is byte for byte the one-node window's (same peers, same evidence, same weights, same
//! writer) for the same metadata timestamp.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregator_codec::layout::{AggregateLayout, PartPlan, patch_directory_crcs};
use aggregator_codec::write::ForwardSink;
use aggregator_codec::{AggregateHeader, AggregateWriter, SparseParam};
use aggregator_model::ModelSpec;
use aggregator_receipt::BucketRecord;
use aggregator_store::coord::{Created, create_once};
use aggregator_store::{
    Bounds, FileRecord, IndexedFile, PeerRequest, PutOptions, SharedUpload, SkipReason, StoreError,
};
use aggregator_window::aggregate_param;
use aggregator_window::evidence::{Copies, FirstPass, PartialError, PeerInfo, SecondPass, f32_exact, f32s_exact};
use bytes::Bytes;
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use thiserror::Error;

use aggregator_chain::Chain;
use aggregator_store::GatherOptions;

use super::budgeted::{BudgetError, Judged, RangedWindow, plan_groups};
use super::decide::Decision;
use super::observe::Observed;
use super::receipt::Evidence;
use super::{NextSelection, Selected, WindowError};
use crate::config::DaemonConfig;
use crate::daemon::Daemon;
use crate::report::{WindowReport, WindowResult};

/// The key other shards poll for the window and attempt to work on.
pub const CURRENT: &str = "shards/current.json";
/// The most bytes read from one coordination object.
const MAX_OBJECT_BYTES: u64 = 256 << 20;
/// Between two looks at an awaited object.
const POLL: Duration = Duration::from_millis(100);

/// Why a shard's part of a window failed (every variant fails the attempt; the window is retried).
#[derive(Debug, Error)]
pub enum ShardError {
    /// The window's data side failed in this shard.
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// A coordination object or the shared upload could not be written or read.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A coordination object did not appear within its bound.
    #[error("shards: {key} not written within {after:?}")]
    Timeout {
        /// The awaited key.
        key: String,
        /// The bound.
        after: Duration,
    },
    /// The coordinator gave the attempt up (`aborted.json`).
    #[error("shards: attempt aborted by the coordinator: {0}")]
    Aborted(String),
    /// Another shard failed (`failed-{i}.json`).
    #[error("shards: shard {shard} failed: {reason}")]
    Failed {
        /// The shard.
        shard: usize,
        /// Its error.
        reason: String,
    },
    /// A coordination object does not parse, or does not fit the window (its field is named).
    #[error("shards: {key}: {why}")]
    Invalid {
        /// The object's key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// A peer's object differs between shards or rounds: it was replaced during the window.
    #[error("shards: uid {uid}'s file changed during the window ({first} then {then}); the window is retried")]
    Replaced {
        /// The peer.
        uid: u16,
        /// The first ETag seen.
        first: String,
        /// Another.
        then: String,
    },
    /// Parts of the evidence did not fit together.
    #[error("shards: evidence: {0}")]
    Evidence(#[from] PartialError),
    /// The aggregate could not be laid out or its directory patched.
    #[error("shards: layout: {0}")]
    Layout(#[from] aggregator_codec::CodecError),
    /// A blocking task panicked, or a channel closed early.
    #[error("internal: {0}")]
    Task(String),
}

/// This process's place among the shards of every window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// How many shards share each window (> 1).
    pub count: usize,
    /// This one (0: the coordinator).
    pub index: usize,
}

/// The coordination objects' keys of one attempt at a window.
#[derive(Debug, Clone)]
pub struct AttemptKeys {
    prefix: String,
}

impl AttemptKeys {
    /// The keys of attempt `attempt` at window `w`.
    pub fn new(w: u64, attempt: u32) -> Self {
        Self {
            prefix: format!("shards/{w}/{attempt}/"),
        }
    }
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
    /// `plan.json`.
    pub fn plan(&self) -> String {
        self.key("plan.json")
    }
    fn judge(&self, round: u32, shard: usize) -> String {
        self.key(&format!("judge-{round}-{shard}.json"))
    }
    fn round(&self, round: u32) -> String {
        self.key(&format!("round-{round}.json"))
    }
    fn copies(&self) -> String {
        self.key("copies.json")
    }
    fn second(&self, shard: usize) -> String {
        self.key(&format!("second-{shard}.json"))
    }
    fn weights(&self) -> String {
        self.key("weights.json")
    }
    fn parts(&self, shard: usize) -> String {
        self.key(&format!("parts-{shard}.json"))
    }
    fn failed(&self, shard: usize) -> String {
        self.key(&format!("failed-{shard}.json"))
    }
    /// `aborted.json`.
    pub fn aborted(&self) -> String {
        self.key("aborted.json")
    }
}

/// The window and attempt the shards work on ([`CURRENT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Current {
    /// The window.
    pub window: u64,
    /// The attempt.
    pub attempt: u32,
}

/// One selected peer in the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanPeer {
    /// Its uid.
    pub uid: u16,
    /// Its bucket (with the read credentials its commitment published), if it has one.
    pub bucket: Option<BucketRecord>,
    /// Its selection weight.
    #[serde(with = "f32_exact")]
    pub weight: f32,
}

/// What the coordinator decided before any file was read (`plan.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The window.
    pub window: u64,
    /// The attempt (a new one per retry).
    pub attempt: u32,
    /// The run's version.
    pub version: String,
    /// The model's name (every shard must load the same).
    pub model: String,
    /// The shards.
    pub shards: usize,
    /// The selected peers, in selection order.
    pub peers: Vec<PlanPeer>,
    /// Valid upload times, ms (inclusive).
    pub not_before_ms: u64,
    /// Valid upload times, ms (inclusive).
    pub not_after_ms: u64,
    /// Each shard's parameters to judge.
    pub judging: Vec<Range<usize>>,
    /// The aggregate's key.
    pub key: String,
    /// The multipart upload's id.
    pub upload: String,
    /// The upload's part size.
    pub part_size: u64,
}

impl Plan {
    fn bounds(&self) -> Bounds {
        Bounds {
            not_before_ms: self.not_before_ms,
            not_after_ms: self.not_after_ms,
        }
    }

    fn requests(&self, uids: &[u16]) -> Result<(Vec<PeerRequest>, Vec<f32>), String> {
        uids.iter()
            .map(|uid| {
                let p = self
                    .peers
                    .iter()
                    .find(|p| p.uid == *uid)
                    .ok_or(format!("uid {uid} is not in the plan"))?;
                let bucket = p.bucket.as_ref().map(|b| b.bucket()).transpose()?;
                Ok((PeerRequest { uid: *uid, bucket }, p.weight))
            })
            .collect::<Result<Vec<_>, String>>()
            .map(|v| v.into_iter().unzip())
    }
}

/// One shard's judging of one round (`judge-{r}-{i}.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Judgement {
    /// The round's peers, in selection order.
    pub peers: Vec<u16>,
    /// The object seen per peer.
    pub records: Vec<Option<FileRecord>>,
    /// Why each peer is skipped (`None`: valid in this shard's range).
    pub skip: Vec<Option<SkipReason>>,
    /// Per valid peer (in order): the parameters of the range it sent.
    pub sent: Vec<Vec<usize>>,
    /// The evidence's first pass over the range, for the valid peers.
    pub first: FirstPass,
}

/// The next round's peers (`round-{r}.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Round {
    /// The peers valid in every shard's range, in selection order.
    pub peers: Vec<u16>,
}

/// What every shard writes (`weights.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// The valid peers, in selection order.
    pub live: Vec<u16>,
    /// Their aggregation weights.
    #[serde(with = "f32s_exact")]
    pub weights: Vec<f32>,
    /// The file's metadata: `timestamp`.
    pub timestamp: String,
    /// `skipped_uids`.
    pub skipped_uids: Vec<i64>,
    /// `success_rate`.
    pub success_rate: f64,
    /// The parameters the file holds (model indexes, in order).
    pub layout: Vec<usize>,
}

impl Weights {
    fn header(&self, window: u64, version: &str) -> AggregateHeader {
        AggregateHeader {
            timestamp: self.timestamp.clone(),
            window: window as i64,
            version: version.to_string(),
            skipped_uids: self.skipped_uids.clone(),
            success_rate: self.success_rate,
            global_step: 0,
        }
    }
}

/// One shard's parts (`parts-{i}.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parts {
    /// `(part index, id)` of every part it put.
    pub parts: Vec<(usize, String)>,
    /// `(layout index, CRC-32)` of every parameter it computed.
    pub crcs: Vec<(usize, u32)>,
}

/// Why a shard failed, or why the coordinator gave up (`failed-{i}.json`, `aborted.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// The error.
    pub reason: String,
}

/// Each shard's parameters to judge: contiguous ranges in shard order, as equal as whole parameters allow by their
/// output size (the proxy for their data in the peers' files).
pub fn judging_ranges(model: &ModelSpec, shards: usize) -> Vec<Range<usize>> {
    let shards = shards.max(1);
    let sizes: Vec<u64> = model.params.iter().map(|p| p.layout.packed_len() as u64).collect();
    let total: u64 = sizes.iter().sum();
    let mut ranges = Vec::with_capacity(shards);
    let (mut start, mut acc) = (0usize, 0u64);
    for s in 0..shards {
        // Shard s ends at the first parameter boundary at or past (s + 1) / shards of the total.
        let target = total * (s as u64 + 1) / shards as u64;
        let mut end = start;
        while end < sizes.len() && (acc < target || s + 1 == shards) {
            acc += sizes[end];
            end += 1;
        }
        ranges.push(start..end);
        start = end;
    }
    ranges
}

/// What one shard needs to run its part of a window.
pub struct ShardContext<'a> {
    /// The data side (its `window` and `version` must be the plan's).
    pub ranged: RangedWindow<'a>,
    /// The output bucket.
    pub output: &'a dyn ObjectStore,
    /// The output bucket's multipart API.
    pub multipart: Arc<dyn MultipartStore>,
    /// This shard.
    pub index: usize,
    /// Bound on each wait for another shard's object.
    pub wait: Duration,
}

/// What shard 0's own part hands to its coordinator: the tail's bytes (its directory's CRCs of other shards'
/// parameters still zero), where the directory starts in them, and its own parts.
pub struct Tail {
    bytes: Vec<u8>,
    directory_at: usize,
    index: usize,
    /// The whole file's length (the layout's).
    size: u64,
}

impl ShardContext<'_> {
    async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), ShardError> {
        let bytes = serde_json::to_vec(value).map_err(|e| ShardError::Task(e.to_string()))?;
        match create_once(self.output, key, Bytes::from(bytes)).await? {
            Created::Written => Ok(()),
            Created::Exists => Err(ShardError::Invalid {
                key: key.to_string(),
                why: "written already (another process has this shard's index?)".into(),
            }),
        }
    }

    /// Reads `key` if it exists.
    async fn try_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ShardError> {
        let path = ObjectPath::from(key);
        let got = match tokio::time::timeout(self.wait, self.output.get(&path)).await {
            Err(_) => {
                return Err(ShardError::Timeout {
                    key: key.to_string(),
                    after: self.wait,
                });
            }
            Ok(Err(object_store::Error::NotFound { .. })) => return Ok(None),
            Ok(Err(e)) => {
                return Err(StoreError::Object {
                    bucket: self.output.to_string(),
                    key: key.to_string(),
                    reason: e.to_string(),
                }
                .into());
            }
            Ok(Ok(g)) => g,
        };
        if got.meta.size > MAX_OBJECT_BYTES {
            return Err(ShardError::Invalid {
                key: key.to_string(),
                why: format!("{} bytes, more than {MAX_OBJECT_BYTES}", got.meta.size),
            });
        }
        let bytes = tokio::time::timeout(self.wait, got.bytes())
            .await
            .map_err(|_| ShardError::Timeout {
                key: key.to_string(),
                after: self.wait,
            })?
            .map_err(|e| StoreError::Object {
                bucket: self.output.to_string(),
                key: key.to_string(),
                reason: e.to_string(),
            })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ShardError::Invalid {
                key: key.to_string(),
                why: e.to_string(),
            })
    }

    /// The bound on a wait for another shard's step: `wait` beyond the gather's timeout (a step may include a
    /// gather that waits that long for a peer's upload); twice that for shards other than the coordinator, whose
    /// waits include the coordinator's own for the others (so it is the coordinator that gives an attempt up).
    fn bound(&self) -> Duration {
        let bound = self.wait + self.ranged.gather.timeout;
        if self.index == 0 { bound } else { 2 * bound }
    }

    /// Waits (within [`ShardContext::bound`]) for the first of `keys` to exist and returns its index and value; fails at once
    /// when the attempt is aborted or, with `watch`, when one of those shards reports a failure.
    async fn await_first<T: DeserializeOwned>(
        &self,
        keys: &AttemptKeys,
        wanted: &[String],
        watch: Range<usize>,
    ) -> Result<(usize, T), ShardError> {
        let started = Instant::now();
        loop {
            for (i, k) in wanted.iter().enumerate() {
                if let Some(v) = self.try_json::<T>(k).await? {
                    return Ok((i, v));
                }
            }
            if let Some(f) = self.try_json::<Failure>(&keys.aborted()).await? {
                return Err(ShardError::Aborted(f.reason));
            }
            for s in watch.clone() {
                if let Some(f) = self.try_json::<Failure>(&keys.failed(s)).await? {
                    return Err(ShardError::Failed {
                        shard: s,
                        reason: f.reason,
                    });
                }
            }
            if started.elapsed() > self.bound() {
                return Err(ShardError::Timeout {
                    key: wanted.join(" or "),
                    after: self.bound(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// This shard's part of attempt `plan` (steps 2, 3 and 5 of the module docs). On failure it writes
    /// `failed-{i}.json` (unless the coordinator aborted) and returns the error. Shard 0 gets the tail back.
    pub async fn work(&self, plan: &Plan) -> Result<Option<Tail>, ShardError> {
        let keys = AttemptKeys::new(plan.window, plan.attempt);
        let result = self.work_inner(plan, &keys).await;
        if let Err(e) = &result
            && !matches!(e, ShardError::Aborted(_))
        {
            let failure = Failure { reason: e.to_string() };
            if let Err(w) = self.put_json(&keys.failed(self.index), &failure).await {
                tracing::warn!(window = plan.window, shard = self.index, error = %w, "could not report this shard's failure");
            }
        }
        result
    }

    async fn work_inner(&self, plan: &Plan, keys: &AttemptKeys) -> Result<Option<Tail>, ShardError> {
        let me = self.index;
        let invalid = |why: String| ShardError::Invalid { key: keys.plan(), why };
        if plan.model != self.ranged.model.name || plan.shards != plan.judging.len() || me >= plan.shards {
            return Err(invalid(format!(
                "model {} with {} shards ({} ranges): this shard is {me} of model {}",
                plan.model,
                plan.shards,
                plan.judging.len(),
                self.ranged.model.name
            )));
        }
        let range = plan.judging[me].clone();
        if range.end > self.ranged.model.params.len() || range.start > range.end {
            return Err(invalid(format!("judging range {range:?}")));
        }
        // 2. Rounds of judging until the coordinator moves on.
        let mut uids: Vec<u16> = plan.peers.iter().map(|p| p.uid).collect();
        let mut round = 0u32;
        let (mut judging, mut indexing, mut judged_bytes) = (Duration::ZERO, Duration::ZERO, 0);
        let (mut judged, evidence_round) = loop {
            let (requests, weights) = plan.requests(&uids).map_err(invalid)?;
            let t = Instant::now();
            let rj = self
                .ranged
                .judge_range(&requests, &weights, plan.bounds(), range.clone())
                .await?;
            judging += t.elapsed();
            indexing += rj.judged.indexing;
            judged_bytes += rj.judged.read_bytes();
            let j = &rj.judged;
            let judgement = Judgement {
                peers: j.peers.clone(),
                records: j.records.clone(),
                skip: j.skip.clone(),
                sent: j
                    .live
                    .iter()
                    .map(|&i| range.clone().filter(|&pi| j.has(i, pi)).collect())
                    .collect(),
                first: rj.first_part()?,
            };
            self.put_json(&keys.judge(round, me), &judgement).await?;
            let next = [keys.round(round + 1), keys.copies(), keys.weights()];
            let (which, value) = self
                .await_first::<serde_json::Value>(keys, &next, 0..plan.shards)
                .await?;
            if which == 0 {
                let r: Round = serde_json::from_value(value).map_err(|e| ShardError::Invalid {
                    key: keys.round(round + 1),
                    why: e.to_string(),
                })?;
                uids = r.peers;
                round += 1;
                continue;
            }
            break (rj, which);
        };
        // 3. The second pass, when the coordinator found copies.
        if evidence_round == 1 {
            let copies: Copies = self
                .try_json(&keys.copies())
                .await?
                .ok_or_else(|| ShardError::Invalid {
                    key: keys.copies(),
                    why: "gone".into(),
                })?;
            let second: SecondPass = judged.second_part(&self.ranged, &copies).await?;
            self.put_json(&keys.second(me), &second).await?;
        }
        // 5. The parts.
        let (_, weights): (usize, Weights) = self.await_first(keys, &[keys.weights()], 0..0).await?;
        let live: Vec<u16> = judged.judged.live.iter().map(|&i| judged.judged.peers[i]).collect();
        if live != weights.live || weights.weights.len() != live.len() {
            return Err(ShardError::Invalid {
                key: keys.weights(),
                why: format!(
                    "valid peers {:?} with {} weights; this shard judged {live:?} valid",
                    weights.live,
                    weights.weights.len()
                ),
            });
        }
        let upload = SharedUpload::join(self.multipart.clone(), &plan.key, plan.upload.clone());
        let before = judged.judged.read_bytes();
        let t = Instant::now();
        let (parts, tail, made) = self.write_parts(plan, &judged.judged, &weights, &upload).await?;
        let writing = t.elapsed();
        self.put_json(&keys.parts(me), &parts).await?;
        // This shard's throughput, the figures docs/scale.md asks of a shard: its range judged (the indexes found,
        // a wait for uploads still landing included; then bytes of peer files read and checked per second, every
        // round), and its part of the file written (the whole phase: the groups read again, the numeric step, the
        // parts put; the numeric step's rate and the puts' rate on their own).
        let (mb, secs) = (|b: u64| b as f64 / 1e6, |d: Duration| d.as_secs_f64().max(1e-9));
        let checking = judging.saturating_sub(indexing);
        tracing::info!(
            window = plan.window,
            shard = me,
            attempt = plan.attempt,
            rounds = round + 1,
            index_s = indexing.as_secs_f64(),
            check_s = checking.as_secs_f64(),
            judged_mb = mb(judged_bytes),
            check_mb_per_s = mb(judged_bytes) / secs(checking),
            write_s = writing.as_secs_f64(),
            reread_mb = mb(judged.judged.read_bytes() - before),
            elements = made.elements,
            compute_s = made.computing.as_secs_f64(),
            g_elements_per_s = made.elements as f64 / 1e9 / secs(made.computing),
            parts_mb = mb(made.bytes),
            put_s = made.putting.as_secs_f64(),
            upload_mb_per_s = mb(made.bytes) / secs(made.putting),
            "shard figures"
        );
        Ok(tail)
    }

    /// Computes this shard's parameters, puts its parts, and (shard 0) keeps the tail.
    async fn write_parts(
        &self,
        plan: &Plan,
        judged: &Judged,
        weights: &Weights,
        upload: &SharedUpload,
    ) -> Result<(Parts, Option<Tail>, Made), ShardError> {
        let me = self.index;
        let model = self.ranged.model.clone();
        let bad_layout = || ShardError::Invalid {
            key: "weights.json".into(),
            why: "layout: parameters out of order or outside the model".into(),
        };
        if weights.layout.windows(2).any(|w| w[0] >= w[1]) || weights.layout.iter().any(|&p| p >= model.params.len()) {
            return Err(bad_layout());
        }
        let list: Vec<(String, usize)> = weights
            .layout
            .iter()
            .map(|&pi| (model.params[pi].name.clone(), model.params[pi].layout.packed_len()))
            .collect();
        let header = weights.header(plan.window, &plan.version);
        let layout = {
            let (list, header) = (list.clone(), header.clone());
            tokio::task::spawn_blocking(move || AggregateLayout::plan(&list, &header))
                .await
                .map_err(|e| ShardError::Task(e.to_string()))??
        };
        let parts = PartPlan::new(&layout, plan.part_size, plan.shards);
        let mut mine = vec![false; list.len()];
        for li in parts.params_of(&layout, me) {
            mine[li] = true;
        }
        if me == 0 {
            for li in parts.tail_params(&layout) {
                mine[li] = true;
            }
        }
        let my_parts = parts.shards[me].clone();
        let tail_range = parts.tail();

        // The writer's bytes leave a blocking thread through a channel; the pump cuts them into this shard's parts.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let sink = ForwardSink::new(move |bytes: &[u8]| {
            tx.blocking_send(bytes.to_vec())
                .map_err(|_| std::io::Error::other("the part upload ended early"))
        });
        let pump = async {
            let mut at = 0u64;
            let mut next = my_parts.start;
            let mut buf: Vec<u8> = Vec::new();
            let mut ids = Vec::new();
            let mut tail = Vec::new();
            let (mut put, mut putting) = (0u64, Duration::ZERO);
            while let Some(bytes) = rx.recv().await {
                let from = at;
                at += bytes.len() as u64;
                let take = |r: &Range<u64>, out: &mut Vec<u8>| {
                    let (lo, hi) = (r.start.max(from), r.end.min(at));
                    if lo < hi {
                        out.extend_from_slice(&bytes[(lo - from) as usize..(hi - from) as usize]);
                    }
                };
                while next < my_parts.end {
                    let r = parts.parts[next].clone();
                    take(&r, &mut buf);
                    if buf.len() as u64 == r.end - r.start {
                        put += buf.len() as u64;
                        let t = Instant::now();
                        ids.push((
                            next,
                            upload.put_part(next, Bytes::from(std::mem::take(&mut buf))).await?,
                        ));
                        putting += t.elapsed();
                        next += 1;
                    } else {
                        break;
                    }
                }
                if me == 0 {
                    take(&tail_range, &mut tail);
                }
            }
            if next != my_parts.end {
                return Err(ShardError::Task(format!(
                    "the writer ended before part {next} was whole"
                )));
            }
            Ok::<_, ShardError>((ids, tail, put, putting))
        };
        let produce = async {
            let task = |e: tokio::task::JoinError| ShardError::Task(e.to_string());
            let mut writer = tokio::task::spawn_blocking(move || AggregateWriter::begin(sink, list, &header))
                .await
                .map_err(task)??;
            let position: BTreeMap<usize, usize> =
                weights.layout.iter().enumerate().map(|(li, &pi)| (pi, li)).collect();
            let live_files: Vec<&IndexedFile> = judged.live.iter().filter_map(|&i| judged.file(i)).collect();
            let mut scratch: Vec<Vec<f32>> = vec![Vec::new(); judged.live.len()];
            let mut crcs = Vec::new();
            let (mut elements, mut computing) = (0u64, Duration::ZERO);
            let mut li = 0;
            while li < mine.len() {
                // The others' parameters up to the next of mine: zeros (their CRCs come from their shards).
                let zeros_end = (li..mine.len()).find(|&l| mine[l]).unwrap_or(mine.len());
                if zeros_end > li {
                    let lens: Vec<usize> = weights.layout[li..zeros_end]
                        .iter()
                        .map(|&pi| model.params[pi].layout.packed_len())
                        .collect();
                    writer = tokio::task::spawn_blocking(move || -> Result<_, ShardError> {
                        let zeros = vec![0u8; lens.iter().copied().max().unwrap_or(0)];
                        for len in lens {
                            writer.param(&zeros[..len])?;
                        }
                        Ok(writer)
                    })
                    .await
                    .map_err(task)??;
                    li = zeros_end;
                    continue;
                }
                // A run of mine: its parameters (model order) in groups within the budget.
                let run_end = (li..mine.len()).find(|&l| !mine[l]).unwrap_or(mine.len());
                let models = weights.layout[li]..weights.layout[run_end - 1] + 1;
                let groups = plan_groups(&model, models, &live_files, self.ranged.budget, &PutOptions::default());
                for g in groups {
                    let read = self.ranged.read_group_of(judged, g.clone()).await?;
                    let (model, backend, w, g2, position) = (
                        model.clone(),
                        self.ranged.backend.clone(),
                        weights.weights.clone(),
                        g.clone(),
                        position.clone(),
                    );
                    let (made, took);
                    (writer, scratch, made, took) = tokio::task::spawn_blocking(move || -> Result<_, ShardError> {
                        let mut s = scratch;
                        let mut made = Vec::new();
                        let mut took = Duration::ZERO;
                        let data: Vec<&[Option<SparseParam>]> = read.iter().map(|p| &p[..]).collect();
                        for (j, pi) in g2.enumerate() {
                            let Some(&l) = position.get(&pi) else { continue };
                            let spec = &model.params[pi];
                            let sent: Vec<(Option<&SparseParam>, f32)> =
                                data.iter().zip(&w).map(|(d, wt)| (d[j].as_ref(), *wt)).collect();
                            let out = vec![0u8; spec.layout.packed_len()];
                            let t = Instant::now();
                            let bits = aggregate_param(spec, backend.as_ref(), &sent, &mut s, out)
                                .map_err(BudgetError::from)?
                                .ok_or_else(|| ShardError::Task(format!("{}: no weighted peer sent it", spec.name)))?;
                            took += t.elapsed();
                            made.push((l, crc32fast::hash(&bits), spec.layout.numel() as u64));
                            writer.param(&bits)?;
                        }
                        Ok((writer, s, made, took))
                    })
                    .await
                    .map_err(task)??;
                    crcs.extend(made.iter().map(|&(l, crc, _)| (l, crc)));
                    elements += made.iter().map(|&(_, _, n)| n).sum::<u64>();
                    computing += took;
                }
                li = run_end;
            }
            tokio::task::spawn_blocking(move || writer.finish().map(drop))
                .await
                .map_err(task)??;
            Ok::<_, ShardError>((crcs, elements, computing))
        };
        let (made, pumped) = tokio::join!(produce, pump);
        let (crcs, elements, computing) = made?;
        let (ids, tail, put, putting) = pumped?;
        let tail = (me == 0).then(|| Tail {
            directory_at: (layout.directory.start - tail_range.start) as usize,
            bytes: tail,
            index: parts.parts.len() - 1,
            size: layout.len(),
        });
        let made = Made {
            elements,
            computing,
            bytes: put,
            putting,
        };
        Ok((Parts { parts: ids, crcs }, tail, made))
    }
}

/// What one shard's [`ShardContext::write_parts`] made: the parameters' elements it computed and the time the
/// numeric step took (summed over parameters; reads, encoding and waits not included), and the bytes of the parts
/// it put and the time their puts took (summed; shard 0's tail not included).
struct Made {
    elements: u64,
    computing: Duration,
    bytes: u64,
    putting: Duration,
}

/// The coordinator's view of one round: every shard's judgement.
pub(crate) struct RoundResult {
    /// Per shard.
    pub judgements: Vec<Judgement>,
}

impl RoundResult {
    /// The peers valid in every shard, in the round's order; and whether every shard found exactly those.
    pub(crate) fn intersect(&self) -> (Vec<u16>, bool) {
        let peers = &self.judgements[0].peers;
        let valid: Vec<u16> = peers
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                self.judgements
                    .iter()
                    .all(|j| j.skip.get(*i).is_some_and(Option::is_none))
            })
            .map(|(_, u)| *u)
            .collect();
        let agree = self.judgements.iter().all(|j| {
            let mine: Vec<u16> = j
                .peers
                .iter()
                .zip(&j.skip)
                .filter(|(_, s)| s.is_none())
                .map(|(u, _)| *u)
                .collect();
            mine == valid
        });
        (valid, agree)
    }
}

/// What the coordinator collected from the rounds: per selected peer, its object and its first skip reason (in
/// round order, then shard order: the model order of its first failing parameter, as on one node).
pub(crate) struct Verdicts {
    pub records: Vec<Option<FileRecord>>,
    pub skip: Vec<Option<SkipReason>>,
}

/// Folds every round's judgements into per-peer verdicts for `selected`; a peer whose ETag differs anywhere was
/// replaced during the window.
pub(crate) fn verdicts(selected: &[u16], rounds: &[RoundResult]) -> Result<Verdicts, ShardError> {
    let n = selected.len();
    let mut records: Vec<Option<FileRecord>> = vec![None; n];
    let mut skip: Vec<Option<SkipReason>> = vec![None; n];
    for round in rounds {
        for j in &round.judgements {
            for (k, uid) in j.peers.iter().enumerate() {
                let Some(i) = selected.iter().position(|u| u == uid) else {
                    continue;
                };
                if let Some(Some(rec)) = j.records.get(k) {
                    match &records[i] {
                        None => records[i] = Some(rec.clone()),
                        Some(first) if first.etag != rec.etag => {
                            return Err(ShardError::Replaced {
                                uid: *uid,
                                first: first.etag.clone().unwrap_or_default(),
                                then: rec.etag.clone().unwrap_or_default(),
                            });
                        }
                        Some(_) => {}
                    }
                }
                if skip[i].is_none()
                    && let Some(Some(reason)) = j.skip.get(k)
                {
                    skip[i] = Some(reason.clone());
                }
            }
        }
    }
    Ok(Verdicts { records, skip })
}

/// The attempts already made at window `w` (their numbers), from the bucket's listing.
pub(crate) async fn attempts(output: &dyn ObjectStore, w: u64) -> Result<Vec<u32>, StoreError> {
    let prefix = ObjectPath::from(format!("shards/{w}"));
    let listed = output
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| StoreError::Object {
            bucket: output.to_string(),
            key: prefix.to_string(),
            reason: e.to_string(),
        })?;
    Ok(listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename()?.parse().ok())
        .collect())
}

/// `call` on the output's `key`, within `bound`.
async fn within<T>(
    bound: Duration,
    key: &str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, ShardError> {
    match tokio::time::timeout(bound, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ShardError::Timeout {
            key: key.to_string(),
            after: bound,
        }),
    }
}

/// Reads the whole object `key` and returns its SHA-256 (hex) and size.
pub(crate) async fn digest(output: &dyn ObjectStore, key: &str) -> Result<(String, u64), StoreError> {
    use futures::StreamExt;
    let err = |reason: String| StoreError::Object {
        bucket: output.to_string(),
        key: key.to_string(),
        reason,
    };
    let got = output
        .get(&ObjectPath::from(key))
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut stream = got.into_stream();
    let (mut sha, mut size) = (Sha256::new(), 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| err(e.to_string()))?;
        sha.update(&chunk);
        size += chunk.len() as u64;
    }
    Ok((hex::encode(sha.finalize()), size))
}

/// Writes every CRC of `parts` (and shard 0's) into `tail`'s directory and returns the tail's bytes and part index.
pub(crate) fn finish_tail(tail: Tail, reports: &[Parts], params: usize) -> Result<(usize, Vec<u8>), ShardError> {
    let mut crcs: Vec<Option<u32>> = vec![None; params];
    for p in reports {
        for &(li, crc) in &p.crcs {
            if let Some(slot) = crcs.get_mut(li) {
                *slot = Some(crc);
            }
        }
    }
    let crcs: Vec<u32> = crcs
        .iter()
        .enumerate()
        .map(|(li, c)| c.ok_or_else(|| ShardError::Task(format!("no shard computed layout parameter {li}"))))
        .collect::<Result<_, _>>()?;
    let mut bytes = tail.bytes;
    patch_directory_crcs(&mut bytes[tail.directory_at..], &crcs)?;
    Ok((tail.index, bytes))
}

/// What the coordinator made of a window once every part is in, the upload not yet completed (its receipt is saved
/// pending first).
struct Coordinated {
    weighting: aggregator_policy::Outcome<aggregator_policy::ContributionWeighting>,
    verdicts: Verdicts,
    live: Vec<u16>,
    timestamp: String,
    /// Every part's id, in order: what completes the upload.
    ids: Vec<String>,
    /// The file's length once completed.
    size: u64,
    rounds: u32,
    /// When the tail's put began (the window's `put` phase).
    put_started: Instant,
}

impl<C: Chain + 'static> Daemon<C> {
    /// Window `w` after its decision, as shard 0 of `count` (see the module docs): the plan, its own shard's part
    /// and the coordination side by side; the receipt once the upload is complete.
    pub(crate) async fn process_sharded(
        &self,
        w: u64,
        mut report: WindowReport,
        observed: Observed,
        decision: Decision,
        budget: u64,
        count: usize,
    ) -> Result<(WindowReport, NextSelection), WindowError> {
        let cfg = &self.config;
        let multipart = self
            .multipart
            .clone()
            .ok_or_else(|| ShardError::Task("shards without a multipart client for the output bucket".into()))?;
        let attempt = attempts(self.output.as_ref(), w)
            .await
            .map_err(ShardError::from)?
            .into_iter()
            .max()
            .map_or(0, |a| a + 1);
        let keys = AttemptKeys::new(w, attempt);
        let key = aggregator_store::keys::aggregate(w, &cfg.version);
        let upload = SharedUpload::create(multipart.clone(), &key)
            .await
            .map_err(ShardError::from)?;
        let plan = Plan {
            window: w,
            attempt,
            version: cfg.version.clone(),
            model: self.model.name.clone(),
            shards: count,
            peers: decision
                .peers()
                .iter()
                .zip(decision.weights())
                .map(|(uid, weight)| PlanPeer {
                    uid: *uid,
                    bucket: observed.buckets.get(uid).map(BucketRecord::from),
                    weight,
                })
                .collect(),
            not_before_ms: decision.bounds.not_before_ms,
            not_after_ms: decision.bounds.not_after_ms,
            judging: judging_ranges(&self.model, count),
            key: key.clone(),
            upload: upload.id().to_string(),
            part_size: PutOptions::default().part_size as u64,
        };
        let ctx = ShardContext {
            ranged: self.ranged_window(w, budget),
            output: self.output.as_ref(),
            multipart,
            index: 0,
            wait: cfg.shard_wait(),
        };
        tracing::info!(window = w, attempt, shards = count, upload = %plan.upload, "window split across shards");
        let started = Instant::now();
        let (tail_tx, tail_rx) = tokio::sync::oneshot::channel();
        let announced = async {
            ctx.put_json(&keys.plan(), &plan).await?;
            let current =
                serde_json::to_vec(&Current { window: w, attempt }).map_err(|e| ShardError::Task(e.to_string()))?;
            self.output
                .put(&ObjectPath::from(CURRENT), current.into())
                .await
                .map_err(|e| StoreError::Upload {
                    key: CURRENT.into(),
                    reason: e.to_string(),
                })?;
            Ok::<(), ShardError>(())
        }
        .await;
        let outcome = match announced {
            Err(e) => Err(WindowError::from(e)),
            Ok(()) => {
                let own = async {
                    let r = ctx.work(&plan).await;
                    let failed = r
                        .as_ref()
                        .err()
                        .filter(|e| !matches!(e, ShardError::Aborted(_)))
                        .map(|e| e.to_string());
                    let _ = tail_tx.send(r.ok().flatten());
                    failed
                };
                let coordinated = self.coordinate(&ctx, &plan, &keys, &upload, &decision, &mut report, tail_rx);
                let (own, coordinated) = tokio::join!(own, coordinated);
                if let Some(e) = own {
                    tracing::warn!(window = w, shard = 0, error = %e, "this shard's part failed");
                }
                coordinated
            }
        };
        let abandon = |e: WindowError| async {
            let failure = Failure { reason: e.to_string() };
            if let Err(w2) = ctx.put_json(&keys.aborted(), &failure).await {
                tracing::warn!(window = w, error = %w2, "could not mark the attempt aborted");
            }
            if let Err(a) = upload.abort().await {
                tracing::warn!(window = w, error = %a, "aborting the output upload failed (the object stays absent)");
            }
            e
        };
        let done = match outcome {
            Ok(done) => done,
            Err(e) => return Err(abandon(e).await),
        };
        let Some(done) = done else {
            report.gather = started.elapsed();
            report.result = WindowResult::NoValidPeers;
            return Ok((report, Some(Selected::after(&decision, None))));
        };
        report.aggregated = done.live.clone();
        report.output_bytes = done.size;
        report.result = WindowResult::Stored;
        let next = Some(Selected::after(&decision, Some(&done.weighting)));
        let archived = vec![None; decision.peers().len()];
        let evidence = Evidence {
            observed: &observed,
            decision: &decision,
            weighting: Some(&done.weighting),
            files: &done.verdicts.records,
            outcomes: &done.verdicts.skip,
            archived: &archived,
        };
        let mut receipt = self.receipt(
            w,
            &evidence,
            &done.timestamp,
            // The SHA-256 needs the completed object: empty in the pending copy, filled in below, or by
            // `recover_receipts` from the stored object when this process stops in between.
            (&key, done.size, String::new()),
            &report,
        );
        receipt.shards = Some(aggregator_receipt::ShardsRecord {
            count: count as u32,
            attempt,
            rounds: done.rounds,
            judging: plan.judging.iter().map(|r| [r.start, r.end]).collect(),
        });
        self.save_pending_receipt(&receipt);
        let storage = cfg.storage_timeout();
        let completed = async {
            within(storage, &plan.key, upload.complete(done.ids)).await?;
            within(storage, &plan.key, digest(self.output.as_ref(), &plan.key)).await
        }
        .await;
        let (sha256, size) = match completed {
            Ok(d) => d,
            // The pending receipt stays: if the upload did complete, it is stored with the object's digest before
            // the retry, which then finds the aggregate stored.
            Err(e) => return Err(abandon(e.into()).await),
        };
        report.put = done.put_started.elapsed();
        tracing::info!(
            window = w,
            shards = count,
            rounds = done.rounds,
            bytes = size,
            "sharded upload completed"
        );
        if size != done.size {
            tracing::warn!(
                window = w,
                planned = done.size,
                stored = size,
                "the stored aggregate's size is not the planned one"
            );
        }
        report.output_bytes = size;
        report.output_sha256 = Some(sha256.clone());
        receipt.output.sha256 = sha256;
        receipt.output.size = size;
        receipt.timings_ms.put = Some(report.put.as_millis() as u64);
        if self.store_receipt(&receipt, "written").await {
            report.receipt = Some(aggregator_store::keys::receipt(w, &cfg.version));
        }
        self.forget_attempts(w).await;
        self.retention(w).await;
        Ok((report, next))
    }

    /// Steps 2 to 5 of the module docs on the coordinator's side; `None` when no peer is valid (the attempt is
    /// then aborted: nothing to store).
    #[allow(clippy::too_many_arguments)]
    async fn coordinate(
        &self,
        ctx: &ShardContext<'_>,
        plan: &Plan,
        keys: &AttemptKeys,
        upload: &SharedUpload,
        decision: &Decision,
        report: &mut WindowReport,
        tail: tokio::sync::oneshot::Receiver<Option<Tail>>,
    ) -> Result<Option<Coordinated>, WindowError> {
        let (w, count) = (plan.window, plan.shards);
        let started = Instant::now();
        let selected: Vec<u16> = plan.peers.iter().map(|p| p.uid).collect();
        let all = 0..count;
        // 2. Rounds until every shard finds the same peers valid.
        let mut rounds: Vec<RoundResult> = Vec::new();
        let live = loop {
            let r = rounds.len() as u32;
            let mut judgements = Vec::with_capacity(count);
            for i in 0..count {
                let (_, j): (usize, Judgement) = ctx.await_first(keys, &[keys.judge(r, i)], all.clone()).await?;
                judgements.push(j);
            }
            let round = RoundResult { judgements };
            let (valid, agree) = round.intersect();
            rounds.push(round);
            verdicts(&selected, &rounds)?;
            if agree {
                break valid;
            }
            tracing::info!(window = w, round = r + 1, valid = %crate::list(&valid), "shards disagree on validity; judging again over the peers valid in every shard");
            ctx.put_json(&keys.round(r + 1), &Round { peers: valid }).await?;
        };
        let verdicts = verdicts(&selected, &rounds)?;
        report.gather = started.elapsed();
        report.skipped = selected
            .iter()
            .zip(&verdicts.skip)
            .filter_map(|(u, s)| Some((*u, s.clone()?)))
            .collect();
        if live.is_empty() {
            let failure = Failure {
                reason: "no valid peers: nothing to store".into(),
            };
            ctx.put_json(&keys.aborted(), &failure).await?;
            upload.abort().await.map_err(ShardError::from)?;
            return Ok(None);
        }
        let started = Instant::now();
        // 3. The evidence from the shards' parts.
        let index_of = |uid: u16| selected.iter().position(|u| *u == uid).unwrap_or(0);
        let info: Vec<PeerInfo> = live
            .iter()
            .map(|&uid| {
                let i = index_of(uid);
                PeerInfo {
                    uid,
                    weight: plan.peers[i].weight,
                    last_modified_ms: verdicts.records[i].as_ref().map_or(0, |f| f.last_modified_ms),
                    sha256: None,
                }
            })
            .collect();
        let last = rounds.last().map(|r| &r.judgements[..]).unwrap_or(&[]);
        let mut ev = aggregator_window::evidence::Evidence::new(&self.model, info);
        for j in last {
            ev.absorb_first(j.first.clone()).map_err(ShardError::from)?;
        }
        if ev.copies() {
            let copies = ev
                .copy_groups()
                .ok_or_else(|| ShardError::Task("copies without groups".into()))?;
            ctx.put_json(&keys.copies(), &copies).await?;
            for i in 0..count {
                let (_, second): (usize, SecondPass) = ctx.await_first(keys, &[keys.second(i)], all.clone()).await?;
                ev.absorb_second(second).map_err(ShardError::from)?;
            }
        }
        let stats = ev.finish().map_err(ShardError::from)?;
        // 4. The weights, and the file's metadata and parameters.
        let weighting = self.weigh_stats(w, decision, stats).await?;
        let weights = weighting.value.weights.clone();
        let mut weighted_sent = vec![false; self.model.params.len()];
        for j in last {
            for (k, sent) in j.sent.iter().enumerate() {
                if weights.get(k).is_some_and(|wt| *wt != 0.0) {
                    for &pi in sent {
                        if let Some(slot) = weighted_sent.get_mut(pi) {
                            *slot = true;
                        }
                    }
                }
            }
        }
        let layout: Vec<usize> = (0..self.model.params.len()).filter(|&pi| weighted_sent[pi]).collect();
        let timestamp = aggregator_window::python_utc_now();
        let published = Weights {
            live: live.clone(),
            weights,
            timestamp: timestamp.clone(),
            skipped_uids: report.skipped.iter().map(|(u, _)| *u as i64).collect(),
            success_rate: live.len() as f64 / selected.len() as f64,
            layout,
        };
        ctx.put_json(&keys.weights(), &published).await?;
        // 5. Every shard's parts, the tail, the upload completed.
        let mut reports = Vec::with_capacity(count);
        for i in 0..count {
            let (_, parts): (usize, Parts) = ctx.await_first(keys, &[keys.parts(i)], all.clone()).await?;
            reports.push(parts);
        }
        let tail = tokio::time::timeout(ctx.bound(), tail)
            .await
            .map_err(|_| ShardError::Timeout {
                key: "shard 0's tail".into(),
                after: ctx.bound(),
            })?
            .ok()
            .flatten()
            .ok_or_else(|| ShardError::Failed {
                shard: 0,
                reason: "no tail".into(),
            })?;
        report.process = started.elapsed();
        let put_started = Instant::now();
        let size = tail.size;
        let (tail_index, tail_bytes) = finish_tail(tail, &reports, published.layout.len())?;
        let tail_id = upload
            .put_part(tail_index, Bytes::from(tail_bytes))
            .await
            .map_err(ShardError::from)?;
        let mut ids: Vec<Option<String>> = vec![None; tail_index + 1];
        ids[tail_index] = Some(tail_id);
        for (i, p) in reports.iter().enumerate() {
            for (part, id) in &p.parts {
                match ids.get_mut(*part) {
                    Some(slot @ None) => *slot = Some(id.clone()),
                    _ => {
                        return Err(ShardError::Invalid {
                            key: keys.parts(i),
                            why: format!("part {part} is not one of this upload's, or was put twice"),
                        }
                        .into());
                    }
                }
            }
        }
        let ids: Vec<String> = ids
            .into_iter()
            .enumerate()
            .map(|(part, id)| id.ok_or_else(|| ShardError::Task(format!("no shard put part {part}"))))
            .collect::<Result<_, _>>()?;
        Ok(Some(Coordinated {
            weighting,
            verdicts,
            live,
            timestamp,
            ids,
            size,
            rounds: rounds.len() as u32,
            put_started,
        }))
    }

    /// Deletes window `w`'s coordination objects (every attempt), best effort.
    async fn forget_attempts(&self, w: u64) {
        use futures::TryStreamExt;
        let prefix = ObjectPath::from(format!("shards/{w}"));
        let listed: Result<Vec<_>, _> = self.output.list(Some(&prefix)).try_collect().await;
        match listed {
            Ok(objects) => {
                for o in objects {
                    if let Err(e) = self.output.delete(&o.location).await {
                        tracing::debug!(window = w, key = %o.location, error = %e, "coordination object not deleted");
                    }
                }
            }
            Err(e) => tracing::debug!(window = w, error = %e, "coordination objects not listed"),
        }
    }
}

/// Shard `spec.index` (> 0) of every window, until `shutdown` turns true: polls [`CURRENT`], and runs its part of
/// each new attempt (see the module docs). No chain, no policies: the plan carries what the coordinator decided.
pub async fn serve_shard(
    config: &DaemonConfig,
    backend: Arc<dyn aggregator_kernels::Backend>,
    output: &aggregator_store::Bucket,
    index: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), crate::DaemonError> {
    let model =
        Arc::new(ModelSpec::load(&config.model).map_err(|e| crate::DaemonError::Config(format!("model: {e}")))?);
    let clients = aggregator_store::Clients::new(aggregator_store::ClientSettings::default());
    let store = clients.get(output)?;
    let multipart = clients.multipart(output)?;
    let budget = config.memory_budget().unwrap_or(DEFAULT_SHARD_BUDGET);
    tracing::info!(shard = index, shards = config.shards, model = %model.name, "shard waiting for work");
    let mut done: Option<Current> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(POLL * 5) => {}
        }
        if *shutdown.borrow() {
            break;
        }
        let probe = ShardContext {
            ranged: RangedWindow {
                clients: &clients,
                model: model.clone(),
                backend: backend.clone(),
                window: 0,
                version: &config.version,
                gather: GatherOptions::default(),
                budget,
            },
            output: store.as_ref(),
            multipart: multipart.clone(),
            index,
            wait: config.shard_wait(),
        };
        let current = match probe.try_json::<Current>(CURRENT).await {
            Ok(Some(c)) if Some(c) != done => c,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(shard = index, error = %e, "reading the shards' current window failed");
                continue;
            }
        };
        done = Some(current);
        let keys = AttemptKeys::new(current.window, current.attempt);
        let plan = match probe.try_json::<Plan>(&keys.plan()).await {
            Ok(Some(p)) if p.window == current.window && p.attempt == current.attempt => p,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(shard = index, window = current.window, error = %e, "the plan is unreadable");
                continue;
            }
        };
        // An attempt given up, or one this shard did before a restart, is not done again.
        let finished = [keys.aborted(), keys.parts(index), keys.failed(index)];
        let mut skip = false;
        for k in &finished {
            if !matches!(probe.try_json::<serde_json::Value>(k).await, Ok(None)) {
                skip = true;
            }
        }
        if skip {
            continue;
        }
        let ctx = ShardContext {
            ranged: RangedWindow {
                window: plan.window,
                version: &plan.version,
                gather: GatherOptions {
                    timeout: config.gather_timeout(),
                    concurrency: config.gather.concurrency,
                    ..GatherOptions::default()
                },
                ..probe.ranged
            },
            ..probe
        };
        let started = Instant::now();
        tokio::select! {
            _ = shutdown.changed() => break,
            r = ctx.work(&plan) => match r {
                Ok(_) => tracing::info!(shard = index, window = plan.window, attempt = plan.attempt,
                    secs = started.elapsed().as_secs_f64(), "shard's part of the window done"),
                Err(ShardError::Aborted(reason)) => tracing::info!(shard = index, window = plan.window,
                    attempt = plan.attempt, %reason, "the coordinator gave the attempt up"),
                Err(e) => tracing::warn!(shard = index, window = plan.window, attempt = plan.attempt, error = %e,
                    "shard's part of the window failed"),
            }
        }
    }
    Ok(())
}

/// The data budget of a shard whose configuration sets none (`memory_budget_mib` = 0).
pub const DEFAULT_SHARD_BUDGET: u64 = 4 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(etag: &str) -> Option<FileRecord> {
        Some(FileRecord {
            key: "k".into(),
            etag: Some(etag.into()),
            size: 1,
            last_modified_ms: 1,
            sha256: None,
        })
    }

    fn judgement(peers: &[u16], etags: &[&str], skip: &[Option<SkipReason>]) -> Judgement {
        Judgement {
            peers: peers.to_vec(),
            records: etags.iter().map(|e| record(e)).collect(),
            skip: skip.to_vec(),
            sent: vec![],
            first: serde_json::from_value(serde_json::json!({
                "peers": 0, "params": {"start": 0, "end": 0}, "norms": [], "slots": [], "pairs": [], "sums": []
            }))
            .unwrap(),
        }
    }

    /// A peer invalid in one shard's range is invalid for all; the first reason in shard order is kept; agreement
    /// only when every shard found the same peers valid.
    #[test]
    fn validity_is_intersected_and_the_first_reason_kept() {
        let bad = |d: &str| Some(SkipReason::Malformed { detail: d.into() });
        let round = RoundResult {
            judgements: vec![
                judgement(&[1, 2, 3], &["a", "b", "c"], &[None, None, None]),
                judgement(&[1, 2, 3], &["a", "b", "c"], &[None, bad("x"), None]),
                judgement(
                    &[1, 2, 3],
                    &["a", "b", "c"],
                    &[None, bad("y"), Some(SkipReason::Missing)],
                ),
            ],
        };
        let (valid, agree) = round.intersect();
        assert_eq!((valid, agree), (vec![1], false));
        let v = verdicts(&[1, 2, 3], std::slice::from_ref(&round)).unwrap();
        assert_eq!(v.skip, vec![None, bad("x"), Some(SkipReason::Missing)]);
        let again = RoundResult {
            judgements: vec![judgement(&[1], &["a"], &[None]), judgement(&[1], &["a"], &[None])],
        };
        assert_eq!(again.intersect(), (vec![1], true));
        verdicts(&[1, 2, 3], &[round, again]).unwrap();
    }

    /// A file whose ETag differs between shards (or rounds) was replaced mid-window: refused, naming the peer.
    #[test]
    fn a_file_seen_in_two_versions_fails_the_attempt() {
        let round = RoundResult {
            judgements: vec![
                judgement(&[4, 5], &["a", "b"], &[None, None]),
                judgement(&[4, 5], &["a", "b2"], &[None, None]),
            ],
        };
        let err = verdicts(&[4, 5], &[round]).err().unwrap();
        assert!(
            matches!(&err, ShardError::Replaced { uid: 5, first, then } if first == "b" && then == "b2"),
            "{err}"
        );
        let later = RoundResult {
            judgements: vec![judgement(&[4], &["a3"], &[None])],
        };
        let first = RoundResult {
            judgements: vec![judgement(&[4], &["a"], &[None])],
        };
        assert!(matches!(
            verdicts(&[4], &[first, later]),
            Err(ShardError::Replaced { uid: 4, .. })
        ));
    }

    /// The tail takes every CRC from the reports; one missing is refused.
    #[test]
    fn a_tail_without_every_crc_is_refused() {
        let tail = || Tail {
            bytes: vec![0; 8],
            directory_at: 0,
            index: 3,
            size: 8,
        };
        let reports = vec![Parts {
            parts: vec![],
            crcs: vec![(0, 1)],
        }];
        let err = finish_tail(tail(), &reports, 2).err().unwrap();
        assert!(err.to_string().contains("layout parameter 1"), "{err}");
    }

    /// The ranges cover every parameter once, in order, and are about equal by size.
    #[test]
    fn judging_ranges_cover_the_model_in_order() {
        let model = ModelSpec::preset("templar-1b").unwrap();
        let n = model.params.len();
        for shards in [1, 2, 3, 4, 7, n, n + 3] {
            let r = judging_ranges(&model, shards);
            assert_eq!(r.len(), shards);
            let mut next = 0;
            for g in &r {
                assert_eq!(g.start, next, "{shards}: {r:?}");
                next = g.end;
            }
            assert_eq!(next, n, "{shards}: {r:?}");
        }
        let r = judging_ranges(&model, 4);
        let size = |g: &Range<usize>| -> u64 { g.clone().map(|pi| model.params[pi].layout.packed_len() as u64).sum() };
        let total: u64 = size(&(0..n));
        let largest = model.params.iter().map(|p| p.layout.packed_len() as u64).max().unwrap();
        for g in &r {
            assert!(size(g) <= total / 4 + largest, "{g:?}: {} of {total}", size(g));
        }
    }
}
