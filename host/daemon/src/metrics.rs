//! Prometheus metrics (`prometheus-client`), named by Prometheus's rules: every family is `aggregator_*`, a counter's
//! samples end in `_total`, a unit is a suffix (`_seconds`, `_bytes`, `_ratio`), and a label key has one meaning in
//! every family (`result`, `reason`, `stage`, `policy`, `kind`, `item`, `bound`). Every family and every label value
//! of its closed set is present from start-up (at 0), so that a dashboard or an alert never needs `absent()`.
//! The HTTP endpoint serving them is [`crate::status`].

use std::sync::atomic::AtomicU64;

use aggregator_policy::{PolicyKind, SlotStats};
use aggregator_store::{SkipKind, SkipReason};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::report::WindowResult;

macro_rules! label_set {
    ($(#[$doc:meta])* $name:ident { $key:ident }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        pub struct $name {
            /// The label's value.
            pub $key: String,
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self { $key: s.to_string() }
            }
        }
    };
}

label_set!(
    /// `result`: how something ended (a window, a receipt write).
    ResultLabel { result }
);
label_set!(
    /// `reason`: why a peer was skipped ([`SkipKind::label`]).
    ReasonLabel { reason }
);
label_set!(
    /// `stage`: a stage of a window, or of the commitment filter.
    StageLabel { stage }
);
label_set!(
    /// `policy`: a policy interface (`peer-selection`, `time-bounds`, …).
    PolicyLabel { policy }
);
label_set!(
    /// `kind`: the kind of an error ([`ErrorKind::label`]).
    KindLabel { kind }
);
label_set!(
    /// `item`: a chain storage item.
    ItemLabel { item }
);
label_set!(
    /// `bound`: `not_before` or `not_after`.
    BoundLabel { bound }
);

/// A shadow candidate's call: which policy, and what happened (`same`, `differs`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabel {
    /// The policy interface (`peer-selection`, `time-bounds`).
    pub policy: String,
    /// `same`, `differs` or `failed`.
    pub result: String,
}

/// `aggregator_build_info`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    git_sha: String,
    device: String,
}

/// What the binary was built from and runs on: `aggregator_build_info`, the status page and `--version`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BuildInfo {
    /// The crate version.
    pub version: String,
    /// The git commit it was built from (`unknown` outside a checkout).
    pub git_sha: String,
    /// The numeric backend in use (`cpu`, `wgpu`, `cuda`).
    pub device: String,
}

impl Default for BuildInfo {
    fn default() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").into(),
            git_sha: "unknown".into(),
            device: "cpu".into(),
        }
    }
}

/// The kinds of error the daemon counts (`aggregator_errors_total{kind}`): a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Bad configuration.
    Config,
    /// The state file (load or save).
    State,
    /// A chain read failed.
    Chain,
    /// A policy failed (after fallbacks).
    Policy,
    /// Object storage (the output bucket).
    Storage,
    /// A bug or a panic inside the host.
    Internal,
    /// The persisted state was ahead of the chain (reset).
    StateAheadOfChain,
    /// Closed windows older than `max_backfill` were not processed.
    BackfillLimit,
    /// Deleting an old aggregate failed.
    Retention,
    /// A receipt could not be written yet (kept to retry).
    ReceiptPending,
    /// `Timestamp::Now` unreadable.
    ChainTimestamp,
    /// The block hash unreadable.
    ChainBlockHash,
    /// The leader's posted peer list unreadable.
    PeerList,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::Config,
        ErrorKind::State,
        ErrorKind::Chain,
        ErrorKind::Policy,
        ErrorKind::Storage,
        ErrorKind::Internal,
        ErrorKind::StateAheadOfChain,
        ErrorKind::BackfillLimit,
        ErrorKind::Retention,
        ErrorKind::ReceiptPending,
        ErrorKind::ChainTimestamp,
        ErrorKind::ChainBlockHash,
        ErrorKind::PeerList,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::State => "state",
            ErrorKind::Chain => "chain",
            ErrorKind::Policy => "policy",
            ErrorKind::Storage => "storage",
            ErrorKind::Internal => "internal",
            ErrorKind::StateAheadOfChain => "state_ahead_of_chain",
            ErrorKind::BackfillLimit => "backfill_limit",
            ErrorKind::Retention => "retention",
            ErrorKind::ReceiptPending => "receipt_pending",
            ErrorKind::ChainTimestamp => "chain_timestamp",
            ErrorKind::ChainBlockHash => "chain_block_hash",
            ErrorKind::PeerList => "peer_list",
        }
    }
}

