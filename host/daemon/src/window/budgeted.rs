//! The window within a memory budget (`memory_budget_mib`): the same phases and the same output bytes as the
//! whole-file window, with at most one group of parameters of every peer's file in memory at a time.
//!
//! 1. **Gather the indexes** (`aggregator_store::gather_indexes`): each peer's `HEAD`, bounds and size cap as
//!    always, then its central directory and `data.pkl` by ranged reads pinned to its `ETag`. The parameters are cut
//!    into contiguous groups whose data, across the peers, fit the budget ([`plan_groups`]).
//! 2. **Check and weigh, group by group**: every group of every live peer is read, decoded and checked (the checks
//!    of a whole-file read), and the evidence's first pass runs over it. A peer that fails in any group is skipped
//!    in every group, as on a whole-file read; since the groups before its failure counted it, the pass is then
//!    run again over the peers left (at most once per failed peer). When the evidence finds copies, its second
//!    pass reads every group again. The `contribution-weighting` policy then decides the weights.
//! 3. **Aggregate and upload, group by group**: the file's layout (the parameters some peer of non-zero weight
//!    sent) and metadata are known, so `data.pkl` is written first and each group's packed bits follow as they are
//!    made ([`aggregator_codec::AggregateWriter`] over a forward sink), up a multipart upload
//!    ([`aggregator_store::StreamingPut`]) that nobody sees until it completes. The receipt is saved pending, then
//!    the upload is completed, then the receipt stored, as in the whole-file window.
//!
//! Reads after a peer was checked are pinned to the same `ETag`: a file replaced mid-window fails the attempt (the
//! upload is aborted: nothing is stored), and the driver retries the window, whose new gather judges the new file.
//! A window is complete or absent, never partial, never a mix of two versions of a file.
//!
//! The data side (steps 1 to 3 without the chain, the policies or the receipt) is [`RangedWindow`], apart from
//! [`Daemon`] so that `aggregator bench window --memory-budget-mib` times the daemon's own code.
//!
//! Not available within a budget (the configuration refuses them): `archive_inputs` and the shadow aggregate,
//! which need every file whole. The receipt records each file's `ETag` but no SHA-256 (no file is read whole).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aggregator_chain::Chain;
use aggregator_codec::write::ForwardSink;
use aggregator_codec::{AggregateHeader, AggregateWriter, SparseParam};
use aggregator_kernels::Backend;
use aggregator_model::ModelSpec;
use aggregator_policy::{ContributionWeighting, Outcome};
use aggregator_store::{
    Bounds, Clients, FileRecord, GatherOptions, IndexedFile, PeerRequest, PutOptions, SkipReason, StoreError,
    StreamingPut, gather_indexes, keys,
};
use aggregator_window::evidence::{
    Copies, Evidence as PeerEvidence, FirstPass, PartialError, PeerInfo, PeerStats, SecondPass,
};
use aggregator_window::{aggregate_param, python_utc_now};
use futures::StreamExt;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::decide::Decision;
use super::observe::Observed;
use super::receipt::Evidence;
use super::weigh::WeighError;
use super::{NextSelection, Selected};
use crate::daemon::Daemon;
use crate::report::{WindowReport, WindowResult};

