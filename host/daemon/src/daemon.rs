//! The window loop: closed windows from the head follower → time bounds → peer selection → gather → aggregate →
//! put → report, one window at a time, oldest first, with state persisted after each.
//!
//! **No window is lost to a transient failure.** A window whose attempt fails (chain, storage, policy, a timeout)
//! goes to a retry queue with backoff (2 s doubling to 30 s) and is tried again, oldest first, whenever no newly
//! closed window is waiting, for as long as it lies within `max_backfill` windows of the newest closed one (older
//! than that, its miners' uploads may be gone: it is then recorded failed with the last error). The queue is part of
//! the persisted state, so a restart resumes it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregator_chain::{Chain, ChainError, HeadEvent, Metagraph, sync_block, window_of};
use aggregator_kernels::{Backend, Cpu};
use aggregator_model::ModelSpec;
use aggregator_policy::bindings::exports::templar::policy::peer_selection::SelectionInput;
use aggregator_policy::bindings::exports::templar::policy::time_bounds::BoundsInput;
use aggregator_policy::bindings::templar::policy::types::{ChainView, Neuron, PostedList};
use aggregator_policy::{Policies, PolicyConfig, PolicyEngine, PolicyKind, PolicyLimits};
use aggregator_store::{
    Bounds, Bucket, ClientSettings, Clients, GatherOptions, PeerRequest, PutOptions, SkipReason, delete_old_aggregates,
    gather, keys, posted_lists, put,
};
use aggregator_window::{PeerInput, aggregate_window, python_utc_now};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::{mpsc, watch};

use crate::config::DaemonConfig;
use crate::metrics::{Health, Metrics};
use crate::state::{PersistedState, StateFile};
use crate::{DaemonError, now_ms};

/// The peers and policy state to keep after a window (none when it failed).
type NextSelection = Option<(Vec<u16>, Vec<u8>)>;

/// What the chain stage read for a window.
struct Observed {
    sync: u64,
    timestamp: Option<u64>,
    metagraph: Metagraph,
    buckets: BTreeMap<u16, Bucket>,
    latest: Option<(u64, aggregator_codec::PeerList)>,
    previous: Option<(u64, aggregator_codec::PeerList)>,
}

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
}

impl WindowReport {
    /// A report with nothing selected, timed or stored yet.
    fn new(window: u64, result: WindowResult) -> Self {
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
        }
    }
}

/// Everything the daemon loads before it needs the chain: the configuration (validated), the model, the policies
/// (checked with the operator's settings), the output bucket, the persisted state, and the metrics. Loading this
/// first lets configuration errors surface at once and `/metrics` serve while the chain is still out of reach.
pub struct Prepared {
    config: DaemonConfig,
    policies: Arc<Policies>,
    clients: Clients,
    output: Arc<dyn ObjectStore>,
    model: Arc<ModelSpec>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    state_file: StateFile,
    state: PersistedState,
}

impl Prepared {
    /// Validates `config`, loads the model, the policies, the output bucket and the persisted state.
    pub fn load(config: DaemonConfig, output: Bucket) -> Result<Self, DaemonError> {
        config.validate()?;
        let model = ModelSpec::load(&config.model).map_err(|e| DaemonError::Config(format!("model: {e}")))?;
        let state_file = StateFile::open(&config.state_dir)?;
        let state = state_file.load()?;
        let cache = match config.policy_cache.as_str() {
            "" => config.state_dir.join("policy-cache"),
            dir => PathBuf::from(dir),
        };
        let engine = PolicyEngine::new(PolicyLimits::default(), Some(cache))?;
        let policies = Policies::new(
            engine,
            PolicyConfig {
                peer_selection: pathbuf(&config.policy.peer_selection),
                time_bounds: pathbuf(&config.policy.time_bounds),
                catchup_verification: pathbuf(&config.policy.catchup_verification),
                settings: config.policy.settings.clone().into_iter().collect(),
            },
        )?;
        let clients = Clients::new(ClientSettings::default());
        let output = clients.get(&output)?;
        Ok(Self {
            config,
            policies: Arc::new(policies),
            clients,
            output,
            model: Arc::new(model),
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::default()),
            state_file,
            state,
        })
    }

    /// The metrics (to serve before the chain connects).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The health record.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
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
            retry = ?self.state.retry,
            head,
            open_window = open,
            "state: windows past the chain's open window; this state belongs to another chain or was edited. \
             Starting from the head as a fresh daemon would (the state file is rewritten)"
        );
        self.metrics.error("state_ahead_of_chain");
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
    config: DaemonConfig,
    chain: C,
    policies: Arc<Policies>,
    clients: Clients,
    output: Arc<dyn ObjectStore>,
    model: Arc<ModelSpec>,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    state_file: StateFile,
    state: PersistedState,
    reports: Option<mpsc::UnboundedSender<WindowReport>>,
    retry_base: Duration,
}

