//! Receipt: what produced the window's aggregate (`aggregator_receipt::Receipt`), written beside it as
//! `receipt-{w}-v{V}.json`, and the archived inputs (`archive_inputs`).
//!
//! **Order of the writes.** The archived inputs are put first, then the receipt is saved in the state directory
//! (`pending-receipts/`), then the aggregate is put, then the receipt, and only then is the pending copy removed.
//! A crash or a failed receipt put between the two puts leaves the pending copy: before its next window the daemon
//! stores it if its aggregate exists (`receipts{label="recovered"}`), or drops it if the aggregate was never stored
//! (the window is redone and writes a new one). So a stored aggregate always gets its receipt unless the state
//! directory itself is lost; a stored aggregate found without either is counted in `windows_without_receipt`.
//! A sharded window's receipt is saved pending before its multipart upload completes, with an empty `sha256` (no
//! process holds the whole file): it is filled in from the completed object, by the window or, after a crash, here
//! (the stored object read back and digested) before the receipt is stored.

use std::time::Duration;

use aggregator_chain::Chain;
use aggregator_receipt::{
    BucketRecord, ChainRecord, HostRecord, OutputRecord, PeerOutcome, PeerRecord, PolicyCall, PolicyRecords, Receipt,
    SCHEMA_VERSION, SkipRecord, Timings,
};
use aggregator_store::{SkipReason, keys};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use super::decide::Decision;
use super::observe::Observed;
use super::publish::PublishError;
use crate::daemon::Daemon;
use crate::report::WindowReport;