/// Why a window within the budget failed after its peers were judged (every variant is retried by the driver).
#[derive(Debug, Error)]
pub enum BudgetError {
    /// A peer's file, already checked, could not be read again (replaced, gone, or its storage failed).
    #[error("storage: uid {uid}: {reason} (read again after it was checked; the window is retried)")]
    Reread {
        /// The peer.
        uid: u16,
        /// What the read gave.
        reason: SkipReason,
    },
    /// The output upload failed (it is aborted: nothing is stored).
    #[error("storage: {0}")]
    Upload(#[from] StoreError),
    /// The upload did not finish within `storage_timeout_s`.
    #[error("storage: {key}: upload not done within {after:?}")]
    Timeout {
        /// The aggregate's key.
        key: String,
        /// The bound.
        after: std::time::Duration,
    },
    /// The numeric step refused its inputs.
    #[error("internal: aggregate: {0}")]
    Window(#[from] aggregator_window::WindowError),
    /// The file could not be written.
    #[error("internal: encode: {0}")]
    Encode(#[from] aggregator_codec::CodecError),
    /// The evidence's passes did not cover the model (a bug, never the peers' doing).
    #[error("internal: evidence: {0}")]
    Evidence(#[from] aggregator_window::evidence::PartialError),
    /// A blocking task panicked, or the upload task ended early.
    #[error("internal: {0}")]
    Task(String),
}

/// Bytes of one parameter of one peer in memory while a group is processed, per byte of its records: the records
/// as read, the decoded indices and values, and the normalised values the kernels scatter.
const HELD_PER_RECORD_BYTE: u64 = 3;

/// What the budget keeps aside for everything but the groups' data: the process itself (runtime, policies, the
/// indexes), the upload's parts in flight and the forward sink's entry. The rest is shared by the groups.
fn fixed_overhead(model: &ModelSpec, put: &PutOptions) -> u64 {
    let largest = model
        .params
        .iter()
        .map(|p| p.layout.packed_len() as u64)
        .max()
        .unwrap_or(0);
    (256 << 20) + (put.part_size as u64) * (put.concurrency as u64 + 2) + 3 * largest
}

/// Cuts the model's parameters `params` into contiguous groups whose data, across `indexes` (the live peers' files), stay
/// within `budget` bytes less [`fixed_overhead`]: each parameter costs [`HELD_PER_RECORD_BYTE`] per byte of its
/// records in every file, plus its packed output. A parameter larger than that alone is a group of its own (the
/// budget is then exceeded by it, and the log says so).
pub(crate) fn plan_groups(
    model: &ModelSpec,
    params: Range<usize>,
    indexes: &[&IndexedFile],
    budget: u64,
    put: &PutOptions,
) -> Vec<Range<usize>> {
    let fixed = fixed_overhead(model, put);
    if budget <= fixed {
        tracing::warn!(
            budget,
            fixed,
            "the memory budget leaves nothing beyond the fixed overhead: one parameter per group"
        );
    }
    let room = budget.saturating_sub(fixed).max(1);
    let cost = |pi: usize| {
        let data: u64 = indexes.iter().map(|f| f.index.data_bytes(pi..pi + 1)).sum();
        HELD_PER_RECORD_BYTE * data + model.params[pi].layout.packed_len() as u64
    };
    let mut groups = Vec::new();
    let (mut start, mut held) = (params.start, 0u64);
    for pi in params.clone() {
        let c = cost(pi);
        if pi > start && held + c > room {
            groups.push(start..pi);
            start = pi;
            held = 0;
        }
        if c > room && budget > fixed {
            tracing::warn!(param = %model.params[pi].name, bytes = c, room, "one parameter's data exceed the memory budget");
        }
        held += c;
    }
    if start < params.end {
        groups.push(start..params.end);
    }
    groups
}

/// The output's bytes as they leave: their SHA-256 and count.
#[derive(Default)]
struct Written {
    sha: Sha256,
    bytes: u64,
}

/// The data side of a window within a memory budget, apart from the chain, the policies and the daemon's state:
/// what [`Daemon`] runs once its decision is made, and what `aggregator bench window --memory-budget-mib` times.
/// It reads no configuration of its own: every setting is a field.
pub struct RangedWindow<'a> {
    /// Clients of the peers' buckets.
    pub clients: &'a Clients,
    /// The model the files are judged against.
    pub model: Arc<ModelSpec>,
    /// The numeric backend.
    pub backend: Arc<dyn Backend>,
    /// The window.
    pub window: u64,
    /// The run's version (gradient and aggregate keys).
    pub version: &'a str,
    /// How the peers' files are found and read (its `timeout` bounds each ranged read of a group too).
    pub gather: GatherOptions,
    /// The memory budget, bytes.
    pub budget: u64,
}

/// The peers of a window judged group by group: who is valid, their files' indexes (still pinned to the `ETag`
/// first seen) and their evidence. Entries are in the order of the requests given to [`RangedWindow::judge`].
pub struct Judged {
    /// The selected uids.
    pub peers: Vec<u16>,
    /// The object seen per peer, if one was found (no SHA-256: no file is read whole).
    pub records: Vec<Option<FileRecord>>,
    /// Why each peer is skipped; `None` for a valid one.
    pub skip: Vec<Option<SkipReason>>,
    /// Indexes into `peers` of the valid peers, in order.
    pub live: Vec<usize>,
    /// The parameter groups, each within the budget.
    pub groups: Vec<Range<usize>>,
    /// The valid peers' evidence (in the order of `live`); empty when none is valid.
    pub stats: Vec<PeerStats>,
    files: Vec<Option<IndexedFile>>,
    /// See [`Judged::read_bytes`].
    read_bytes: AtomicU64,
    /// Time spent finding and indexing the files (a wait for an upload still landing included), before any group
    /// was read.
    pub indexing: Duration,
}

impl Judged {
    /// `(uid, reason)` of every skipped peer, in selection order.
    pub fn skipped(&self) -> Vec<(u16, SkipReason)> {
        skip_list(&self.peers, &self.skip)
    }

    /// Whether peer `i` (an index into `peers`) sent parameter `pi` (false for a skipped peer).
    pub fn has(&self, i: usize, pi: usize) -> bool {
        self.file(i).is_some_and(|f| f.index.has(pi))
    }

    /// Bytes of peer files fetched for parameters so far: by the judging, and by every later read of a group
    /// ([`RangedWindow::write`], the evidence's second pass, a shard's parts). The indexes' reads are not counted,
    /// nor are tensors inside the tail the index read already holds (a small file is read whole there: 0 here).
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    /// Peer `i`'s file index, pinned to the `ETag` first seen; `None` for a skipped peer.
    pub fn file(&self, i: usize) -> Option<&IndexedFile> {
        self.files.get(i).and_then(Option::as_ref)
    }

    /// The aggregate's metadata for these peers at `timestamp`.
    pub fn header(&self, window: u64, version: &str, timestamp: String) -> AggregateHeader {
        AggregateHeader {
            timestamp,
            window: window as i64,
            version: version.to_string(),
            skipped_uids: self.skipped().iter().map(|(u, _)| *u as i64).collect(),
            success_rate: self.live.len() as f64 / self.peers.len() as f64,
            global_step: 0,
        }
    }
}

/// One shard's judging of its range of parameters ([`RangedWindow::judge_range`]): who is valid in that range, and
/// the evidence's first pass over it, whose part a coordinator adds to the others'.
pub struct RangeJudged<'a> {
    /// The peers as judged over the range (`stats` empty).
    pub judged: Judged,
    /// The range.
    pub params: Range<usize>,
    evidence: PeerEvidence<'a>,
}

impl RangeJudged<'_> {
    /// The evidence's first pass over the range, for the coordinator (its peers: `judged.live`, in order).
    pub fn first_part(&self) -> Result<FirstPass, PartialError> {
        self.evidence.first_part(self.params.clone())
    }

    /// With the coordinator's copy groups: the second pass over the range (every group read again), for the
    /// coordinator.
    pub async fn second_part(&mut self, window: &RangedWindow<'_>, copies: &Copies) -> Result<SecondPass, BudgetError> {
        self.evidence.adopt(copies)?;
        window.second_pass(&self.judged, &mut self.evidence).await?;
        Ok(self.evidence.second_part(self.params.clone())?)
    }
}

/// A window's output written but not yet visible: its upload, to complete (or abort), and what it holds.
pub struct Streamed {
    /// The multipart upload, every byte sent; nobody sees the object until it is completed.
    pub upload: StreamingPut,
    /// The file's SHA-256, hex.
    pub sha256: String,
    /// The file's size.
    pub bytes: u64,
}

impl RangedWindow<'_> {
    /// Reads group `params` of each peer in `live` (indexes into `files`), `gather.concurrency` peers at a time, each
    /// within the gather timeout; one result per peer of `live`, in order, with the bytes read.
    pub(crate) async fn read_group(
        &self,
        files: &[Option<IndexedFile>],
        live: &[usize],
        params: Range<usize>,
    ) -> Vec<Result<(Vec<Option<SparseParam>>, u64), SkipReason>> {
        let timeout = self.gather.timeout;
        futures::stream::iter(live.iter().map(|&i| {
            let (model, params) = (self.model.clone(), params.clone());
            let file = files[i].clone();
            async move {
                match file {
                    Some(f) => f.read_params(params, model, timeout).await,
                    None => Err(SkipReason::Missing),
                }
            }
        }))
        .buffered(self.gather.concurrency.max(1))
        .collect()
        .await
    }