/// The stages of a window, as `aggregator_stage_seconds{stage}` and the status page time them.
pub const STAGES: [&str; 4] = ["chain", "gather", "process", "put"];

/// Receipt outcomes (`aggregator_receipts_total{result}`).
pub const RECEIPT_RESULTS: [&str; 3] = ["written", "recovered", "failed"];

/// Shadow call outcomes.
pub const SHADOW_RESULTS: [&str; 3] = ["same", "differs", "failed"];

/// Chain items that can be defaulted when undecodable.
pub const DEFAULTED_ITEMS: [&str; 1] = ["TaoWeight"];

type Hist = Family<StageLabel, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    // 10 ms to about 5 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

/// Per-policy counters mirrored from the policies' own ([`SlotStats`]).
#[derive(Default)]
struct PolicyCounters {
    calls: Family<PolicyLabel, Counter>,
    failures: Family<PolicyLabel, Counter>,
    fallbacks: Family<PolicyLabel, Counter>,
    swaps: Family<PolicyLabel, Counter>,
    rejections: Family<PolicyLabel, Counter>,
}

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    /// Serialises [`Metrics::policies`] (the window loop and the policy watcher both bring the counters up).
    policy_sync: std::sync::Mutex<()>,
    windows: Family<ResultLabel, Counter>,
    success_ratio: Gauge<f64, AtomicU64>,
    peers_selected: Counter,
    peers_aggregated: Counter,
    peers_skipped: Family<ReasonLabel, Counter>,
    stage_seconds: Hist,
    errors: Family<KindLabel, Counter>,
    policy: PolicyCounters,
    last_processed: Gauge,
    last_stored_window: Gauge,
    last_stored_timestamp: Gauge<f64, AtomicU64>,
    lag: Gauge,
    output_bytes: Counter,
    head: Gauge,
    head_timestamp: Gauge<f64, AtomicU64>,
    block_time: Gauge<f64, AtomicU64>,
    retry_queue: Gauge,
    policy_state_resets: Family<PolicyLabel, Counter>,
    commitments_skipped: Family<StageLabel, Counter>,
    chain_values_defaulted: Family<ItemLabel, Counter>,
    receipts: Family<ResultLabel, Counter>,
    windows_without_receipt: Counter,
    shadow_calls: Family<ShadowLabel, Counter>,
    shadow_peers_added: Counter,
    shadow_peers_removed: Counter,
    shadow_jaccard: Gauge<f64, AtomicU64>,
    shadow_weights_changed: Gauge,
    shadow_bounds_moved: Family<BoundLabel, Gauge<f64, AtomicU64>>,
    shadow_sign_agreement: Gauge<f64, AtomicU64>,
    weighting_excluded: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&BuildInfo::default())
    }
}

