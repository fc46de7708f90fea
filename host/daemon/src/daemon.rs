//! The window loop: closed windows from the head follower → time bounds → peer selection → gather → aggregate →
//! put → report, one window at a time, oldest first, with state persisted after each.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregator_chain::{Chain, ChainError, HeadEvent, Metagraph, sync_block};
use aggregator_kernels::{Backend, Cpu};
use aggregator_model::ModelSpec;
use aggregator_policy::bindings::exports::templar::policy::peer_selection::SelectionInput;
use aggregator_policy::bindings::exports::templar::policy::time_bounds::BoundsInput;
use aggregator_policy::bindings::templar::policy::types::{ChainView, Neuron, PostedList};
use aggregator_policy::{Policies, PolicyConfig, PolicyEngine, PolicyKind, PolicyLimits};
use aggregator_store::{
    Bounds, Bucket, ClientSettings, Clients, GatherOptions, PeerRequest, PutOptions, aggregate_key,
    delete_old_aggregates, gather, posted_lists, put,
};
use aggregator_window::{WindowError, aggregate_window, python_utc_now};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::{mpsc, watch};

use crate::config::DaemonConfig;
use crate::metrics::{Health, Metrics};
use crate::state::{PersistedState, StateFile};
use crate::{DaemonError, now_ms};

/// The peers and policy state to keep after a window (none when it failed).
type NextSelection = Option<(Vec<u16>, Vec<u8>)>;

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
    /// Uids skipped with reasons.
    pub skipped: Vec<(u16, String)>,
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
}