    /// Group `params` of every live peer of `judged`, read again after the peers were judged, in the order of
    /// `live`; a failed read is the window's error naming that peer (it was valid: its file changed or its storage
    /// failed).
    pub(crate) async fn read_group_of(
        &self,
        judged: &Judged,
        params: Range<usize>,
    ) -> Result<Vec<Vec<Option<SparseParam>>>, BudgetError> {
        let read = self.read_group(&judged.files, &judged.live, params).await;
        judged
            .live
            .iter()
            .zip(read)
            .map(|(&i, r)| match r {
                Ok((p, bytes)) => {
                    judged.read_bytes.fetch_add(bytes, Ordering::Relaxed);
                    Ok(p)
                }
                Err(reason) => Err(BudgetError::Reread {
                    uid: judged.peers[i],
                    reason,
                }),
            })
            .collect()
    }

    /// Steps 1 and 2 of the module docs: the indexes of `requests` (selection weights `selection_weights`, uploads
    /// inside `bounds`), the groups, every group read and checked with the evidence's passes.
    pub async fn judge(
        &self,
        requests: &[PeerRequest],
        selection_weights: &[f32],
        bounds: Bounds,
    ) -> Result<Judged, BudgetError> {
        let all = 0..self.model.params.len();
        let RangeJudged {
            mut judged,
            mut evidence,
            ..
        } = self.judge_range(requests, selection_weights, bounds, all).await?;
        if !judged.live.is_empty() {
            if evidence.copies() {
                self.second_pass(&judged, &mut evidence).await?;
            }
            judged.stats = evidence.finish()?;
        }
        Ok(judged)
    }