impl Metrics {
    /// Registers every family under the `aggregator_` prefix, every closed label set at 0, and `build_info`.
    pub fn new(build: &BuildInfo) -> Self {
        let mut r = Registry::with_prefix("aggregator");
        let m = Self {
            windows: Family::default(),
            success_ratio: Gauge::default(),
            peers_selected: Counter::default(),
            peers_aggregated: Counter::default(),
            peers_skipped: Family::default(),
            stage_seconds: Family::new_with_constructor(stage_histogram as fn() -> Histogram),
            errors: Family::default(),
            policy: PolicyCounters::default(),
            last_processed: Gauge::default(),
            last_stored_window: Gauge::default(),
            last_stored_timestamp: Gauge::default(),
            lag: Gauge::default(),
            output_bytes: Counter::default(),
            head: Gauge::default(),
            head_timestamp: Gauge::default(),
            block_time: Gauge::default(),
            retry_queue: Gauge::default(),
            policy_state_resets: Family::default(),
            commitments_skipped: Family::default(),
            chain_values_defaulted: Family::default(),
            receipts: Family::default(),
            windows_without_receipt: Counter::default(),
            shadow_calls: Family::default(),
            shadow_peers_added: Counter::default(),
            shadow_peers_removed: Counter::default(),
            shadow_jaccard: Gauge::default(),
            shadow_weights_changed: Gauge::default(),
            shadow_bounds_moved: Family::default(),
            shadow_sign_agreement: Gauge::default(),
            weighting_excluded: Counter::default(),
            registry: Registry::default(),
            policy_sync: std::sync::Mutex::new(()),
        };
        r.register(
            "build",
            "What this server was built from and runs on (value 1): version, git_sha, device",
            Info::new(BuildLabels {
                version: build.version.clone(),
                git_sha: build.git_sha.clone(),
                device: build.device.clone(),
            }),
        );
        r.register(
            "windows",
            "Windows processed, by result (stored, no_valid_peers, already_stored, failed)",
            m.windows.clone(),
        );
        r.register(
            "window_success_ratio",
            "Peers aggregated / peers selected in the last processed window",
            m.success_ratio.clone(),
        );
        r.register(
            "peers_selected",
            "Peers selected by the peer-selection policy",
            m.peers_selected.clone(),
        );
        r.register(
            "peers_aggregated",
            "Peers whose gradient was aggregated",
            m.peers_aggregated.clone(),
        );
        r.register(
            "peers_skipped",
            "Selected peers skipped, by reason",
            m.peers_skipped.clone(),
        );
        r.register(
            "stage_seconds",
            "Duration of each stage of a window (stage: chain, gather, process, put)",
            m.stage_seconds.clone(),
        );
        r.register("errors", "Errors, by kind", m.errors.clone());
        r.register(
            "policy_calls",
            "Calls to each policy interface's current component",
            m.policy.calls.clone(),
        );
        r.register(
            "policy_failures",
            "Calls on which the current component failed (an error, a trap, a limit, an invalid output)",
            m.policy.failures.clone(),
        );
        r.register(
            "policy_fallbacks",
            "Failed policy calls answered by a fallback (the previous or the embedded component)",
            m.policy.fallbacks.clone(),
        );
        r.register(
            "policy_swaps",
            "Policy components swapped in while running (a new version of a watched file)",
            m.policy.swaps.clone(),
        );
        r.register(
            "policy_rejections",
            "New versions of a watched policy component refused (the current one stays)",
            m.policy.rejections.clone(),
        );
        r.register(
            "last_processed_window",
            "The newest processed window (stored, empty or failed)",
            m.last_processed.clone(),
        );
        r.register(
            "last_stored_window",
            "The newest window whose aggregate this server stored",
            m.last_stored_window.clone(),
        );
        r.register(
            "last_stored_timestamp_seconds",
            "Unix time at which the newest aggregate was stored (0: none since start-up)",
            m.last_stored_timestamp.clone(),
        );
        r.register("lag_windows", "Closed windows not processed yet", m.lag.clone());
        r.register("output_bytes", "Bytes of aggregates stored", m.output_bytes.clone());
        r.register("head_block", "The newest chain head seen", m.head.clone());
        r.register(
            "head_timestamp_seconds",
            "Unix time at which the newest chain head was seen (0: none yet)",
            m.head_timestamp.clone(),
        );
        r.register(
            "block_time_seconds",
            "Observed time between chain heads (median of the recent ones); /healthz uses it",
            m.block_time.clone(),
        );
        r.register(
            "retry_queue_windows",
            "Failed windows waiting for a retry (redone while within max_backfill of the newest closed window)",
            m.retry_queue.clone(),
        );
        r.register(
            "policy_state_resets",
            "Policy calls repeated with an empty state because every policy refused the saved one, by policy",
            m.policy_state_resets.clone(),
        );
        r.register(
            "commitments_skipped",
            "Bucket commitments not used, by stage (rule = Templar's rule at the chain read, bucket = the 128 \
             characters do not parse as a bucket)",
            m.commitments_skipped.clone(),
        );
        r.register(
            "chain_values_defaulted",
            "Chain values present but undecodable and taken as 0, by storage item",
            m.chain_values_defaulted.clone(),
        );
        r.register(
            "receipts",
            "Window receipts, by result (written = beside the aggregate at once, recovered = written later from the \
             state directory after a failed put or a crash between the two writes, failed = a put that failed, kept \
             to be retried)",
            m.receipts.clone(),
        );
        r.register(
            "windows_without_receipt",
            "Stored aggregates found without their receipt and with none pending in the state directory (a receipt \
             lost with the state directory, or a bucket written by another server)",
            m.windows_without_receipt.clone(),
        );
        r.register(
            "shadow_calls",
            "Shadow candidates' calls on the active policies' inputs, by policy and result (same, differs, failed: \
             an error, trap, limit or invalid output, which never affects the window)",
            m.shadow_calls.clone(),
        );
        r.register(
            "shadow_peers_added",
            "Peers the peer-selection shadow candidate selected that the active policy did not",
            m.shadow_peers_added.clone(),
        );
        r.register(
            "shadow_peers_removed",
            "Peers the active policy selected that the peer-selection shadow candidate did not",
            m.shadow_peers_removed.clone(),
        );
        r.register(
            "shadow_jaccard_ratio",
            "Jaccard overlap of the active and shadow peer sets in the last window (1 = the same peers)",
            m.shadow_jaccard.clone(),
        );
        r.register(
            "shadow_weights_changed_peers",
            "Peers in both selections whose weight differs, last window",
            m.shadow_weights_changed.clone(),
        );
        r.register(
            "shadow_bounds_moved_seconds",
            "Shadow time bounds minus the active ones in the last window, by bound (not_before, not_after)",
            m.shadow_bounds_moved.clone(),
        );
        r.register(
            "shadow_sign_agreement_ratio",
            "Fraction of sign bits of the shadow selection's aggregate equal to the stored aggregate's, last window \
             (with shadow_aggregate)",
            m.shadow_sign_agreement.clone(),
        );
        r.register(
            "weighting_excluded_peers",
            "Valid peers the contribution-weighting policy gave weight 0 although their selection weight was not 0",
            m.weighting_excluded.clone(),
        );
        // Every closed label set, at 0 from the start.
        for result in [
            WindowResult::Stored,
            WindowResult::NoValidPeers,
            WindowResult::AlreadyStored,
            WindowResult::Failed(String::new()),
        ] {
            touch(&m.windows, result.label());
        }
        for k in SkipKind::ALL {
            touch(&m.peers_skipped, k.label());
        }
        for s in STAGES {
            drop(m.stage_seconds.get_or_create(&s.into()));
        }
        for k in ErrorKind::ALL {
            touch(&m.errors, k.label());
        }
        for kind in PolicyKind::ALL {
            let p = kind.interface();
            let c = &m.policy;
            for f in [
                &c.calls,
                &c.failures,
                &c.fallbacks,
                &c.swaps,
                &c.rejections,
                &m.policy_state_resets,
            ] {
                touch(f, p);
            }
            for result in SHADOW_RESULTS {
                drop(m.shadow_calls.get_or_create(&ShadowLabel {
                    policy: p.into(),
                    result: result.into(),
                }));
            }
        }
        for s in ["rule", "bucket"] {
            touch(&m.commitments_skipped, s);
        }
        for i in DEFAULTED_ITEMS {
            touch(&m.chain_values_defaulted, i);
        }
        for result in RECEIPT_RESULTS {
            touch(&m.receipts, result);
        }
        for b in ["not_before", "not_after"] {
            drop(m.shadow_bounds_moved.get_or_create(&b.into()));
        }
        Self {
            registry: r,
            policy_sync: std::sync::Mutex::new(()),
            ..m
        }
    }

