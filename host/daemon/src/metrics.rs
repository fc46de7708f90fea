//! Prometheus metrics (`prometheus-client`) and a small HTTP/1 endpoint (hyper) serving `/metrics` and `/healthz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aggregator_store::SkipReason;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::DaemonError;

/// One label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    /// `result`, `reason`, `stage`, `kind` or `slot`, by family.
    pub label: String,
}

fn l(s: &str) -> Label {
    Label { label: s.to_string() }
}

/// A shadow candidate's call: which policy kind, and what happened (`same`, `differs`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabel {
    /// The policy interface (`peer-selection`, `time-bounds`).
    pub policy: String,
    /// `same`, `differs` or `failed`.
    pub result: String,
}

type Hist = Family<Label, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    // 10 ms to about 5 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    windows: Family<Label, Counter>,
    success_rate: Gauge<f64, AtomicU64>,
    peers_selected: Counter,
    peers_aggregated: Counter,
    peers_skipped: Family<Label, Counter>,
    stage_seconds: Hist,
    errors: Family<Label, Counter>,
    policy_fallbacks: Family<Label, Gauge>,
    last_processed: Gauge,
    lag: Gauge,
    output_bytes: Counter,
    head: Gauge,
    retry_queue: Gauge,
    policy_state_resets: Family<Label, Counter>,
    commitments_skipped: Family<Label, Counter>,
    chain_values_defaulted: Family<Label, Counter>,
    receipts: Family<Label, Counter>,
    windows_without_receipt: Counter,
    shadow_calls: Family<ShadowLabel, Counter>,
    shadow_peers_added: Counter,
    shadow_peers_removed: Counter,
    shadow_jaccard: Gauge<f64, AtomicU64>,
    shadow_weights_changed: Gauge,
    shadow_bounds_moved: Family<Label, Gauge>,
    shadow_sign_agreement: Gauge<f64, AtomicU64>,
    weighting_excluded: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family under the `aggregator_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aggregator");
        let m = Self {
            windows: Family::default(),
            success_rate: Gauge::default(),
            peers_selected: Counter::default(),
            peers_aggregated: Counter::default(),
            peers_skipped: Family::default(),
            stage_seconds: Family::new_with_constructor(stage_histogram as fn() -> Histogram),
            errors: Family::default(),
            policy_fallbacks: Family::default(),
            last_processed: Gauge::default(),
            lag: Gauge::default(),
            output_bytes: Counter::default(),
            head: Gauge::default(),
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
        };
        registry.register(
            "windows",
            "Windows processed, by result (label: stored, no_valid_peers, already_stored, failed)",
            m.windows.clone(),
        );
        registry.register(
            "success_rate",
            "Success rate of the last processed window (valid / selected)",
            m.success_rate.clone(),
        );
        registry.register(
            "peers_selected",
            "Peers selected by the peer-selection policy",
            m.peers_selected.clone(),
        );
        registry.register(
            "peers_aggregated",
            "Peers whose gradient was aggregated",
            m.peers_aggregated.clone(),
        );
        registry.register(
            "peers_skipped",
            "Selected peers skipped, by reason",
            m.peers_skipped.clone(),
        );
        registry.register(
            "stage_seconds",
            "Duration of each stage of a window (label: chain, policy, gather, process, put)",
            m.stage_seconds.clone(),
        );
        registry.register("errors", "Errors by kind", m.errors.clone());
        registry.register(
            "policy_fallbacks",
            "Policy calls answered by a fallback, by slot",
            m.policy_fallbacks.clone(),
        );
        registry.register(
            "last_processed_window",
            "The newest processed window",
            m.last_processed.clone(),
        );
        registry.register("lag_windows", "Closed windows not processed yet", m.lag.clone());
        registry.register("output_bytes", "Bytes of aggregates stored", m.output_bytes.clone());
        registry.register("head_block", "The newest chain head seen", m.head.clone());
        registry.register(
            "retry_queue_windows",
            "Failed windows waiting for a retry (redone while within max_backfill of the newest closed window)",
            m.retry_queue.clone(),
        );
        registry.register(
            "policy_state_resets",
            "Policy calls repeated with an empty state because every policy refused the saved one, by slot",
            m.policy_state_resets.clone(),
        );
        registry.register(
            "commitments_skipped",
            "Bucket commitments not used, by stage (label: rule = Templar's rule at the chain read, bucket = the \
             128 characters do not parse as a bucket)",
            m.commitments_skipped.clone(),
        );
        registry.register(
            "chain_values_defaulted",
            "Chain values present but undecodable and taken as 0, by storage item (label: TaoWeight)",
            m.chain_values_defaulted.clone(),
        );
        registry.register(
            "receipts",
            "Window receipts, by what happened (label: written = beside the aggregate at once, recovered = written \
             later from the state directory after a failed put or a crash between the two writes, failed = a put \
             that failed, kept to be retried)",
            m.receipts.clone(),
        );
        // Present from the start (0), so that an alert on it needs no `absent()`.
        for label in ["written", "recovered", "failed"] {
            drop(m.receipts.get_or_create(&l(label)));
        }
        registry.register(
            "windows_without_receipt",
            "Stored aggregates found without their receipt and with none pending in the state directory (a receipt \
             lost with the state directory, or a bucket written by another server)",
            m.windows_without_receipt.clone(),
        );
        registry.register(
            "shadow_calls",
            "Shadow candidates' calls on the active policies' inputs, by policy and result (same, differs, failed: \
             an error, trap, limit or invalid output, which never affects the window)",
            m.shadow_calls.clone(),
        );
        registry.register(
            "shadow_peers_added",
            "Peers the peer-selection shadow candidate selected that the active policy did not",
            m.shadow_peers_added.clone(),
        );
        registry.register(
            "shadow_peers_removed",
            "Peers the active policy selected that the peer-selection shadow candidate did not",
            m.shadow_peers_removed.clone(),
        );
        registry.register(
            "shadow_jaccard",
            "Jaccard overlap of the active and shadow peer sets in the last window (1 = the same peers)",
            m.shadow_jaccard.clone(),
        );
        registry.register(
            "shadow_weights_changed",
            "Peers in both selections whose weight differs, last window",
            m.shadow_weights_changed.clone(),
        );
        registry.register(
            "shadow_bounds_moved_ms",
            "Shadow time bounds minus the active ones in the last window, ms (label: not_before, not_after)",
            m.shadow_bounds_moved.clone(),
        );
        registry.register(
            "shadow_sign_agreement",
            "Fraction of sign bits of the shadow selection's aggregate equal to the stored aggregate's, last window \
             (with shadow_aggregate)",
            m.shadow_sign_agreement.clone(),
        );
        registry.register(
            "weighting_excluded_peers",
            "Valid peers the contribution-weighting policy gave weight 0 although their selection weight was not 0",
            m.weighting_excluded.clone(),
        );
        Self { registry, ..m }
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

    /// Records how far the time-bounds shadow moved the bounds.
    pub fn shadow_bounds_moved(&self, not_before_ms: i64, not_after_ms: i64) {
        self.shadow_bounds_moved
            .get_or_create(&l("not_before"))
            .set(not_before_ms);
        self.shadow_bounds_moved
            .get_or_create(&l("not_after"))
            .set(not_after_ms);
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
        self.receipts.get_or_create(&l(what)).inc();
    }

    /// Counts a stored window found without a receipt.
    pub fn window_without_receipt(&self) {
        self.windows_without_receipt.inc();
    }

    /// Counts a processed window.
    pub fn window(&self, result: &str) {
        self.windows.get_or_create(&l(result)).inc();
    }

    /// Records a window's peers.
    pub fn peers(&self, selected: usize, aggregated: usize, skipped: &[(u16, SkipReason)]) {
        self.peers_selected.inc_by(selected as u64);
        self.peers_aggregated.inc_by(aggregated as u64);
        for (_, reason) in skipped {
            // The label is the reason's kind (a closed set), keeping cardinality bounded.
            self.peers_skipped.get_or_create(&l(reason.kind().label())).inc();
        }
        if selected > 0 {
            self.success_rate.set(aggregated as f64 / selected as f64);
        }
    }

    /// Counts `n` commitments skipped at `stage` (`rule` or `bucket`).
    pub fn commitments_skipped(&self, stage: &str, n: usize) {
        if n > 0 {
            self.commitments_skipped.get_or_create(&l(stage)).inc_by(n as u64);
        }
    }

    /// Counts a chain value taken as 0 because it did not decode.
    pub fn chain_value_defaulted(&self, field: &str) {
        self.chain_values_defaulted.get_or_create(&l(field)).inc();
    }

    /// Records a stage's duration.
    pub fn stage(&self, stage: &str, seconds: f64) {
        self.stage_seconds.get_or_create(&l(stage)).observe(seconds);
    }

    /// Counts an error.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&l(kind)).inc();
    }

    /// Sets a policy slot's fallback count.
    pub fn policy_fallbacks(&self, slot: &str, count: u64) {
        self.policy_fallbacks.get_or_create(&l(slot)).set(count as i64);
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

    /// Sets the newest head.
    pub fn head(&self, block: u64) {
        self.head.set(block as i64);
    }

    /// Sets the number of windows waiting for a retry.
    pub fn retry_queue(&self, windows: usize) {
        self.retry_queue.set(windows as i64);
    }

    /// Counts a policy state reset.
    pub fn policy_state_reset(&self, slot: &str) {
        self.policy_state_resets.get_or_create(&l(slot)).inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Health as `/healthz` reports it: the time of the last head seen (unix ms; 0 = none yet).
#[derive(Default)]
pub struct Health {
    /// Unix ms of the newest head.
    pub last_head_ms: AtomicU64,
}

/// Serves `/metrics` and `/healthz` on `addr` until the task is aborted; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stale_after_ms: u64,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), DaemonError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| DaemonError::Config(format!("metrics address {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| DaemonError::Config(e.to_string()))?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (metrics, health) = (metrics.clone(), health.clone());
                    async move { Ok::<_, Infallible>(respond(&req, &metrics, &health, stale_after_ms)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics connection");
                }
            });
        }
    });
    Ok((bound, task))
}

fn respond(
    req: &Request<hyper::body::Incoming>,
    metrics: &Metrics,
    health: &Health,
    stale_after_ms: u64,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (&hyper::Method::GET, "/healthz") => {
            let last = health.last_head_ms.load(Ordering::Relaxed);
            let now = crate::now_ms();
            if last > 0 && now.saturating_sub(last) <= stale_after_ms {
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("ok: last head {} ms ago\n", now - last),
                )
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("unhealthy: no chain head for {stale_after_ms} ms\n"),
                )
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}
