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
pub mod status;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use aggregator_chain::{Backoff, ClientConfig, SubtensorClient, WindowTracker, follow_heads};
use aggregator_kernels::Backend;
use aggregator_policy::SwapEvent;
use aggregator_store::Bucket;
use metrics::{BuildInfo, ErrorKind};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

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
    /// The kind counted in `aggregator_errors_total`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DaemonError::Config(_) => ErrorKind::Config,
            DaemonError::State(_) => ErrorKind::State,
            DaemonError::Chain(_) => ErrorKind::Chain,
            DaemonError::Policy(_) => ErrorKind::Policy,
            DaemonError::Store(_) => ErrorKind::Storage,
            DaemonError::Window(e) => e.kind(),
        }
    }
}

/// A list as one plain log field: `1,2,3` (rather than a debug rendering).
pub(crate) fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a caller of [`run`] can add: listeners, and what the server reports about itself.
#[derive(Default)]
pub struct RunOptions {
    /// Receives every window's report (the simulator prints them).
    pub reports: Option<mpsc::UnboundedSender<WindowReport>>,
    /// Receives the status endpoint's bound address once it listens (with `metrics` set; port 0 picks one), and
    /// the status record behind it (to serve it again after the daemon stops, as `aggregator sim --linger` does).
    pub listening: Option<oneshot::Sender<(std::net::SocketAddr, Arc<status::Status>)>>,
    /// What `aggregator_build_info` and the status page report.
    pub build: BuildInfo,
}

/// Runs the daemon against a Subtensor endpoint until `shutdown` turns true: loads the configuration, policies and
/// state (errors surface at once), serves the status endpoint (`/metrics`, `/healthz`, `/readyz`, `/`), connects to
/// the chain (retrying with backoff and logging each try, for as long as it takes; a shutdown ends the wait at once),
/// checks the state against the head, then starts the head follower (resuming after the persisted last window), the
/// policy watcher and the window loop.
pub async fn run(
    config: DaemonConfig,
    backend: Arc<dyn Backend>,
    output: Bucket,
    mut shutdown: watch::Receiver<bool>,
    options: RunOptions,
) -> Result<(), DaemonError> {
    let RunOptions {
        reports,
        listening,
        build,
    } = options;
    let mut prepared = Prepared::load(config.clone(), output.clone(), build)?;
    tracing::info!(
        last_processed = prepared.state().last_processed.unwrap_or_default(),
        fresh = prepared.state().last_processed.is_none(),
        retry = prepared.state().retry.len(),
        max_backfill = config.max_backfill,
        "state loaded"
    );
    let status = prepared.status();
    let server = match config.metrics_addr()? {
        Some(addr) => {
            let (bound, task) = status::serve(addr, status.clone()).await?;
            tracing::info!(
                addr = %bound,
                page = %format!("http://{bound}/"),
                "status page on /, metrics on /metrics, health on /healthz and /readyz"
            );
            if let Some(tx) = listening {
                let _ = tx.send((bound, status.clone()));
            }
            Some(task)
        }
        None => None,
    };
    let shard = match config.shards() {
        Some(_) => Some(config.shard_index(host_name().as_deref())?),
        None => None,
    };
    if let Some(index) = shard.filter(|i| *i > 0) {
        // A shard other than 0: no chain and no window loop; its part of each window the coordinator plans.
        status.set_shard(index);
        status.set_ready(true);
        let result = window::shard::serve_shard(&config, backend, &output, index, shutdown).await;
        status.set_ready(false);
        if let Some(t) = server {
            t.abort();
            let _ = t.await;
        }
        return result;
    }
    let result = async move {
        let client_config = ClientConfig::new(config.chain_url.clone());
        let Some(chain) = connect(&client_config, &mut shutdown).await else {
            tracing::info!("shutdown before the chain connected");
            return Ok(());
        };
        let head = aggregator_chain::Chain::head(&chain).await;
        match &head {
            Ok(head) => {
                tracing::info!(url = %aggregator_chain::redact_url(&config.chain_url), head, "chain connected");
                prepared.reconcile_with_head(*head);
            }
            Err(e) => tracing::warn!(url = %aggregator_chain::redact_url(&config.chain_url), error = %e, "chain connected, but no head yet"),
        }
        let mut daemon = Daemon::from_prepared(prepared, chain.clone()).with_backend(backend);
        if let Some(tx) = reports {
            daemon = daemon.with_reports(tx);
        }
        // A weak handle: the watcher thread ends when the policies are dropped.
        let (watcher_metrics, watcher_status) = (daemon.metrics(), status.clone());
        let policies = Arc::downgrade(&daemon.policies());
        let _watcher = daemon.policies().spawn_watcher(Duration::from_secs(10), move |e| {
            let Some(policies) = policies.upgrade() else { return };
            watcher_metrics.policies(&policies.stats());
            match e {
                SwapEvent::Rejected { kind, reason } => tracing::warn!(
                    policy = kind.interface(),
                    %reason,
                    "policy update refused; the current policy stays"
                ),
                SwapEvent::Staged { kind, policy } => {
                    tracing::info!(policy = kind.interface(), component = %policy, "policy update staged")
                }
                SwapEvent::Swapped { kind, policy } => {
                    watcher_status.policies(&policies);
                    tracing::info!(policy = kind.interface(), component = %policy, "policy swapped in")
                }
            }
        });
        // Heads are recorded for health as they arrive, even while the loop is busy with a window.
        let (follower_tx, mut follower_rx) = mpsc::channel::<aggregator_chain::HeadEvent>(1024);
        let (tx, rx) = mpsc::channel(1024);
        let head_status = status.clone();
        let forwarder = tokio::spawn(async move {
            while let Some(ev) = follower_rx.recv().await {
                head_status.head(ev.block, now_ms());
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
        });
        let follower = tokio::spawn(follow_heads(
            client_config,
            Some(chain),
            WindowTracker::new(
                config.blocks_per_window,
                config.max_backfill,
                daemon.state().last_processed,
            ),
            Backoff::default(),
            follower_tx,
        ));
        status.set_ready(true);
        let result = daemon.run(rx, shutdown, Duration::from_secs(30)).await;
        status.set_ready(false);
        follower.abort();
        forwarder.abort();
        result
    }
    .await;
    if let Some(t) = server {
        // Awaited, not only aborted: the listener is closed when the task is dropped, and a caller that binds the
        // same address next (the simulator's `--linger`) must not race the runtime's cancellation.
        t.abort();
        let _ = t.await;
    }
    result
}

/// This machine's host name (a StatefulSet pod's is `name-N`): `HOSTNAME`, else `/etc/hostname`.
fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Connects to the chain, trying again after 1 s, doubling to 30 s, until it answers; `None` when `shutdown` turns
/// true first (at any moment: a connection attempt in flight is dropped).
async fn connect(config: &ClientConfig, shutdown: &mut watch::Receiver<bool>) -> Option<SubtensorClient> {
    let mut delay = Duration::from_secs(1);
    for attempt in 1u32.. {
        tracing::info!(url = %aggregator_chain::redact_url(&config.url), attempt, "connecting to the chain");
        let result = tokio::select! {
            r = SubtensorClient::connect(config.clone()) => r,
            _ = shutdown.wait_for(|s| *s) => return None,
        };
        match result {
            Ok(c) => return Some(c),
            Err(e) => tracing::warn!(
                url = %aggregator_chain::redact_url(&config.url),
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