/// What the receipt needs from the phases, gathered as they run.
pub(crate) struct Evidence<'a> {
    pub observed: &'a Observed,
    pub decision: &'a Decision,
    /// The contribution-weighting call (none when no peer was valid).
    pub weighting: Option<&'a aggregator_policy::Outcome<aggregator_policy::ContributionWeighting>>,
    /// Each selected peer's file record, in selection order.
    pub files: &'a [Option<aggregator_store::FileRecord>],
    /// Each selected peer's skip reason (none: aggregated), in selection order.
    pub outcomes: &'a [Option<SkipReason>],
    /// Each selected peer's archived key, in selection order.
    pub archived: &'a [Option<String>],
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl<C: Chain + 'static> Daemon<C> {
    /// The window's receipt (its `put` timing still open).
    pub(crate) fn receipt(
        &self,
        w: u64,
        e: &Evidence<'_>,
        timestamp: &str,
        output: (&str, u64, String),
        report: &WindowReport,
    ) -> Receipt {
        let weights = e.decision.weights();
        let peers = e
            .decision
            .peers()
            .iter()
            .enumerate()
            .map(|(i, uid)| {
                let skip = e.outcomes.get(i).cloned().flatten();
                PeerRecord {
                    uid: *uid,
                    weight: weights[i],
                    bucket: e.observed.buckets.get(uid).map(BucketRecord::from),
                    file: e.files.get(i).cloned().flatten(),
                    outcome: if skip.is_some() {
                        PeerOutcome::Skipped
                    } else {
                        PeerOutcome::Aggregated
                    },
                    skip: skip.map(|r| SkipRecord {
                        kind: r.kind().label().to_string(),
                        reason: r.to_string(),
                    }),
                    archived: e.archived.get(i).cloned().flatten(),
                }
            })
            .collect();
        let (key, size, sha256) = output;
        let mut receipt = Receipt {
            schema_version: SCHEMA_VERSION,
            window: w,
            version: self.config.version.clone(),
            model: self.model.name.clone(),
            host: HostRecord::this(),
            chain: ChainRecord {
                sync_block: e.observed.sync,
                sync_block_hash: e.observed.sync_hash.clone(),
                timestamp_ms: e.observed.timestamp,
                head: e.observed.head,
                metagraph_block: e.observed.metagraph.block,
            },
            policies: PolicyRecords {
                time_bounds: PolicyCall::from(&e.decision.time_bounds),
                peer_selection: PolicyCall::from(&e.decision.selection),
                contribution_weighting: e.weighting.map(PolicyCall::from),
                evidence_order: aggregator_window::evidence::EvidenceOrder::ByParameter,
            },
            peers,
            backend: self.backend.name().to_string(),
            output: OutputRecord {
                key: key.to_string(),
                size,
                sha256,
                timestamp: timestamp.to_string(),
            },
            timings_ms: Timings {
                chain: ms(report.chain),
                gather: ms(report.gather),
                process: ms(report.process),
                put: None,
            },
            shadow: e.decision.shadow.clone(),
            shards: None,
        };
        // Each peer at the weight it was aggregated at (the contribution weighting's, for the valid ones).
        let weights = receipt.aggregation_weights();
        for (p, w) in receipt.peers.iter_mut().zip(weights) {
            p.weight = w;
        }
        receipt
    }

    /// Copies each aggregated peer's file into the output bucket (`archive_inputs`); returns each peer's key.
    pub(crate) async fn archive(
        &self,
        w: u64,
        uids: &[u16],
        bodies: Vec<Option<Bytes>>,
    ) -> Result<Vec<Option<String>>, PublishError> {
        let mut keys_out = Vec::with_capacity(bodies.len());
        for (uid, body) in uids.iter().zip(bodies) {
            let Some(body) = body else {
                keys_out.push(None);
                continue;
            };
            let key = keys::archived_input(w, *uid, &self.config.version);
            self.put_within(&key, body).await?;
            keys_out.push(Some(key));
        }
        Ok(keys_out)
    }

    /// Saves the receipt in the state directory before the aggregate's put (see the module docs). A failure is
    /// logged and counted; the window goes on (its receipt is then written only if its own put succeeds).
    pub(crate) fn save_pending_receipt(&self, r: &Receipt) {
        if let Err(e) = self.pending.save(r.window, &r.to_json()) {
            self.metrics.error(crate::metrics::ErrorKind::ReceiptPending);
            tracing::warn!(window = r.window, error = %e, "cannot save the pending receipt");
        }
    }

    /// Puts the receipt beside the aggregate; on success the pending copy goes, on failure it is kept (updated) for
    /// [`Daemon::recover_receipts`]. Never fails the window: the aggregate is already stored.
    /// `label` is the `receipts` counter to count a success in (`written`, `recovered`).
    pub(crate) async fn store_receipt(&self, r: &Receipt, label: &str) -> bool {
        let key = keys::receipt(r.window, &r.version);
        match self.put_within(&key, Bytes::from(r.to_json())).await {
            Ok(()) => {
                self.pending.remove(r.window);
                self.metrics.receipt(label);
                true
            }
            Err(error) => {
                self.metrics.receipt("failed");
                tracing::warn!(window = r.window, %key, %error, "receipt not stored; kept to be stored before the next window");
                self.save_pending_receipt(r);
                false
            }
        }
    }

    /// Stores or drops the receipts left pending by a failed put or a crash (see the module docs).
    pub(crate) async fn recover_receipts(&self) {
        let storage = self.config.storage_timeout();
        for (w, path) in self.pending.list() {
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| Receipt::from_json(&b, &path.display().to_string()).map_err(|e| e.to_string()));
            let receipt = match parsed {
                Ok(r) if r.window == w => r,
                Ok(r) => {
                    tracing::warn!(file = %path.display(), window = r.window, "pending receipt for another window; dropped");
                    self.pending.remove(w);
                    continue;
                }
                Err(error) => {
                    self.metrics.error(crate::metrics::ErrorKind::ReceiptPending);
                    tracing::warn!(file = %path.display(), %error, "unreadable pending receipt; dropped");
                    self.pending.remove(w);
                    continue;
                }
            };
            let aggregate = ObjectPath::from(receipt.output.key.as_str());
            match tokio::time::timeout(storage, self.output.head(&aggregate)).await {
                Ok(Ok(meta)) if meta.size == receipt.output.size => {
                    let mut receipt = receipt;
                    if receipt.output.sha256.is_empty() {
                        // A sharded window's, saved before its upload completed: the digest is the stored object's.
                        let key = receipt.output.key.clone();
                        match tokio::time::timeout(storage, super::shard::digest(self.output.as_ref(), &key)).await {
                            Ok(Ok((sha256, size))) if size == receipt.output.size => receipt.output.sha256 = sha256,
                            Ok(Ok((_, size))) => {
                                tracing::warn!(
                                    window = w,
                                    stored = size,
                                    recorded = receipt.output.size,
                                    "pending receipt: the stored aggregate changed size while read; kept"
                                );
                                continue;
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(window = w, error = %e, "pending receipt: the aggregate's digest failed; kept");
                                continue;
                            }
                            Err(_) => {
                                tracing::warn!(
                                    window = w,
                                    "pending receipt: the aggregate's digest took too long; kept"
                                );
                                continue;
                            }
                        }
                    }
                    if self.store_receipt(&receipt, "recovered").await {
                        tracing::info!(window = w, "pending receipt stored beside its aggregate");
                    }
                }
                Ok(Ok(meta)) => {
                    tracing::warn!(
                        window = w,
                        stored = meta.size,
                        recorded = receipt.output.size,
                        "pending receipt does not describe the stored aggregate; dropped"
                    );
                    self.pending.remove(w);
                }
                Ok(Err(object_store::Error::NotFound { .. })) => {
                    // The aggregate's put never completed: the window is redone and writes a new receipt.
                    self.pending.remove(w);
                }
                Ok(Err(e)) => tracing::warn!(window = w, error = %e, "pending receipt: output bucket; kept"),
                Err(_) => tracing::warn!(window = w, "pending receipt: no answer from the output bucket; kept"),
            }
        }
    }
}