    /// Counts a shadow candidate's call (`same`, `differs`, `failed`).
    pub fn shadow_call(&self, policy: &str, result: &str) {
        self.shadow_calls
            .get_or_create(&ShadowLabel {
                policy: policy.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Records how the peer-selection shadow's decision compared.
    pub fn shadow_selection(&self, added: u64, removed: u64, jaccard: f64, weights_changed: u64) {
        self.shadow_peers_added.inc_by(added);
        self.shadow_peers_removed.inc_by(removed);
        self.shadow_jaccard.set(jaccard);
        self.shadow_weights_changed.set(weights_changed as i64);
    }

    /// Records how far the time-bounds shadow moved the bounds (ms).
    pub fn shadow_bounds_moved(&self, not_before_ms: i64, not_after_ms: i64) {
        self.shadow_bounds_moved
            .get_or_create(&"not_before".into())
            .set(not_before_ms as f64 / 1000.0);
        self.shadow_bounds_moved
            .get_or_create(&"not_after".into())
            .set(not_after_ms as f64 / 1000.0);
    }

    /// Records the shadow aggregate's sign agreement.
    pub fn shadow_sign_agreement(&self, fraction: f64) {
        self.shadow_sign_agreement.set(fraction);
    }

    /// Counts peers the contribution-weighting policy left out of a window.
    pub fn weighting_excluded(&self, peers: u64) {
        self.weighting_excluded.inc_by(peers);
    }

    /// Counts a receipt event (`written`, `recovered`, `failed`).
    pub fn receipt(&self, what: &str) {
        self.receipts.get_or_create(&what.into()).inc();
    }

    /// Counts a stored window found without a receipt.
    pub fn window_without_receipt(&self) {
        self.windows_without_receipt.inc();
    }

    /// Counts a processed window; a stored one also sets `last_stored_*`.
    pub fn window(&self, window: u64, result: &WindowResult, finished_ms: u64) {
        self.windows.get_or_create(&result.label().into()).inc();
        if *result == WindowResult::Stored {
            self.last_stored_window
                .set(self.last_stored_window.get().max(window as i64));
            self.last_stored_timestamp.set(finished_ms as f64 / 1000.0);
        }
    }

    /// Records a window's peers.
    pub fn peers(&self, selected: usize, aggregated: usize, skipped: &[(u16, SkipReason)]) {
        self.peers_selected.inc_by(selected as u64);
        self.peers_aggregated.inc_by(aggregated as u64);
        for (_, reason) in skipped {
            // The label is the reason's kind (a closed set), keeping cardinality bounded.
            self.peers_skipped.get_or_create(&reason.kind().label().into()).inc();
        }
        if selected > 0 {
            self.success_ratio.set(aggregated as f64 / selected as f64);
        }
    }

    /// Counts `n` commitments skipped at `stage` (`rule` or `bucket`).
    pub fn commitments_skipped(&self, stage: &str, n: usize) {
        if n > 0 {
            self.commitments_skipped.get_or_create(&stage.into()).inc_by(n as u64);
        }
    }

    /// Counts a chain value taken as 0 because it did not decode.
    pub fn chain_value_defaulted(&self, item: &str) {
        self.chain_values_defaulted.get_or_create(&item.into()).inc();
    }

    /// Records a stage's duration (one of [`STAGES`]).
    pub fn stage(&self, stage: &str, seconds: f64) {
        self.stage_seconds.get_or_create(&stage.into()).observe(seconds);
    }

    /// Counts an error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&kind.label().into()).inc();
    }

    /// Brings the per-policy counters up to the policies' own totals (which only grow).
    pub fn policies(&self, stats: &[(PolicyKind, SlotStats)]) {
        // Read-then-add is only right for one caller at a time.
        let _one = self.policy_sync.lock().unwrap_or_else(|e| e.into_inner());
        let c = &self.policy;
        for (kind, s) in stats {
            let label: PolicyLabel = kind.interface().into();
            for (family, total) in [
                (&c.calls, s.calls),
                (&c.failures, s.failures),
                (&c.fallbacks, s.fallbacks),
                (&c.swaps, s.swaps),
                (&c.rejections, s.rejections),
            ] {
                let counter = family.get_or_create(&label);
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
    }

    /// Sets the last processed window and the lag behind the newest closed one.
    pub fn progress(&self, last_processed: Option<u64>, newest_closed: Option<u64>) {
        if let Some(w) = last_processed {
            self.last_processed.set(w as i64);
        }
        let lag = match (last_processed, newest_closed) {
            (Some(p), Some(c)) => c.saturating_sub(p),
            (None, Some(_)) => 1,
            _ => 0,
        };
        self.lag.set(lag as i64);
    }

    /// Counts stored bytes.
    pub fn output(&self, bytes: u64) {
        self.output_bytes.inc_by(bytes);
    }

    /// Sets the newest head, when it was seen (unix ms) and the observed block time.
    pub fn head(&self, block: u64, seen_ms: u64, block_time_s: f64) {
        self.head.set(block as i64);
        self.head_timestamp.set(seen_ms as f64 / 1000.0);
        self.block_time.set(block_time_s);
    }

    /// Sets the number of windows waiting for a retry.
    pub fn retry_queue(&self, windows: usize) {
        self.retry_queue.set(windows as i64);
    }

    /// Counts a policy state reset.
    pub fn policy_state_reset(&self, policy: &str) {
        self.policy_state_resets.get_or_create(&policy.into()).inc();
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Creates a label set's series at 0.
fn touch<L: Clone + std::hash::Hash + Eq + for<'a> From<&'a str>, M: Default>(f: &Family<L, M>, value: &str) {
    drop(f.get_or_create(&value.into()));
}
