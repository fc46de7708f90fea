//! One window, phase by phase, one file each: [`observe`] (chain reads) → [`decide`] (the policies) → [`gather`]
//! (peer files inside the bounds) → [`aggregate`] (the numeric step and encoding) → [`publish`] (the existence
//! check, the put, retention). Each phase has its own error enum; [`WindowError`] composes them. What happens
//! between windows (queue, retries, state) is the driver's ([`crate::driver`]).

pub(crate) mod aggregate;
pub(crate) mod decide;
pub(crate) mod gather;
pub(crate) mod observe;
pub(crate) mod publish;

use std::time::Instant;

use aggregator_chain::Chain;
use thiserror::Error;

use crate::daemon::Daemon;
use crate::report::{WindowReport, WindowResult};
pub use aggregate::AggregateError;
pub use decide::DecideError;
pub use observe::ObserveError;
pub use publish::PublishError;

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
    /// The numeric step or encoding.
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    /// The output bucket.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl WindowError {
    /// The `errors{label}` metrics label: `chain`, `policy`, `storage` or `internal`.
    pub fn kind(&self) -> &'static str {
        match self {
            WindowError::Observe(_) => "chain",
            WindowError::Decide(DecideError::Policy(_)) => "policy",
            WindowError::Decide(DecideError::Panicked(_)) | WindowError::Aggregate(_) => "internal",
            WindowError::Publish(_) => "storage",
        }
    }
}

/// The peers and policy state to keep after a window (none when nothing was decided).
pub(crate) type NextSelection = Option<(Vec<u16>, Vec<u8>)>;

impl<C: Chain + 'static> Daemon<C> {
    /// One window, start to end: the phases in order, each timed into the report.
    pub(crate) async fn process(&self, w: u64) -> Result<(WindowReport, NextSelection), WindowError> {
        let mut report = WindowReport::new(w, WindowResult::AlreadyStored);
        if self.already_stored(w).await? {
            return Ok((report, None));
        }
        self.policies.begin_window();

        let started = Instant::now();
        let observed = self.observe(w).await?;
        let decision = self.decide(w, &observed).await?;
        report.bounds = (decision.bounds.not_before_ms, decision.bounds.not_after_ms);
        report.selected = decision.selection.peers.clone();
        report.chain = started.elapsed();

        let started = Instant::now();
        let inputs = self.gather(w, &observed, &decision).await;
        report.gather = started.elapsed();

        let started = Instant::now();
        let aggregated = self.aggregate(w, inputs).await?;
        report.process = started.elapsed();
        report.aggregated = aggregated.valid;
        report.skipped = aggregated.skipped;

        let next = Some((decision.selection.peers, decision.selection.state));
        let Some(bytes) = aggregated.bytes else {
            report.result = WindowResult::NoValidPeers;
            return Ok((report, next));
        };
        let started = Instant::now();
        report.output_bytes = self.publish(w, bytes).await?;
        report.put = started.elapsed();
        report.result = WindowResult::Stored;
        self.retention(w).await;
        Ok((report, next))
    }
}
