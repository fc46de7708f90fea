//! The daemon's parts: what is loaded before the chain ([`Prepared`]) and the [`Daemon`] built from it. The window's
//! phases are in [`crate::window`], the loop between windows in [`crate::driver`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aggregator_chain::{Chain, window_of};
use aggregator_kernels::{Backend, Cpu};
use aggregator_model::ModelSpec;
use aggregator_policy::{Policies, PolicyConfig, PolicyEngine, PolicyKind, PolicyLimits};
use aggregator_store::{Bucket, ClientSettings, Clients};
use object_store::ObjectStore;
use object_store::multipart::MultipartStore;
use tokio::sync::mpsc;

use crate::DaemonError;
use crate::config::DaemonConfig;
use crate::driver::RETRY_BASE;
use crate::metrics::{BuildInfo, Metrics};
use crate::report::WindowReport;
use crate::state::{PendingReceipts, PersistedState, StateFile};
use crate::status::{HealthRule, Status};

/// Everything the daemon loads before it needs the chain: the configuration (validated), the model, the policies
/// (checked with the operator's settings), the output bucket, the persisted state, and the metrics. Loading this
/// first lets configuration errors surface at once and `/metrics` serve while the chain is still out of reach.
pub struct Prepared {
    config: DaemonConfig,
    policies: Arc<Policies>,
    clients: Clients,
    output: Arc<dyn ObjectStore>,
    multipart: Option<Arc<dyn MultipartStore>>,
    model: Arc<ModelSpec>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    state_file: StateFile,
    state: PersistedState,
    pending: PendingReceipts,
}

impl Prepared {
    /// Validates `config`, loads the model, the policies, the output bucket and the persisted state; `build` is
    /// what `aggregator_build_info` and the status page report.
    pub fn load(config: DaemonConfig, output: Bucket, build: BuildInfo) -> Result<Self, DaemonError> {
        config.validate()?;
        let model = ModelSpec::load(&config.model).map_err(|e| DaemonError::Config(format!("model: {e}")))?;
        let state_file = StateFile::open(&config.state_dir)?;
        let state = state_file.load()?;
        let pending = PendingReceipts::open(&config.state_dir)?;
        let cache = match config.policy_cache.as_str() {
            "" => config.state_dir.join("policy-cache"),
            dir => PathBuf::from(dir),
        };
        let engine = PolicyEngine::new(PolicyLimits::default(), Some(cache))?;
        let policies = Policies::new(
            engine,
            PolicyConfig {
                components: config
                    .policy
                    .components
                    .iter()
                    .map(|(kind, file)| (kind, PathBuf::from(file)))
                    .collect(),
                settings: config.policy.settings.clone().into_iter().collect(),
                limits: config
                    .policy
                    .limits
                    .iter()
                    .filter_map(|(k, l)| Some((PolicyKind::from_key(k)?, l.apply(PolicyLimits::default()))))
                    .collect(),
                shadow: config
                    .policy
                    .shadow
                    .iter()
                    .map(|(kind, file)| (kind, PathBuf::from(file)))
                    .collect(),
            },
        )?;
        for refusal in policies.shadow_refusals() {
            tracing::warn!(%refusal, "shadow candidate refused; the active policies are unaffected");
        }
        let clients = Clients::new(ClientSettings::default());
        // Shards share one multipart upload: an output bucket without that API is refused now, not at a window.
        let multipart = match config.shards() {
            Some(_) => Some(clients.multipart(&output)?),
            None => None,
        };
        let output = clients.get(&output)?;
        let metrics = Arc::new(Metrics::new(&build));
        let status = Arc::new(Status::new(
            build,
            config.chain_url.clone(),
            HealthRule {
                stale_blocks: config.health.stale_blocks,
                block_time_s: config.health.block_time_s,
            },
            config.status_windows,
            metrics.clone(),
            Some(output.clone()),
        ));
        status.policies(&policies);
        metrics.policies(&policies.stats());
        Ok(Self {
            config,
            policies: Arc::new(policies),
            clients,
            output,
            multipart,
            model: Arc::new(model),
            metrics,
            status,
            state_file,
            state,
            pending,
        })
    }

