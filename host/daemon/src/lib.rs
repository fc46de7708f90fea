//! The aggregation server as a service: the window loop ([`Daemon`]), its configuration ([`DaemonConfig`]),
//! persisted state and Prometheus metrics. The simulator around it is the `aggregator-sim` crate.
//!
//! One window: the head follower reports window `w` closed when block `(w+1)·bpw` appears → `Timestamp::Now` at
//! that block, metagraph and commitments ([`aggregator_chain::Chain`]) → the time-bounds policy, then the
//! peer-selection policy (WebAssembly components) → gather inside the bounds → aggregate (numeric core) → put
//! `aggregator-{w}-v{V}.pt` (complete or absent) → retention → report, metrics, state. Missed windows (a restart, a
//! stall) are backfilled oldest first, up to `max_backfill`.

mod config;
mod daemon;
mod driver;
pub mod metrics;
mod report;
mod state;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use aggregator_chain::{Backoff, ClientConfig, SubtensorClient, WindowTracker, follow_heads};
use aggregator_kernels::Backend;
use aggregator_policy::SwapEvent;
use aggregator_store::Bucket;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

pub use config::{
    Components, ConfigArgs, DaemonConfig, GatherConfig, KindLimits, OutputBucket, PolicyFiles, ShadowFiles, add_limits,
    parse_endpoint, parse_setting,
};
pub use daemon::{Daemon, Prepared};
pub use driver::{RETRY_BASE, RETRY_MAX};
pub use report::{WindowReport, WindowResult};
pub use state::{PersistedState, StateFile};
pub use window::WindowError;

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
    /// Object storage (opening the output bucket).
    #[error("storage: {0}")]
    Store(#[from] aggregator_store::StoreError),
    /// A window's attempt.
    #[error(transparent)]
    Window(#[from] WindowError),
}

impl DaemonError {
    /// The metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            DaemonError::Config(_) => "config",
            DaemonError::State(_) => "state",
            DaemonError::Chain(_) => "chain",
            DaemonError::Policy(_) => "policy",
            DaemonError::Store(_) => "storage",
            DaemonError::Window(e) => e.kind(),
        }
    }
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the daemon against a Subtensor endpoint until `shutdown` turns true: loads the configuration, policies and
/// state (errors surface at once), serves `/metrics` and `/healthz`, connects to the chain (retrying with backoff
/// and logging each try, for as long as it takes; a shutdown ends the wait at once), checks the state against the
/// head, then starts the head follower (resuming after the persisted last window), the policy watcher and the
/// window loop.
pub async fn run(
    config: DaemonConfig,
    backend: Arc<dyn Backend>,
    output: Bucket,
    mut shutdown: watch::Receiver<bool>,
    reports: Option<mpsc::UnboundedSender<WindowReport>>,
) -> Result<(), DaemonError> {
    let mut prepared = Prepared::load(config.clone(), output)?;
    tracing::info!(
        last_processed = prepared.state().last_processed.unwrap_or_default(),
        fresh = prepared.state().last_processed.is_none(),
        retry = prepared.state().retry.len(),
        max_backfill = config.max_backfill,
        "state loaded"
    );
    let metrics_task = match config.metrics_addr()? {
        Some(addr) => {
            let stale = 4 * 12_000 * config.blocks_per_window as u64;
            let (bound, task) = metrics::serve(addr, prepared.metrics(), prepared.health(), stale).await?;
            tracing::info!(addr = %bound, "metrics on /metrics, health on /healthz");
            Some(task)
        }
        None => None,
    };
    let result = async move {
        let client_config = ClientConfig::new(config.chain_url.clone());
        let Some(chain) = connect(&client_config, &mut shutdown).await else {
            tracing::info!("shutdown before the chain connected");
            return Ok(());
        };
        let head = aggregator_chain::Chain::head(&chain).await;
        match &head {
            Ok(head) => {
                tracing::info!(url = %config.chain_url, head, "chain connected");
                prepared.reconcile_with_head(*head);
            }
            Err(e) => tracing::warn!(url = %config.chain_url, error = %e, "chain connected, but no head yet"),
        }
        let mut daemon = Daemon::from_prepared(prepared, chain.clone()).with_backend(backend);
        if let Some(tx) = reports {
            daemon = daemon.with_reports(tx);
        }
        let _watcher = daemon.policies().spawn_watcher(Duration::from_secs(10), |e| match e {
            SwapEvent::Rejected { kind, reason } => {
                tracing::warn!(policy = kind.interface(), %reason, "policy update refused; the current policy stays")
            }
            other => tracing::info!(event = ?other, "policy watcher"),
        });
        let (tx, rx) = mpsc::channel(1024);
        let follower = tokio::spawn(follow_heads(
            client_config,
            Some(chain),
            WindowTracker::new(
                config.blocks_per_window,
                config.max_backfill,
                daemon.state().last_processed,
            ),
            Backoff::default(),
            tx,
        ));
        let result = daemon.run(rx, shutdown, Duration::from_secs(30)).await;
        follower.abort();
        result
    }
    .await;
    if let Some(t) = metrics_task {
        t.abort();
    }
    result
}

/// Connects to the chain, trying again after 1 s, doubling to 30 s, until it answers; `None` when `shutdown` turns
/// true first (at any moment: a connection attempt in flight is dropped).
async fn connect(config: &ClientConfig, shutdown: &mut watch::Receiver<bool>) -> Option<SubtensorClient> {
    let mut delay = Duration::from_secs(1);
    for attempt in 1u32.. {
        tracing::info!(url = %config.url, attempt, "connecting to the chain");
        let result = tokio::select! {
            r = SubtensorClient::connect(config.clone()) => r,
            _ = shutdown.wait_for(|s| *s) => return None,
        };
        match result {
            Ok(c) => return Some(c),
            Err(e) => tracing::warn!(
                url = %config.url,
                attempt,
                error = %e,
                retry_in_s = delay.as_secs_f64(),
                "chain: cannot connect; trying again"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    None
}