    /// [`RangedWindow::judge`] over parameters `params` only (a shard's range): every peer's index, then its groups
    /// within `params` read and checked, with the evidence's first pass over them; no copies looked for, no
    /// statistics made (`stats` stays empty): the evidence's part goes to a coordinator ([`RangeJudged::first_part`]).
    /// A peer whose file fails outside `params` is not seen failing here.
    pub async fn judge_range(
        &self,
        requests: &[PeerRequest],
        selection_weights: &[f32],
        bounds: Bounds,
        params: Range<usize>,
    ) -> Result<RangeJudged<'_>, BudgetError> {
        let (w, model) = (self.window, &self.model);
        let peers: Vec<u16> = requests.iter().map(|r| r.uid).collect();
        let started = Instant::now();
        let indexed = gather_indexes(
            self.clients,
            w,
            self.version,
            requests,
            bounds,
            model.clone(),
            &self.gather,
        )
        .await;
        let indexing = started.elapsed();
        let mut records: Vec<Option<FileRecord>> = Vec::with_capacity(peers.len());
        let mut skip: Vec<Option<SkipReason>> = Vec::with_capacity(peers.len());
        let mut files: Vec<Option<IndexedFile>> = Vec::with_capacity(peers.len());
        for ix in indexed {
            records.push(ix.file);
            match ix.outcome {
                Ok(f) => {
                    skip.push(None);
                    files.push(Some(f));
                }
                Err(r) => {
                    skip.push(Some(r));
                    files.push(None);
                }
            }
        }
        let live_files: Vec<&IndexedFile> = files.iter().flatten().collect();
        let groups = plan_groups(model, params.clone(), &live_files, self.budget, &PutOptions::default());
        tracing::info!(
            window = w,
            groups = groups.len(),
            params = ?params,
            budget_mib = self.budget >> 20,
            "parameters in groups within the memory budget"
        );

