//! Observe: what the chain says about a window. `Timestamp::Now` at the sync block, the metagraph, the commitments
//! (uid → bucket) and the leader's posted peer lists, all bounded together by `chain_timeout_s`.

use std::collections::BTreeMap;

use aggregator_chain::{Chain, ChainError, Metagraph, sync_block};
use aggregator_codec::PeerList;
use aggregator_store::{Bucket, posted_lists};
use thiserror::Error;

use crate::daemon::Daemon;

/// Why the chain stage failed.
#[derive(Debug, Error)]
pub enum ObserveError {
    /// A chain read failed.
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
}

/// What the chain stage read for a window.
pub(crate) struct Observed {
    /// The sync block (the first block of the next window).
    pub sync: u64,
    /// `Timestamp::Now` at the sync block, if it could be read.
    pub timestamp: Option<u64>,
    /// The sync block's hash, if the chain gave one.
    pub sync_hash: Option<String>,
    /// The finalized head when the window was read, if it could be read.
    pub head: Option<u64>,
    /// The metagraph at the sync block (or the current one when that block is pruned).
    pub metagraph: Metagraph,
    /// Each uid's bucket, from commitments that parse.
    pub buckets: BTreeMap<u16, Bucket>,
    /// The leader's newest posted list.
    pub latest: Option<(u64, PeerList)>,
    /// The leader's second newest posted list.
    pub previous: Option<(u64, PeerList)>,
}

impl<C: Chain + 'static> Daemon<C> {
    /// The chain stage of window `w`, bounded by `chain_timeout_s` (a stage that takes longer fails the window).
    pub(crate) async fn observe(&self, w: u64) -> Result<Observed, ObserveError> {
        let cfg = &self.config;
        tokio::time::timeout(cfg.chain_timeout(), self.read_chain(w))
            .await
            .map_err(|_| {
                ChainError::Timeout(format!(
                    "window {w}'s chain stage (over chain_timeout_s = {})",
                    cfg.chain_timeout_s
                ))
            })?
    }

    async fn metagraph(&self, block: u64) -> Result<Metagraph, ChainError> {
        match self.chain.metagraph(self.config.netuid, Some(block)).await {
            // A pruned sync block (a long backfill on a lite node): the current metagraph, as Templar uses.
            Err(ChainError::BlockNotFound(_)) => self.chain.metagraph(self.config.netuid, None).await,
            other => other,
        }
    }

    /// The bucket of a commitment that passed Templar's rule; one that does not parse is logged with its uid and
    /// hotkey and counted (`commitments_skipped{label="bucket"}`), and the peer has no bucket.
    fn peer_bucket(&self, uid: u16, hotkey: &str, text: &str) -> Option<Bucket> {
        let b = match Bucket::from_commitment(text) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(uid, hotkey, reason = %e, "commitment skipped: not a bucket");
                self.metrics.commitments_skipped("bucket", 1);
                return None;
            }
        };
        Some(match self.config.peer_endpoint() {
            Some(e) => b.at(e),
            None => b,
        })
    }

    /// The reads themselves (unbounded; [`Daemon::observe`] bounds them). Unreadable posted lists are logged and
    /// taken as absent; a missing timestamp is logged and left to the time-bounds policy's fallback.
    async fn read_chain(&self, w: u64) -> Result<Observed, ObserveError> {
        let cfg = &self.config;
        let sync = sync_block(w, cfg.blocks_per_window);
        let timestamp = match self.chain.timestamp_ms(sync).await {
            Ok(ts) => Some(ts),
            Err(e) => {
                self.metrics.error(crate::metrics::ErrorKind::ChainTimestamp);
                tracing::warn!(window = w, block = sync, error = %e, "no timestamp; the time-bounds policy falls back");
                None
            }
        };
        let sync_hash = self.chain.block_hash(sync).await.unwrap_or_else(|e| {
            self.metrics.error(crate::metrics::ErrorKind::ChainBlockHash);
            tracing::warn!(window = w, block = sync, error = %e, "no block hash for the receipt");
            None
        });
        let head = self.chain.head().await.ok();
        let metagraph = self.metagraph(sync).await?;
        for d in &metagraph.defaulted {
            self.metrics.chain_value_defaulted(d.field);
        }
        let commitments = self.chain.commitments(&metagraph).await?;
        // (each skip at the chain read was logged there with its hotkey and reason)
        self.metrics.commitments_skipped("rule", commitments.skipped.len());
        let buckets: BTreeMap<u16, Bucket> = commitments
            .by_uid
            .iter()
            .filter_map(|(uid, c)| {
                let hotkey = metagraph.by_uid(*uid).map_or("?", |n| n.hotkey_ss58.as_str());
                Some((*uid, self.peer_bucket(*uid, hotkey, &c.text)?))
            })
            .collect();
        let storage = cfg.storage_timeout();
        let (latest, previous) = match metagraph.leader().and_then(|l| buckets.get(&l.uid).map(|b| (l.uid, b))) {
            Some((leader, bucket)) => match self.clients.get(bucket) {
                Ok(store) => match posted_lists(store.as_ref(), &cfg.version, storage).await {
                    Ok(lists) => {
                        if lists.0.is_none() {
                            tracing::warn!(
                                window = w,
                                leader,
                                "the leader has posted no peer list: the peer-selection policy decides without one"
                            );
                        }
                        lists
                    }
                    Err(e) => {
                        self.metrics.error(crate::metrics::ErrorKind::PeerList);
                        tracing::warn!(window = w, leader, error = %e, "cannot read the leader's peer lists");
                        (None, None)
                    }
                },
                Err(e) => {
                    self.metrics.error(crate::metrics::ErrorKind::PeerList);
                    tracing::warn!(window = w, leader, error = %e, "leader bucket");
                    (None, None)
                }
            },
            None => {
                tracing::warn!(window = w, "no leader with a bucket commitment: no posted peer lists");
                (None, None)
            }
        };
        Ok(Observed {
            sync,
            timestamp,
            sync_hash,
            head,
            metagraph,
            buckets,
            latest,
            previous,
        })
    }
}
