//! What happened in one window: the report the driver logs, counts, keeps and sends to listeners (the simulator).

use std::time::Duration;

use aggregator_store::SkipReason;

/// How a window ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowResult {
    /// `aggregator-{w}-v{V}.pt` was stored.
    Stored,
    /// No selected peer had a valid gradient: nothing is written (as Templar).
    NoValidPeers,
    /// The aggregate already existed (a restart after the put): nothing is written again.
    AlreadyStored,
    /// It failed after retries; nothing was written.
    Failed(String),
}

impl WindowResult {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            WindowResult::Stored => "stored",
            WindowResult::NoValidPeers => "no_valid_peers",
            WindowResult::AlreadyStored => "already_stored",
            WindowResult::Failed(_) => "failed",
        }
    }
}

/// What happened in one window.
#[derive(Debug, Clone)]
pub struct WindowReport {
    /// The window.
    pub window: u64,
    /// The result.
    pub result: WindowResult,
    /// Uids selected, in order.
    pub selected: Vec<u16>,
    /// Uids aggregated.
    pub aggregated: Vec<u16>,
    /// Uids skipped with reasons, in selection order.
    pub skipped: Vec<(u16, SkipReason)>,
    /// Upload time bounds (unix ms).
    pub bounds: (u64, u64),
    /// Time spent on chain reads and policies.
    pub chain: Duration,
    /// Time spent gathering.
    pub gather: Duration,
    /// Time spent aggregating and encoding.
    pub process: Duration,
    /// Time spent storing.
    pub put: Duration,
    /// Bytes stored.
    pub output_bytes: u64,
    /// SHA-256 (hex) of the stored aggregate.
    pub output_sha256: Option<String>,
    /// The receipt's key, once stored beside the aggregate (none while it is pending: see `window::receipt`).
    pub receipt: Option<String>,
}

impl WindowReport {
    /// A report with nothing selected, timed or stored yet.
    pub(crate) fn new(window: u64, result: WindowResult) -> Self {
        Self {
            window,
            result,
            selected: vec![],
            aggregated: vec![],
            skipped: vec![],
            bounds: (0, 0),
            chain: Duration::ZERO,
            gather: Duration::ZERO,
            process: Duration::ZERO,
            put: Duration::ZERO,
            output_bytes: 0,
            output_sha256: None,
            receipt: None,
        }
    }
}