        // Every group checked, with the evidence's first pass; again over the peers left when one fails.
        let nones: Vec<Option<SparseParam>> = vec![None; groups.iter().map(|g| g.len()).max().unwrap_or(0)];
        let mut read_bytes = 0;
        let (live, evidence) = loop {
            let live: Vec<usize> = (0..peers.len()).filter(|&i| files[i].is_some()).collect();
            let info = live
                .iter()
                .map(|&i| PeerInfo {
                    uid: peers[i],
                    weight: selection_weights.get(i).copied().unwrap_or(0.0),
                    last_modified_ms: records[i].as_ref().map_or(0, |f| f.last_modified_ms),
                    sha256: None,
                })
                .collect();
            let mut ev = PeerEvidence::new(model, info);
            let mut failed = false;
            for g in &groups {
                let read = self.read_group(&files, &live, g.clone()).await;
                for (&i, r) in live.iter().zip(&read) {
                    // The first failure is the reason (a peer dropped earlier in this pass reads as missing).
                    if let (Err(reason), Some(_)) = (r, &files[i]) {
                        tracing::info!(window = w, uid = peers[i], %reason, params = ?g, "peer skipped: a group of its file fails");
                        skip[i] = Some(reason.clone());
                        files[i] = None;
                        failed = true;
                    }
                }
                read_bytes += read.iter().flatten().map(|(_, bytes)| bytes).sum::<u64>();
                let data: Vec<&[Option<SparseParam>]> = read
                    .iter()
                    .map(|r| r.as_ref().map_or(&nones[..g.len()], |(p, _)| &p[..]))
                    .collect();
                cpu(|| ev.first_pass(g.clone(), &data));
            }
            if !failed {
                break (live, ev);
            }
        };
        Ok(RangeJudged {
            judged: Judged {
                peers,
                records,
                skip,
                live,
                groups,
                stats: Vec::new(),
                files,
                read_bytes: AtomicU64::new(read_bytes),
                indexing,
            },
            params,
            evidence,
        })
    }

    /// The evidence's second pass over `judged`'s groups (after its copies were found or adopted), every group of
    /// the live peers read again.
    async fn second_pass(&self, judged: &Judged, evidence: &mut PeerEvidence<'_>) -> Result<(), BudgetError> {
        for g in &judged.groups {
            let read = self.read_group_of(judged, g.clone()).await?;
            let data: Vec<&[Option<SparseParam>]> = read.iter().map(|p| &p[..]).collect();
            cpu(|| evidence.second_pass(g.clone(), &data));
        }
        Ok(())
    }

    /// Step 3 of the module docs: the aggregate of `judged`'s valid peers with `weights` (one per valid peer, in
    /// the order of `live`) and metadata `header`, written group by group up a multipart upload of `key` in
    /// `output`. On any failure the upload is aborted (the object stays absent) and the error returned; on success
    /// the upload is returned not yet completed, so that the caller can record what it is about to publish first.
    pub async fn write(
        &self,
        judged: &Judged,
        weights: &[f32],
        header: AggregateHeader,
        output: &dyn ObjectStore,
        key: &str,
    ) -> Result<Streamed, BudgetError> {
        let files = &judged.files;
        let layout: Vec<(String, usize)> = self
            .model
            .params
            .iter()
            .enumerate()
            .filter(|(pi, _)| {
                judged
                    .live
                    .iter()
                    .zip(weights)
                    .any(|(&i, &wt)| wt != 0.0 && files[i].as_ref().is_some_and(|f| f.index.has(*pi)))
            })
            .map(|(_, p)| (p.name.clone(), p.layout.packed_len()))
            .collect();
        let mut upload = StreamingPut::begin(output, key, &PutOptions::default()).await?;
        let written = Arc::new(Mutex::new(Written::default()));
        let made = self
            .write_groups(judged, weights, header, layout, &mut upload, written.clone())
            .await;
        if let Err(e) = made {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(window = self.window, error = %abort, "aborting the output upload failed (the object stays absent)");
            }
            return Err(e);
        }
        let done = std::mem::take(&mut *written.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(Streamed {
            upload,
            sha256: hex::encode(done.sha.finalize()),
            bytes: done.bytes,
        })
    }

    /// Reads each group of the live peers and writes its parameters' bits into the file, whose bytes go up `upload`
    /// as they become final.
    async fn write_groups(
        &self,
        judged: &Judged,
        weights: &[f32],
        header: AggregateHeader,
        layout: Vec<(String, usize)>,
        upload: &mut StreamingPut,
        written: Arc<Mutex<Written>>,
    ) -> Result<(), BudgetError> {
        let live = &judged.live;
        // The bytes leave the blocking thread through a small channel; the upload waits for part capacity.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let sink = ForwardSink::new(move |bytes: &[u8]| {
            {
                let mut w = written.lock().unwrap_or_else(|p| p.into_inner());
                w.sha.update(bytes);
                w.bytes += bytes.len() as u64;
            }
            tx.blocking_send(bytes.to_vec())
                .map_err(|_| std::io::Error::other("the upload ended early"))
        });
        let (model, backend) = (self.model.clone(), self.backend.clone());
        let pump = async {
            while let Some(bytes) = rx.recv().await {
                upload.write(&bytes).await?;
            }
            Ok::<(), BudgetError>(())
        };
        let produce = async {
            let task = |e: tokio::task::JoinError| BudgetError::Task(e.to_string());
            // Begun while the pump runs: `data.pkl` and `byteorder` already go through the channel.
            let mut writer = tokio::task::spawn_blocking(move || AggregateWriter::begin(sink, layout, &header))
                .await
                .map_err(task)??;
            let mut scratch: Vec<Vec<f32>> = vec![Vec::new(); live.len()];
            for g in &judged.groups {
                let read = self.read_group_of(judged, g.clone()).await?;
                let (model, backend, weights, g) = (model.clone(), backend.clone(), weights.to_vec(), g.clone());
                // The group's data move to the blocking thread (no copy) and are freed there.
                (writer, scratch) = tokio::task::spawn_blocking(move || -> Result<_, BudgetError> {
                    let mut s = scratch;
                    let data: Vec<&[Option<SparseParam>]> = read.iter().map(|p| &p[..]).collect();
                    for (j, pi) in g.enumerate() {
                        let spec = &model.params[pi];
                        let sent: Vec<(Option<&SparseParam>, f32)> =
                            data.iter().zip(&weights).map(|(d, wt)| (d[j].as_ref(), *wt)).collect();
                        let out = vec![0u8; spec.layout.packed_len()];
                        if let Some(bits) = aggregate_param(spec, backend.as_ref(), &sent, &mut s, out)? {
                            writer.param(&bits)?;
                        }
                    }
                    Ok((writer, s))
                })
                .await
                .map_err(task)??;
            }
            // Completing the file drops the sink, which closes the channel: the pump then ends.
            tokio::task::spawn_blocking(move || writer.finish().map(drop))
                .await
                .map_err(task)??;
            Ok::<(), BudgetError>(())
        };
        let (made, pumped) = tokio::join!(produce, pump);
        made?;
        pumped
    }
}