fn pathbuf(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// A window waiting for another attempt.
#[derive(Debug, Clone)]
struct Retry {
    /// Failed attempts so far (0 for a window queued by a previous run).
    attempts: u32,
    /// Not before this.
    due: Instant,
    /// The last attempt's error.
    last_error: String,
}

/// Delay before retrying a window that has failed `attempts` times: 2 s doubling, at most 30 s.
/// The first retry's delay; each further attempt doubles it, up to [`RETRY_MAX`].
pub const RETRY_BASE: Duration = Duration::from_secs(2);
/// The longest delay between two attempts at a window.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

fn retry_delay(base: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1 << attempts.saturating_sub(1).min(8))
        .min(RETRY_MAX.max(base))
}

impl<C: Chain + 'static> Daemon<C> {
    /// Loads the model, the policies, the output bucket and the persisted state.
    pub fn new(config: DaemonConfig, chain: C, output: Bucket) -> Result<Self, DaemonError> {
        Ok(Self::from_prepared(Prepared::load(config, output)?, chain))
    }

    /// The daemon from parts loaded beforehand.
    pub fn from_prepared(p: Prepared, chain: C) -> Self {
        Self {
            config: p.config,
            chain,
            policies: p.policies,
            clients: p.clients,
            output: p.output,
            model: p.model,
            backend: Arc::new(Cpu::new()),
            metrics: p.metrics,
            health: p.health,
            state_file: p.state_file,
            state: p.state,
            reports: None,
            retry_base: RETRY_BASE,
        }
    }

    /// Runs the window step on `backend` instead of the CPU.
    pub fn with_backend(mut self, backend: crate::BackendHandle) -> Self {
        self.backend = backend.0;
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

    /// The health record.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// The persisted state as loaded (the follower's tracker resumes from its `last_processed`).
    pub fn state(&self) -> &PersistedState {
        &self.state
    }

    /// The policies (for a watcher).
    pub fn policies(&self) -> Arc<Policies> {
        self.policies.clone()
    }

    /// Processes closed windows from `heads` until it ends or `shutdown` turns true: newly closed windows first,
    /// then due retries, oldest first (see the module docs). On shutdown the current window gets `grace` to finish;
    /// after that it is abandoned (its output is then absent: puts are all-or-nothing) and the state does not record
    /// it, so a restart redoes it.
    pub async fn run(
        mut self,
        mut heads: mpsc::Receiver<HeadEvent>,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) -> Result<(), DaemonError> {
        let mut fresh: VecDeque<u64> = VecDeque::new();
        let resumed = Instant::now();
        let mut retries: BTreeMap<u64, Retry> = self
            .state
            .retry
            .iter()
            .map(|&w| {
                let r = Retry {
                    attempts: 0,
                    due: resumed,
                    last_error: "queued for retry by a previous run".into(),
                };
                (w, r)
            })
            .collect();
        let mut newest_closed = self.state.last_processed;
        self.metrics.retry_queue(retries.len());
        loop {
            while let Ok(ev) = heads.try_recv() {
                self.on_head(&ev, &mut fresh, &mut newest_closed);
            }
            if *shutdown.borrow() {
                tracing::info!("shutting down between windows");
                return Ok(());
            }
            let now = Instant::now();
            let next = fresh
                .pop_front()
                .or_else(|| retries.iter().find(|(_, r)| r.due <= now).map(|(&w, _)| w));
            let Some(w) = next else {
                let wake = retries.values().map(|r| r.due).min();
                tokio::select! {
                    changed = shutdown.changed() => if changed.is_err() {
                        return Ok(());
                    },
                    ev = heads.recv() => match ev {
                        Some(ev) => self.on_head(&ev, &mut fresh, &mut newest_closed),
                        None => return Ok(()),
                    },
                    _ = async {
                        match wake {
                            Some(t) => tokio::time::sleep_until(t.into()).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
                continue;
            };
            let horizon = self.config.max_backfill;
            if newest_closed.is_some_and(|n| n.saturating_sub(w) >= horizon)
                && let Some(r) = retries.remove(&w)
            {
                let reason = format!(
                    "given up after {} attempts: more than max_backfill ({horizon}) windows old, its uploads may be \
                     gone; last error: {}",
                    r.attempts, r.last_error
                );
                self.finish(WindowReport::new(w, WindowResult::Failed(reason)), None, &retries);
                continue;
            }
            self.metrics.progress(self.state.last_processed, newest_closed);
            let mut stop = shutdown.clone();
            let attempt = {
                let work = self.process(w);
                tokio::pin!(work);
                tokio::select! {
                    result = &mut work => Some(result),
                    _ = async { let _ = stop.wait_for(|s| *s).await; tokio::time::sleep(grace).await } => None,
                }
            };
            match attempt {
                None => {
                    tracing::warn!(window = w, "shutdown: window abandoned; a restart processes it again");
                    return Ok(());
                }
                Some(Ok((report, selection))) => {
                    retries.remove(&w);
                    self.finish(report, selection, &retries);
                }
                Some(Err(e)) => {
                    self.metrics.error(e.kind());
                    let attempts = retries.get(&w).map_or(0, |r| r.attempts) + 1;
                    let delay = retry_delay(self.retry_base, attempts);
                    tracing::warn!(
                        window = w,
                        attempt = attempts,
                        error = %e,
                        retry_in_s = delay.as_secs_f64(),
                        "window attempt failed; queued for retry"
                    );
                    retries.insert(
                        w,
                        Retry {
                            attempts,
                            due: Instant::now() + delay,
                            last_error: e.to_string(),
                        },
                    );
                    self.state.last_processed = self.state.last_processed.max(Some(w));
                    self.save_state(&retries);
                }
            }
            self.metrics.progress(self.state.last_processed, newest_closed);
        }
    }

    fn on_head(&self, ev: &HeadEvent, queue: &mut VecDeque<u64>, newest_closed: &mut Option<u64>) {
        self.metrics.head(ev.block);
        self.health
            .last_head_ms
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        if ev.closed.skipped > 0 {
            self.metrics.error("backfill_limit");
            tracing::warn!(
                skipped = ev.closed.skipped,
                "windows older than the backfill limit are not processed"
            );
        }
        for &w in &ev.closed.windows {
            tracing::info!(window = w, block = ev.block, "window closed");
            queue.push_back(w);
            *newest_closed = Some(newest_closed.map_or(w, |n| n.max(w)));
        }
    }

    /// Saves the state with the retry queue; a failure (a full disk) is logged and counted, never fatal: the state
    /// in memory stays right, and the next save writes it.
    fn save_state(&mut self, retries: &BTreeMap<u64, Retry>) {
        self.state.retry = retries.keys().copied().collect();
        self.metrics.retry_queue(retries.len());
        if let Err(e) = self.state_file.save(&self.state) {
            self.metrics.error("state");
            tracing::error!(error = %e, "state: cannot save; kept in memory and saved again after the next window");
        }
    }

    fn finish(&mut self, report: WindowReport, selection: NextSelection, retries: &BTreeMap<u64, Retry>) {
        self.metrics.window(report.result.label());
        self.metrics
            .peers(report.selected.len(), report.aggregated.len(), &report.skipped);
        self.metrics.stage("chain", report.chain.as_secs_f64());
        self.metrics.stage("gather", report.gather.as_secs_f64());
        self.metrics.stage("process", report.process.as_secs_f64());
        self.metrics.stage("put", report.put.as_secs_f64());
        self.metrics.output(report.output_bytes);
        for (kind, stats) in self.policies.stats() {
            self.metrics.policy_fallbacks(kind.interface(), stats.fallbacks);
        }
        // A retried window older than the newest one processed leaves the selection state alone: the policy's
        // state moves forward with the windows.
        let newest = self.state.last_processed.is_none_or(|l| report.window >= l);
        if newest && let Some((peers, state)) = selection {
            self.state.current_peers = peers;
            self.state.selection_state = hex::encode(state);
        }
        self.state.last_processed = self.state.last_processed.max(Some(report.window));
        self.save_state(retries);
        let skipped_peers = report
            .skipped
            .iter()
            .map(|(uid, reason)| format!("{uid}: {reason}"))
            .collect::<Vec<_>>()
            .join("; ");
        match &report.result {
            WindowResult::Failed(reason) => tracing::error!(window = report.window, %reason, "window failed"),
            r => tracing::info!(
                window = report.window,
                result = r.label(),
                selected = report.selected.len(),
                aggregated = report.aggregated.len(),
                skipped = report.skipped.len(),
                skipped_peers = %skipped_peers,
                gather_ms = report.gather.as_millis() as u64,
                process_ms = report.process.as_millis() as u64,
                put_ms = report.put.as_millis() as u64,
                bytes = report.output_bytes,
                "window done"
            ),
        }
        if let Some(tx) = &self.reports {
            let _ = tx.send(report);
        }
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

    /// The chain stage: `Timestamp::Now` at the sync block, metagraph, commitments (uid → bucket) and the leader's
    /// posted peer lists (bounded by `storage_timeout_s`; unreadable lists are logged and taken as absent).
    async fn observe(&self, w: u64) -> Result<Observed, DaemonError> {
        let cfg = &self.config;
        let sync = sync_block(w, cfg.blocks_per_window);
        let timestamp = match self.chain.timestamp_ms(sync).await {
            Ok(ts) => Some(ts),
            Err(e) => {
                self.metrics.error("chain_timestamp");
                tracing::warn!(window = w, block = sync, error = %e, "no timestamp; the time-bounds policy falls back");
                None
            }
        };
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
                    Ok(lists) => lists,
                    Err(e) => {
                        self.metrics.error("peer_list");
                        tracing::warn!(window = w, leader, error = %e, "cannot read the leader's peer lists");
                        (None, None)
                    }
                },
                Err(e) => {
                    self.metrics.error("peer_list");
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
            metagraph,
            buckets,
            latest,
            previous,
        })
    }

    /// One window, start to end. Errors are transient failures (chain, policy, storage, a timeout) worth a retry.
    async fn process(&self, w: u64) -> Result<(WindowReport, NextSelection), DaemonError> {
        let cfg = &self.config;
        let key = ObjectPath::from(keys::aggregate(w, &cfg.version));
        let mut report = WindowReport::new(w, WindowResult::AlreadyStored);
        let storage = cfg.storage_timeout();
        match tokio::time::timeout(storage, self.output.head(&key)).await {
            Ok(Ok(meta)) => {
                tracing::info!(
                    window = w,
                    bytes = meta.size,
                    "aggregate already stored; not writing it again"
                );
                return Ok((report, None));
            }
            Ok(Err(object_store::Error::NotFound { .. })) => {}
            Ok(Err(e)) => return Err(DaemonError::Storage(format!("{key}: {e}"))),
            Err(_) => return Err(DaemonError::Storage(format!("{key}: no answer within {storage:?}"))),
        }
        self.policies.begin_window();

        // Chain and policies.
        let started = Instant::now();
        let Observed {
            sync,
            timestamp,
            metagraph,
            buckets,
            latest,
            previous,
        } = tokio::time::timeout(cfg.chain_timeout(), self.observe(w))
            .await
            .map_err(|_| {
                ChainError::Timeout(format!(
                    "window {w}'s chain stage (over chain_timeout_s = {})",
                    cfg.chain_timeout_s
                ))
            })??;
        let posted = |l: Option<(u64, aggregator_codec::PeerList)>| {
            l.map(|(_, l)| PostedList {
                peers: l.peers,
                first_effective_window: l.first_effective_window.max(0) as u64,
                sync_window: l.sync_window.max(0) as u64,
            })
        };
        let chain_view = ChainView {
            block: sync,
            window: w,
            blocks_per_window: cfg.blocks_per_window,
            netuid: cfg.netuid,
        };
        let bounds_input = BoundsInput {
            chain: chain_view,
            sync_block: sync,
            sync_timestamp_ms: timestamp,
            now_ms: now_ms(),
            config: vec![],
        };
        let selection_input = SelectionInput {
            chain: chain_view,
            neurons: metagraph
                .neurons
                .iter()
                .map(|n| Neuron {
                    uid: n.uid,
                    stake: n.stake_tao(),
                    incentive: n.incentive,
                    has_bucket: buckets.contains_key(&n.uid),
                })
                .collect(),
            current: self.state.current_peers.clone(),
            latest: posted(latest),
            previous: posted(previous),
            state: hex::decode(&self.state.selection_state).unwrap_or_default(),
            config: vec![],
        };
        let policies = self.policies.clone();
        let (bounds, selection) = tokio::task::spawn_blocking(move || {
            let b = policies.time_bounds(bounds_input)?;
            let s = policies.select_peers(selection_input)?;
            Ok::<_, aggregator_policy::PolicyError>((b, s))
        })
        .await
        .map_err(|e| DaemonError::Internal(e.to_string()))??;
        for (kind, fallback) in [
            (PolicyKind::TimeBounds, &bounds.fallback),
            (PolicyKind::PeerSelection, &selection.fallback),
        ] {
            if let Some(e) = fallback {
                tracing::warn!(window = w, policy = kind.interface(), error = %e, "policy failed; a fallback answered");
            }
        }
        if let Some(e) = &selection.state_reset {
            self.metrics.policy_state_reset(PolicyKind::PeerSelection.interface());
            tracing::warn!(
                window = w,
                policy = %selection.policy,
                error = %e,
                "the peer-selection policy refused its saved state; it was called again with an empty state"
            );
        }
        let bounds = Bounds {
            not_before_ms: bounds.value.not_before_ms,
            not_after_ms: bounds.value.not_after_ms,
        };
        let selection = selection.value;
        report.bounds = (bounds.not_before_ms, bounds.not_after_ms);
        report.selected = selection.peers.clone();
        report.chain = started.elapsed();
        if selection.peers.is_empty() {
            tracing::warn!(window = w, note = %selection.note, "the peer-selection policy selected no peers");
        } else {
            tracing::info!(window = w, peers = ?selection.peers, note = %selection.note, "peers selected");
        }

        // Gather.
        let started = Instant::now();
        let requests: Vec<PeerRequest> = selection
            .peers
            .iter()
            .map(|uid| PeerRequest {
                uid: *uid,
                bucket: buckets.get(uid).cloned(),
            })
            .collect();
        let options = GatherOptions {
            timeout: cfg.gather_timeout(),
            concurrency: cfg.gather.concurrency,
            ..GatherOptions::default()
        };
        let gathered = gather(
            &self.clients,
            w,
            &cfg.version,
            &requests,
            bounds,
            self.model.clone(),
            &options,
        )
        .await;
        report.gather = started.elapsed();
        let inputs: Vec<(u16, PeerInput<SkipReason>)> = gathered
            .into_iter()
            .map(|g| {
                let input = match g.outcome {
                    Ok(gradient) => PeerInput::Valid(*gradient),
                    Err(reason) => PeerInput::Skipped(reason),
                };
                (g.uid, input)
            })
            .collect();

        // Aggregate (CPU-bound: off the async threads).
        let started = Instant::now();
        let (model, backend, version) = (self.model.clone(), self.backend.clone(), cfg.version.clone());
        let aggregated = tokio::task::spawn_blocking(move || {
            let a = aggregate_window(&model, backend.as_ref(), w as i64, &version, &inputs, python_utc_now())
                .map_err(|e| DaemonError::Internal(e.to_string()))?;
            let bytes = match &a.file {
                Some(file) => Some(file.to_bytes().map_err(|e| DaemonError::Internal(e.to_string()))?),
                None => None,
            };
            Ok::<_, DaemonError>((bytes, a.valid_uids, a.skipped))
        })
        .await
        .map_err(|e| DaemonError::Internal(e.to_string()))??;
        let (bytes, valid, skipped) = aggregated;
        report.process = started.elapsed();
        report.aggregated = valid;
        report.skipped = skipped;

        // Put (complete or absent), then retention.
        let next = Some((selection.peers.clone(), selection.state.clone()));
        let Some(bytes) = bytes else {
            report.result = WindowResult::NoValidPeers;
            return Ok((report, next));
        };
        let started = Instant::now();
        let len = bytes.len() as u64;
        // A put cut by the timeout is dropped mid-way: a single PUT never completes, a multipart upload is never
        // completed (and expires with the bucket's lifecycle rules): the object is complete or absent.
        tokio::time::timeout(
            storage,
            put(self.output.as_ref(), key.as_ref(), bytes.into(), &PutOptions::default()),
        )
        .await
        .map_err(|_| DaemonError::Storage(format!("{key}: put not done within {storage:?}")))?
        .map_err(|e| DaemonError::Storage(e.to_string()))?;
        report.put = started.elapsed();
        report.output_bytes = len;
        report.result = WindowResult::Stored;
        let retention = delete_old_aggregates(
            self.output.as_ref(),
            &cfg.version,
            w.saturating_sub(cfg.retention_windows),
        );
        let failed = match tokio::time::timeout(storage, retention).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {storage:?}")),
        };
        if let Some(error) = failed {
            self.metrics.error("retention");
            tracing::warn!(window = w, %error, "retention");
        }
        Ok((report, next))
    }
}