fn pathbuf(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

impl<C: Chain + 'static> Daemon<C> {
    /// Loads the model, the policies, the output bucket and the persisted state.
    pub fn new(config: DaemonConfig, chain: C, output: Bucket) -> Result<Self, DaemonError> {
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
            chain,
            policies: Arc::new(policies),
            clients,
            output,
            model: Arc::new(model),
            backend: Arc::new(Cpu::new()),
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::default()),
            state_file,
            state,
            reports: None,
        })
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

    /// Processes closed windows from `heads` until it ends or `shutdown` turns true. On shutdown the current
    /// window gets `grace` to finish; after that it is abandoned (its output is then absent: puts are
    /// all-or-nothing) and the state still names the previous window, so a restart redoes it.
    pub async fn run(
        mut self,
        mut heads: mpsc::Receiver<HeadEvent>,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) -> Result<(), DaemonError> {
        let mut queue: VecDeque<u64> = VecDeque::new();
        let mut newest_closed = self.state.last_processed;
        loop {
            if queue.is_empty() {
                tokio::select! {
                    changed = shutdown.changed() => if changed.is_err() {
                        return Ok(());
                    },
                    ev = heads.recv() => match ev {
                        Some(ev) => self.on_head(&ev, &mut queue, &mut newest_closed),
                        None => return Ok(()),
                    }
                }
            }
            while let Ok(ev) = heads.try_recv() {
                self.on_head(&ev, &mut queue, &mut newest_closed);
            }
            if *shutdown.borrow() {
                tracing::info!("shutting down between windows");
                return Ok(());
            }
            let Some(w) = queue.pop_front() else { continue };
            self.metrics.progress(self.state.last_processed, newest_closed);
            let mut stop = shutdown.clone();
            let abandoned = {
                let work = self.process_with_retries(w);
                tokio::pin!(work);
                tokio::select! {
                    report = &mut work => Some(report),
                    _ = async { let _ = stop.wait_for(|s| *s).await; tokio::time::sleep(grace).await } => None,
                }
            };
            let Some(report) = abandoned else {
                tracing::warn!(window = w, "shutdown: window abandoned; a restart processes it again");
                return Ok(());
            };
            self.finish(report?)?;
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

    fn finish(&mut self, (report, selection): (WindowReport, NextSelection)) -> Result<(), DaemonError> {
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
        if let Some((peers, state)) = selection {
            self.state.current_peers = peers;
            self.state.selection_state = hex::encode(state);
        }
        self.state.last_processed = Some(report.window);
        self.state_file.save(&self.state)?;
        match &report.result {
            WindowResult::Failed(reason) => tracing::error!(window = report.window, %reason, "window failed"),
            r => tracing::info!(
                window = report.window,
                result = r.label(),
                selected = report.selected.len(),
                aggregated = report.aggregated.len(),
                skipped = report.skipped.len(),
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
        Ok(())
    }

    async fn process_with_retries(&self, w: u64) -> Result<(WindowReport, NextSelection), DaemonError> {
        const ATTEMPTS: u32 = 3;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.process(w).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    self.metrics.error(e.kind());
                    tracing::warn!(window = w, attempt, error = %e, "window attempt failed");
                    last = e.to_string();
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(Duration::from_secs(2 * attempt as u64)).await;
                    }
                }
            }
        }
        Ok((WindowReport::new(w, WindowResult::Failed(last)), None))
    }

    async fn metagraph(&self, block: u64) -> Result<Metagraph, ChainError> {
        match self.chain.metagraph(self.config.netuid, Some(block)).await {
            // A pruned sync block (a long backfill on a lite node): the current metagraph, as Templar uses.
            Err(ChainError::BlockNotFound(_)) => self.chain.metagraph(self.config.netuid, None).await,
            other => other,
        }
    }

    fn peer_bucket(&self, text: &str) -> Option<Bucket> {
        let b = Bucket::from_commitment(text).ok()?;
        Some(match self.config.peer_endpoint() {
            Some(e) => b.at(e),
            None => b,
        })
    }

    /// One window, start to end. Errors are transient failures (chain, policy, storage) worth a retry.
    async fn process(&self, w: u64) -> Result<(WindowReport, NextSelection), DaemonError> {
        let cfg = &self.config;
        let key = ObjectPath::from(aggregate_key(w, &cfg.version));
        let mut report = WindowReport::new(w, WindowResult::AlreadyStored);
        match self.output.head(&key).await {
            Ok(meta) => {
                tracing::info!(
                    window = w,
                    bytes = meta.size,
                    "aggregate already stored; not writing it again"
                );
                return Ok((report, None));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(DaemonError::Storage(format!("{key}: {e}"))),
        }
        self.policies.begin_window();

        // Chain and policies.
        let started = Instant::now();
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
        let commitments = self.chain.commitments(&metagraph).await?;
        let buckets: BTreeMap<u16, Bucket> = commitments
            .by_uid
            .iter()
            .filter_map(|(uid, c)| Some((*uid, self.peer_bucket(&c.text)?)))
            .collect();
        let (latest, previous) = match metagraph.leader().and_then(|l| buckets.get(&l.uid)) {
            Some(bucket) => match self.clients.get(bucket) {
                Ok(store) => posted_lists(store.as_ref(), &cfg.version).await.unwrap_or_else(|e| {
                    self.metrics.error("peer_list");
                    tracing::warn!(window = w, error = %e, "cannot read the leader's peer lists");
                    (None, None)
                }),
                Err(e) => {
                    tracing::warn!(window = w, error = %e, "leader bucket");
                    (None, None)
                }
            },
            None => (None, None),
        };
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
        let bounds = Bounds {
            not_before_ms: bounds.value.not_before_ms,
            not_after_ms: bounds.value.not_after_ms,
        };
        let selection = selection.value;
        report.bounds = (bounds.not_before_ms, bounds.not_after_ms);
        report.selected = selection.peers.clone();
        report.chain = started.elapsed();
        tracing::info!(window = w, peers = ?selection.peers, note = %selection.note, "peers selected");

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
        let inputs: Vec<(u16, aggregator_window::PeerInput)> =
            gathered.into_iter().map(|g| (g.uid, g.outcome.into_input())).collect();

        // Aggregate (CPU-bound: off the async threads).
        let started = Instant::now();
        let (model, backend, version) = (self.model.clone(), self.backend.clone(), cfg.version.clone());
        let aggregated = tokio::task::spawn_blocking(move || {
            let agg = aggregate_window(&model, backend.as_ref(), w as i64, &version, &inputs, python_utc_now());
            match agg {
                Ok(a) => {
                    let bytes = a.file.to_bytes().map_err(|e| DaemonError::Internal(e.to_string()))?;
                    Ok((Some(bytes), a.valid_uids, a.skipped))
                }
                Err(WindowError::NoValidPeers { .. }) => {
                    let skipped = inputs
                        .into_iter()
                        .filter_map(|(uid, i)| match i {
                            aggregator_window::PeerInput::Skipped(r) => Some((uid, r)),
                            aggregator_window::PeerInput::Valid(_) => None,
                        })
                        .collect();
                    Ok((None, vec![], skipped))
                }
                Err(e) => Err(DaemonError::Internal(e.to_string())),
            }
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
        put(self.output.as_ref(), key.as_ref(), bytes.into(), &PutOptions::default())
            .await
            .map_err(|e| DaemonError::Storage(e.to_string()))?;
        report.put = started.elapsed();
        report.output_bytes = len;
        report.result = WindowResult::Stored;
        if let Err(e) = delete_old_aggregates(
            self.output.as_ref(),
            &cfg.version,
            w.saturating_sub(cfg.retention_windows),
        )
        .await
        {
            self.metrics.error("retention");
            tracing::warn!(window = w, error = %e, "retention");
        }
        Ok((report, next))
    }
}