impl<C: Chain + 'static> Daemon<C> {
    /// Window `w` after its decision, within `budget` bytes (see the module docs).
    pub(crate) async fn process_within_budget(
        &self,
        w: u64,
        mut report: WindowReport,
        observed: Observed,
        decision: Decision,
        budget: u64,
    ) -> Result<(WindowReport, NextSelection), super::WindowError> {
        let cfg = &self.config;
        let requests: Vec<PeerRequest> = decision
            .peers()
            .iter()
            .map(|uid| PeerRequest {
                uid: *uid,
                bucket: observed.buckets.get(uid).cloned(),
            })
            .collect();
        let ranged = self.ranged_window(w, budget);

        // 1 and 2. The indexes, every group checked, the evidence.
        let started = Instant::now();
        let judged = ranged.judge(&requests, &decision.weights(), decision.bounds).await?;
        report.gather = started.elapsed();
        let started = Instant::now();
        report.skipped = judged.skipped();
        if judged.live.is_empty() {
            report.result = WindowResult::NoValidPeers;
            return Ok((report, Some(Selected::after(&decision, None))));
        }
        let weighting = self.weigh_stats(w, &decision, judged.stats.clone()).await?;
        let next = Some(Selected::after(&decision, Some(&weighting)));

        // 3. The file, group by group, up a multipart upload.
        let timestamp = python_utc_now();
        let header = judged.header(w, &cfg.version, timestamp.clone());
        let key = keys::aggregate(w, &cfg.version);
        let streamed = ranged
            .write(&judged, &weighting.value.weights, header, self.output.as_ref(), &key)
            .await?;
        report.process = started.elapsed();
        report.aggregated = judged.live.iter().map(|&i| judged.peers[i]).collect();

        // The receipt saved pending, then the upload completed, then the receipt stored.
        let started = Instant::now();
        let archived = vec![None; judged.peers.len()];
        let evidence = Evidence {
            observed: &observed,
            decision: &decision,
            weighting: Some(&weighting),
            files: &judged.records,
            outcomes: &judged.skip,
            archived: &archived,
        };
        let (sha256, size) = (streamed.sha256, streamed.bytes);
        let mut receipt = self.receipt(w, &evidence, &timestamp, (&key, size, sha256.clone()), &report);
        self.save_pending_receipt(&receipt);
        let storage = cfg.storage_timeout();
        match tokio::time::timeout(storage, streamed.upload.complete()).await {
            Ok(r) => r.map_err(BudgetError::from)?,
            Err(_) => return Err(BudgetError::Timeout { key, after: storage }.into()),
        }
        report.output_bytes = size;
        report.put = started.elapsed();
        report.result = WindowResult::Stored;
        report.output_sha256 = Some(sha256);
        receipt.timings_ms.put = Some(report.put.as_millis() as u64);
        if self.store_receipt(&receipt, "written").await {
            report.receipt = Some(keys::receipt(w, &cfg.version));
        }
        self.retention(w).await;
        Ok((report, next))
    }

    /// The data side of window `w` within `budget` bytes, with this daemon's clients, model, backend and gather
    /// settings.
    pub(crate) fn ranged_window(&self, w: u64, budget: u64) -> RangedWindow<'_> {
        RangedWindow {
            clients: &self.clients,
            model: self.model.clone(),
            backend: self.backend.clone(),
            window: w,
            version: &self.config.version,
            gather: GatherOptions {
                timeout: self.config.gather_timeout(),
                concurrency: self.config.gather.concurrency,
                ..GatherOptions::default()
            },
            budget,
        }
    }

    /// The contribution-weighting call on the evidence `stats` (valid peers in selection order), on a blocking
    /// thread, logged and counted as [`Daemon::weigh`] does.
    pub(crate) async fn weigh_stats(
        &self,
        w: u64,
        d: &Decision,
        stats: Vec<PeerStats>,
    ) -> Result<Outcome<ContributionWeighting>, WeighError> {
        let (policies, n) = (self.policies.clone(), self.model.params.len());
        let chain = d.selection.input.chain;
        let state = hex::decode(&self.state.weighting_state).unwrap_or_default();
        let outcome = tokio::task::spawn_blocking(move || {
            policies.weigh(aggregator_receipt::weighting_input(chain, stats, n, state))
        })
        .await
        .map_err(|e| WeighError::Panicked(e.to_string()))??;
        self.log_weighting(w, &outcome);
        Ok(outcome)
    }
}