    /// The metrics (to serve before the chain connects).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The status record (served before the chain connects).
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// The persisted state as loaded.
    pub fn state(&self) -> &PersistedState {
        &self.state
    }

    /// Checks the persisted state against the chain's head block: a `last_processed` (or a queued retry) past the
    /// window still open at `head` cannot be right (another chain's state, or an edited file). It is reported, reset
    /// so that the daemon starts from the head as a fresh one would, and saved. (The open window itself is allowed:
    /// `last_processed = w` is how a state says "start after window `w`", which the simulator uses.)
    pub fn reconcile_with_head(&mut self, head: u64) {
        let open = window_of(head, self.config.blocks_per_window);
        let ahead = |w: u64| w > open;
        let last_ahead = self.state.last_processed.is_some_and(ahead);
        let retry_ahead = self.state.retry.iter().any(|&w| ahead(w));
        if !last_ahead && !retry_ahead {
            return;
        }
        tracing::warn!(
            last_processed = self.state.last_processed.unwrap_or_default(),
            retry = %crate::list(&self.state.retry),
            head,
            open_window = open,
            "state: windows past the chain's open window; this state belongs to another chain or was edited. \
             Starting from the head as a fresh daemon would (the state file is rewritten)"
        );
        self.metrics.error(crate::metrics::ErrorKind::StateAheadOfChain);
        if last_ahead {
            self.state.last_processed = None;
        }
        self.state.retry.retain(|&w| !ahead(w));
        if let Err(e) = self.state_file.save(&self.state) {
            tracing::error!(error = %e, "state: cannot save the reset state");
        }
    }
}

/// The daemon's parts, built once.
pub struct Daemon<C: Chain> {
    pub(crate) config: DaemonConfig,
    pub(crate) chain: C,
    pub(crate) policies: Arc<Policies>,
    pub(crate) clients: Clients,
    pub(crate) output: Arc<dyn ObjectStore>,
    /// The output bucket's multipart API, when windows are split across shards.
    pub(crate) multipart: Option<Arc<dyn MultipartStore>>,
    pub(crate) model: Arc<ModelSpec>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) status: Arc<Status>,
    pub(crate) state_file: StateFile,
    pub(crate) state: PersistedState,
    pub(crate) pending: PendingReceipts,
    pub(crate) reports: Option<mpsc::UnboundedSender<WindowReport>>,
    pub(crate) retry_base: Duration,
}

impl<C: Chain + 'static> Daemon<C> {
    /// Loads the model, the policies, the output bucket and the persisted state.
    pub fn new(config: DaemonConfig, chain: C, output: Bucket) -> Result<Self, DaemonError> {
        Ok(Self::from_prepared(
            Prepared::load(config, output, BuildInfo::default())?,
            chain,
        ))
    }

    /// The daemon from parts loaded beforehand.
    pub fn from_prepared(p: Prepared, chain: C) -> Self {
        Self {
            config: p.config,
            chain,
            policies: p.policies,
            clients: p.clients,
            output: p.output,
            multipart: p.multipart,
            model: p.model,
            backend: Arc::new(Cpu::new()),
            metrics: p.metrics,
            status: p.status,
            state_file: p.state_file,
            state: p.state,
            pending: p.pending,
            reports: None,
            retry_base: RETRY_BASE,
        }
    }

    /// Runs the window step on `backend` instead of the CPU.
    pub fn with_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = backend;
        self
    }

    /// Sends every window's report to `tx` too (the simulator prints them).
    pub fn with_reports(mut self, tx: mpsc::UnboundedSender<WindowReport>) -> Self {
        self.reports = Some(tx);
        self
    }

    /// Retries a failed window after `base` (then doubling, up to [`RETRY_MAX`]) instead of [`RETRY_BASE`]: for tests
    /// of the loop that should not wait seconds.
    pub fn with_retry_backoff(mut self, base: Duration) -> Self {
        self.retry_base = base;
        self
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The status record (served before the chain connects).
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// The persisted state as loaded (the follower's tracker resumes from its `last_processed`).
    pub fn state(&self) -> &PersistedState {
        &self.state
    }

    /// The policies (for a watcher).
    pub fn policies(&self) -> Arc<Policies> {
        self.policies.clone()
    }
}
