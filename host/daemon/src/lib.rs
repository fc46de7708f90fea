//! The aggregation server as a service: the window loop ([`Daemon`]), its configuration ([`DaemonConfig`]),
//! persisted state, Prometheus metrics, and the zero-setup simulator ([`sim`]).
//!
//! One window: the head follower reports window `w` closed when block `(w+1)·bpw` appears → `Timestamp::Now` at
//! that block, metagraph and commitments ([`aggregator_chain::Chain`]) → the time-bounds policy, then the
//! peer-selection policy (WebAssembly components) → gather inside the bounds → aggregate (numeric core) → put
//! `aggregator-{w}-v{V}.pt` (complete or absent) → retention → report, metrics, state. Missed windows (a restart, a
//! stall) are backfilled oldest first, up to `max_backfill`.

mod config;
mod daemon;
pub mod metrics;
pub mod sim;
mod state;

use std::sync::Arc;
use std::time::Duration;

use aggregator_chain::{Backoff, ClientConfig, SubtensorClient, WindowTracker, follow_heads};
use aggregator_kernels::{Backend, Cpu};
use aggregator_store::Bucket;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

pub use config::{DaemonConfig, GatherConfig, OutputBucket, PolicyFiles, parse_endpoint};
pub use daemon::{Daemon, WindowReport, WindowResult};
pub use state::{PersistedState, StateFile};

/// Daemon errors.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// Bad configuration.
    #[error("config: {0}")]
    Config(String),
    /// The state file.
    #[error("state: {0}")]
    State(String),
    /// The chain.
    #[error("chain: {0}")]
    Chain(#[from] aggregator_chain::ChainError),
    /// A policy.
    #[error("policy: {0}")]
    Policy(#[from] aggregator_policy::PolicyError),
    /// Object storage.
    #[error("storage: {0}")]
    Storage(String),
    /// A bug or a panicked task.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<aggregator_store::StoreError> for DaemonError {
    fn from(e: aggregator_store::StoreError) -> Self {
        DaemonError::Storage(e.to_string())
    }
}

impl DaemonError {
    /// The metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            DaemonError::Config(_) => "config",
            DaemonError::State(_) => "state",
            DaemonError::Chain(_) => "chain",
            DaemonError::Policy(_) => "policy",
            DaemonError::Storage(_) => "storage",
            DaemonError::Internal(_) => "internal",
        }
    }
}

/// The numeric backend the window step runs on (CPU by default; a GPU one from `aggregator-gpu`), shared by every
/// window. A newtype so that configurations holding it can be `Debug` and `Default`.
#[derive(Clone)]
pub struct BackendHandle(pub Arc<dyn Backend>);

impl Default for BackendHandle {
    fn default() -> Self {
        Self(Arc::new(Cpu::new()))
    }
}

impl std::fmt::Debug for BackendHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackendHandle({})", self.0.name())
    }
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the daemon against a Subtensor endpoint until `shutdown` turns true: connects, starts the head follower
/// (resuming after the persisted last window), the metrics endpoint and the policy watcher, then the window loop.
pub async fn run(
    config: DaemonConfig,
    backend: BackendHandle,
    output: Bucket,
    shutdown: watch::Receiver<bool>,
    reports: Option<mpsc::UnboundedSender<WindowReport>>,
) -> Result<(), DaemonError> {
    let mut client_config = ClientConfig::new(config.chain_url.clone());
    client_config.connect_timeout = Duration::from_secs(60);
    let chain = SubtensorClient::connect(client_config.clone()).await?;
    let head = aggregator_chain::Chain::head(&chain).await.ok();
    tracing::info!(url = %config.chain_url, head = ?head, "chain connected");
    let mut daemon = Daemon::new(config.clone(), chain.clone(), output)?.with_backend(backend);
    if let Some(tx) = reports {
        daemon = daemon.with_reports(tx);
    }
    let last = daemon.state().last_processed;
    tracing::info!(last_processed = ?last, max_backfill = config.max_backfill, "state loaded");
    let metrics_task = match config.metrics_addr()? {
        Some(addr) => {
            let stale = 4 * 12_000 * config.blocks_per_window as u64;
            let (bound, task) = metrics::serve(addr, daemon.metrics(), daemon.health(), stale).await?;
            tracing::info!(addr = %bound, "metrics on /metrics, health on /healthz");
            Some(task)
        }
        None => None,
    };
    let _watcher = daemon.policies().spawn_watcher(Duration::from_secs(10), |e| {
        tracing::info!(event = ?e, "policy watcher");
    });
    let (tx, rx) = mpsc::channel(1024);
    let follower = tokio::spawn(follow_heads(
        client_config,
        Some(chain),
        WindowTracker::new(config.blocks_per_window, config.max_backfill, last),
        Backoff::default(),
        tx,
    ));
    let result = daemon.run(rx, shutdown, Duration::from_secs(30)).await;
    follower.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    result
}