/// Runs CPU-bound work from an async task: on a multi-threaded runtime with `block_in_place` (other tasks move to
/// other threads meanwhile); inline on a single-threaded one.
fn cpu<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn skip_list(peers: &[u16], skip: &[Option<SkipReason>]) -> Vec<(u16, SkipReason)> {
    peers
        .iter()
        .zip(skip)
        .filter_map(|(u, s)| Some((*u, s.clone()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups are contiguous, cover every parameter once, and shrink as the budget does, down to one parameter each.
    #[test]
    fn groups_cover_the_model_and_fit_the_budget() {
        let model = ModelSpec::preset("tiny").unwrap();
        let put = PutOptions::default();
        let n = model.params.len();
        let fixed = fixed_overhead(&model, &put);
        let check = |groups: &[Range<usize>]| {
            let mut next = 0;
            for g in groups {
                assert_eq!(g.start, next, "{groups:?}");
                assert!(!g.is_empty());
                next = g.end;
            }
            assert_eq!(next, n);
        };
        // No files: each parameter costs its output alone.
        let whole = plan_groups(&model, 0..n, &[], fixed + (1 << 30), &put);
        assert_eq!(whole, vec![0..n]);
        let tight = plan_groups(&model, 0..n, &[], 1, &put);
        assert_eq!(tight.len(), n, "one parameter per group");
        check(&tight);
        let largest = model.params.iter().map(|p| p.layout.packed_len() as u64).max().unwrap();
        let some = plan_groups(&model, 0..n, &[], fixed + 2 * largest, &put);
        check(&some);
        assert!(some.len() > 1 && some.len() < n, "{some:?}");
        for g in &some {
            let held: u64 = g.clone().map(|pi| model.params[pi].layout.packed_len() as u64).sum();
            assert!(held <= 2 * largest || g.len() == 1, "{g:?}: {held}");
        }
        // A shard's range: groups of that range only, covering it.
        let range = plan_groups(&model, 1..n - 1, &[], 1, &put);
        assert_eq!(range, (1..n - 1).map(|i| i..i + 1).collect::<Vec<_>>());
        assert_eq!(
            plan_groups(&model, 1..n - 1, &[], fixed + (1 << 30), &put),
            vec![1..n - 1]
        );
        assert!(plan_groups(&model, 2..2, &[], 1, &put).is_empty());
    }
}
