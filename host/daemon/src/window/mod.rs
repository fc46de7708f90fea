//! One window, phase by phase, one file each: [`observe`] (chain reads) → [`decide`] (the policies) → [`gather`]
//! (peer files inside the bounds) → [`weigh`] (evidence about the files, and the contribution weights) →
//! [`aggregate`] (the numeric step and encoding) → [`publish`] (the existence check, the put, retention), with [`receipt`] (what produced the aggregate, written beside it, and the archived
//! inputs). Each phase has its own error enum; [`WindowError`] composes them. What happens between windows (queue,
//! retries, state) is the driver's ([`crate::driver`]).

pub(crate) mod aggregate;
pub(crate) mod budgeted;
pub(crate) mod decide;
pub(crate) mod gather;
pub(crate) mod observe;
pub(crate) mod publish;
pub(crate) mod receipt;
pub(crate) mod shadow;
pub mod shard;
pub(crate) mod weigh;

use std::time::Instant;

use aggregator_chain::Chain;
use aggregator_store::{SkipReason, keys};
use aggregator_window::PeerInput;
use thiserror::Error;

use self::receipt::Evidence;

use crate::daemon::Daemon;
use crate::report::{WindowReport, WindowResult};
pub use aggregate::AggregateError;
pub use budgeted::{BudgetError, Judged, RangeJudged, RangedWindow, Streamed};
pub use decide::DecideError;
pub use observe::ObserveError;
pub use publish::PublishError;
pub use shard::ShardError;
pub use weigh::WeighError;

/// Why an attempt at a window failed. Every variant is a transient failure worth a retry (the driver retries it);
/// a peer's bad file is not an error but that peer's outcome.
#[derive(Debug, Error)]
pub enum WindowError {
    /// Reading the chain.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// Running the policies.
    #[error(transparent)]
    Decide(#[from] DecideError),
    /// The contribution-weighting policy.
    #[error(transparent)]
    Weigh(#[from] WeighError),
    /// The numeric step or encoding.
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    /// The output bucket.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A window within the memory budget, after its peers were judged.
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// A window split across shards.
    #[error(transparent)]
    Shard(#[from] ShardError),
}

impl WindowError {
    /// The kind counted in `aggregator_errors_total{kind}`: `chain`, `policy`, `storage` or `internal`.
    pub fn kind(&self) -> crate::metrics::ErrorKind {
        use crate::metrics::ErrorKind;
        match self {
            WindowError::Observe(_) => ErrorKind::Chain,
            WindowError::Decide(DecideError::Policy(_)) | WindowError::Weigh(WeighError::Policy(_)) => {
                ErrorKind::Policy
            }
            WindowError::Decide(DecideError::Panicked(_))
            | WindowError::Weigh(WeighError::Panicked(_))
            | WindowError::Aggregate(_) => ErrorKind::Internal,
            WindowError::Publish(_) => ErrorKind::Storage,
            WindowError::Budget(BudgetError::Reread { .. } | BudgetError::Upload(_) | BudgetError::Timeout { .. }) => {
                ErrorKind::Storage
            }
            WindowError::Budget(_) => ErrorKind::Internal,
            WindowError::Shard(ShardError::Budget(
                BudgetError::Reread { .. } | BudgetError::Upload(_) | BudgetError::Timeout { .. },
            ))
            | WindowError::Shard(
                ShardError::Store(_)
                | ShardError::Timeout { .. }
                | ShardError::Aborted(_)
                | ShardError::Failed { .. }
                | ShardError::Replaced { .. },
            ) => ErrorKind::Storage,
            WindowError::Shard(_) => ErrorKind::Internal,
        }
    }
}

/// What to keep after a window (none when nothing was decided).
pub(crate) type NextSelection = Option<Selected>;

/// The peers and policy states to keep after a window.
pub(crate) struct Selected {
    /// The peers in use.
    pub peers: Vec<u16>,
    /// The peer-selection policy's new state.
    pub state: Vec<u8>,
    /// The peer-selection shadow candidate's new state, when it decided.
    pub shadow_state: Option<Vec<u8>>,
    /// The contribution-weighting policy's new state, when it was called.
    pub weighting_state: Option<Vec<u8>>,
}

impl Selected {
    /// What to keep after a window decided by `decision` and weighed by `weighting` (none: not weighed).
    pub(crate) fn after(
        decision: &decide::Decision,
        weighting: Option<&aggregator_policy::Outcome<aggregator_policy::ContributionWeighting>>,
    ) -> Self {
        Selected {
            peers: decision.selection.value.peers.clone(),
            state: decision.selection.value.state.clone(),
            shadow_state: decision
                .shadow
                .peer_selection
                .as_ref()
                .and_then(|c| Some(c.decision.as_ref()?.state.clone())),
            weighting_state: weighting.map(|o| o.value.state.clone()),
        }
    }
}

impl<C: Chain + 'static> Daemon<C> {
    /// One window, start to end: the phases in order, each timed into the report.
    pub(crate) async fn process(&self, w: u64) -> Result<(WindowReport, NextSelection), WindowError> {
        let mut report = WindowReport::new(w, WindowResult::AlreadyStored);
        self.recover_receipts().await;
        if self.already_stored(w).await? {
            return Ok((report, None));
        }
        self.policies.begin_window();

        let started = Instant::now();
        let observed = self.observe(w).await?;
        let mut decision = self.decide(w, &observed).await?;
        report.bounds = (decision.bounds.not_before_ms, decision.bounds.not_after_ms);
        report.selected = decision.peers().to_vec();
        report.chain = started.elapsed();
        if let Some(count) = self.config.shards() {
            let budget = self.config.memory_budget().unwrap_or(shard::DEFAULT_SHARD_BUDGET);
            return self.process_sharded(w, report, observed, decision, budget, count).await;
        }
        if let Some(budget) = self.config.memory_budget() {
            return self.process_within_budget(w, report, observed, decision, budget).await;
        }

        let started = Instant::now();
        // The output's memory is mapped on a blocking thread while the gather waits on the peers' downloads.
        let buffers = self.prefault_output();
        let gathered = self.gather(w, &observed, &decision).await;
        report.gather = started.elapsed();

        let started = Instant::now();
        let (mut gathered, weighting) = self.weigh(w, &decision, gathered).await?;
        let weighed = started.elapsed();

        let outcomes: Vec<Option<SkipReason>> = gathered
            .inputs
            .iter()
            .map(|(_, i)| match i {
                PeerInput::Skipped(r) => Some(r.clone()),
                PeerInput::Valid { .. } => None,
            })
            .collect();
        let started = Instant::now();
        let shadow_aggregate = self.config.policy.shadow_aggregate && decision.shadow.peer_selection.is_some();
        let inputs = std::mem::take(&mut gathered.inputs);
        let mut aggregated = self.aggregate(w, inputs, shadow_aggregate, buffers).await?;
        report.process = started.elapsed() + weighed;
        report.aggregated = aggregated.valid.clone();
        report.skipped = aggregated.skipped.clone();

        let next = Some(Selected::after(&decision, weighting.as_ref()));
        let Some(bytes) = aggregated.bytes.take() else {
            report.result = WindowResult::NoValidPeers;
            return Ok((report, next));
        };
        if let Some(stored) = aggregated.file.take() {
            let inputs = std::mem::take(&mut aggregated.inputs);
            let record = self.shadow_aggregate(w, &observed, &decision, inputs, &stored).await;
            match record.sign_agreement {
                Some(f) => {
                    self.metrics.shadow_sign_agreement(f);
                    tracing::info!(window = w, sign_agreement = f, aggregated = %crate::list(&record.aggregated),
                        fetched = %crate::list(&record.fetched), "shadow aggregate compared (not stored)");
                }
                None => tracing::warn!(
                    window = w,
                    error = record.error.as_deref().unwrap_or(""),
                    "shadow aggregate not computed (the window is unaffected)"
                ),
            }
            decision.shadow.aggregate = Some(record);
        }
        let started = Instant::now();
        let archived = if self.config.archive_inputs {
            self.archive(w, decision.peers(), gathered.bodies).await?
        } else {
            vec![None; outcomes.len()]
        };
        let key = keys::aggregate(w, &self.config.version);
        let sha256 = aggregated.sha256.clone();
        let evidence = Evidence {
            observed: &observed,
            decision: &decision,
            weighting: weighting.as_ref(),
            files: &gathered.files,
            outcomes: &outcomes,
            archived: &archived,
        };
        let mut receipt = self.receipt(
            w,
            &evidence,
            &aggregated.timestamp,
            (&key, bytes.len() as u64, sha256.clone()),
            &report,
        );
        self.save_pending_receipt(&receipt);
        report.output_bytes = self.publish(w, bytes).await?;
        report.put = started.elapsed();
        report.result = WindowResult::Stored;
        report.output_sha256 = Some(sha256);
        receipt.timings_ms.put = Some(report.put.as_millis() as u64);
        if self.store_receipt(&receipt, "written").await {
            report.receipt = Some(keys::receipt(w, &self.config.version));
        }
        self.retention(w).await;
        Ok((report, next))
    }
}
