//! What an operator looks at: the HTTP endpoint (hyper, HTTP/1) serving `/metrics`, `/healthz`, `/readyz`, the status
//! page `/` and its data `/api/windows`, and a window's receipt `/api/receipts/{window}`; and [`Status`], the record
//! behind them (the last windows' reports, the chain head and the observed block time, the policies in use).
//!
//! It listens before the chain connects, so that an unreachable chain shows as `503` on `/healthz` and `/readyz`
//! rather than as silence.
//!
//! - `/healthz` is 200 while chain heads keep arriving: the newest one was seen less than `health.stale_blocks`
//!   observed block times ago (the median interval of the recent heads; `health.block_time_s` until three heads have
//!   been seen), and never less than 5 s.
//! - `/readyz` is 200 when, in addition, the chain is connected and the window loop runs (Kubernetes' readiness).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aggregator_policy::{Policies, PolicyKind};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::DaemonError;
use crate::metrics::{BuildInfo, Metrics};
use crate::report::{WindowReport, WindowResult};

/// The status page (one file: inline CSS, JavaScript and SVG; no external assets). The server puts the current
/// `/api/windows` JSON in place of `__STATUS_JSON__`, and the page renders it at once, then refreshes every 5 s.
const PAGE: &str = include_str!("status_page.html");

/// Shortest staleness accepted by `/healthz`, whatever the block time.
const MIN_STALE: Duration = Duration::from_secs(5);

/// Head intervals kept to estimate the block time.
const BLOCK_TIME_SAMPLES: usize = 31;

/// Largest receipt served by `/api/receipts/{window}`.
const MAX_RECEIPT_BYTES: u64 = 64 << 20;

/// How `/healthz` decides (`[health]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthRule {
    /// Unhealthy when no head was seen for this many block times.
    pub stale_blocks: u32,
    /// The block time assumed until enough heads were observed, in seconds.
    pub block_time_s: f64,
}

/// One peer skipped in a window, as the page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SkippedPeer {
    /// The peer.
    pub uid: u16,
    /// The reason's kind (the `reason` label of `aggregator_peers_skipped_total`).
    pub reason: &'static str,
    /// The reason in full.
    pub detail: String,
}

/// A window's stage times in seconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageTimes {
    /// Chain reads and policies.
    pub chain: f64,
    /// Gathering.
    pub gather: f64,
    /// Aggregating and encoding.
    pub process: f64,
    /// Storing.
    pub put: f64,
}

/// A window's report as `/api/windows` serves it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowSummary {
    /// The window.
    pub window: u64,
    /// `stored`, `no_valid_peers`, `already_stored` or `failed` (the `result` label of `aggregator_windows_total`).
    pub result: &'static str,
    /// Why it failed.
    pub error: Option<String>,
    /// Uids selected, in order.
    pub selected: Vec<u16>,
    /// Uids aggregated.
    pub aggregated: Vec<u16>,
    /// Uids skipped, with reasons.
    pub skipped: Vec<SkippedPeer>,
    /// Stage times.
    pub stages: StageTimes,
    /// Bytes stored.
    pub output_bytes: u64,
    /// SHA-256 (hex) of the stored aggregate.
    pub output_sha256: Option<String>,
    /// The receipt's key in the output bucket.
    pub receipt: Option<String>,
    /// When the window ended (unix ms).
    pub finished_ms: u64,
}

impl WindowSummary {
    /// The summary of `r`, finished at `finished_ms`.
    pub fn new(r: &WindowReport, finished_ms: u64) -> Self {
        Self {
            window: r.window,
            result: r.result.label(),
            error: match &r.result {
                WindowResult::Failed(e) => Some(e.clone()),
                _ => None,
            },
            selected: r.selected.clone(),
            aggregated: r.aggregated.clone(),
            skipped: r
                .skipped
                .iter()
                .map(|(uid, reason)| SkippedPeer {
                    uid: *uid,
                    reason: reason.kind().label(),
                    detail: reason.to_string(),
                })
                .collect(),
            stages: StageTimes {
                chain: r.chain.as_secs_f64(),
                gather: r.gather.as_secs_f64(),
                process: r.process.as_secs_f64(),
                put: r.put.as_secs_f64(),
            },
            output_bytes: r.output_bytes,
            output_sha256: r.output_sha256.clone(),
            receipt: r.receipt.clone(),
            finished_ms,
        }
    }
}

/// A policy component in use.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyInUse {
    /// The interface (`peer-selection`, …).
    pub policy: &'static str,
    /// `name version`.
    pub component: String,
    /// Where it was loaded from.
    pub origin: String,
    /// SHA-256 of the component.
    pub sha256: String,
}

/// Health as the endpoints and the page report it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Health {
    /// Heads arrive (`/healthz`).
    pub healthy: bool,
    /// Healthy, connected and the window loop running (`/readyz`).
    pub ready: bool,
    /// The newest head.
    pub head: Option<u64>,
    /// How long ago it was seen, ms.
    pub head_age_ms: Option<u64>,
    /// The block time in use, seconds (observed, or the configured one until enough heads were seen).
    pub block_time_s: f64,
    /// Whether `block_time_s` was observed.
    pub block_time_observed: bool,
    /// Unhealthy after this long without a head, ms.
    pub stale_after_ms: u64,
    /// One line saying why.
    pub detail: String,
}

/// `/api/windows`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// The build.
    pub build: BuildInfo,
    /// The chain endpoint.
    pub chain_url: String,
    /// Health.
    pub health: Health,
    /// Policies in use.
    pub policies: Vec<PolicyInUse>,
    /// The last windows, oldest first.
    pub windows: Vec<WindowSummary>,
    /// Unix ms when this view was taken.
    pub now_ms: u64,
}

#[derive(Default)]
struct Heads {
    last: Option<(u64, u64)>,
    intervals_ms: VecDeque<f64>,
}

impl Heads {
    fn observe(&mut self, block: u64, at_ms: u64) -> bool {
        match self.last {
            Some((b, _)) if block <= b => return false,
            Some((b, t)) => {
                self.intervals_ms
                    .push_back(at_ms.saturating_sub(t) as f64 / (block - b) as f64);
                if self.intervals_ms.len() > BLOCK_TIME_SAMPLES {
                    self.intervals_ms.pop_front();
                }
            }
            None => {}
        }
        self.last = Some((block, at_ms));
        true
    }

    /// The median interval, once at least 2 were seen.
    fn block_time_ms(&self) -> Option<f64> {
        if self.intervals_ms.len() < 2 {
            return None;
        }
        let mut v: Vec<f64> = self.intervals_ms.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
}

struct Board {
    heads: Heads,
    windows: VecDeque<WindowSummary>,
    policies: Vec<PolicyInUse>,
}

/// The record behind the endpoints, shared by the window loop (which writes it) and the server (which reads it).
pub struct Status {
    build: BuildInfo,
    chain_url: String,
    rule: HealthRule,
    capacity: usize,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    /// A shard other than 0 (its index; 0: not one): it reads no chain, so its health is its serving loop's.
    shard: std::sync::atomic::AtomicUsize,
    board: Mutex<Board>,
    output: Option<Arc<dyn ObjectStore>>,
}

impl Status {
    /// An empty record keeping the last `capacity` windows; `output` serves receipts.
    pub fn new(
        build: BuildInfo,
        chain_url: String,
        rule: HealthRule,
        capacity: usize,
        metrics: Arc<Metrics>,
        output: Option<Arc<dyn ObjectStore>>,
    ) -> Self {
        Self {
            build,
            chain_url: aggregator_chain::redact_url(&chain_url),
            rule,
            capacity: capacity.max(1),
            metrics,
            ready: AtomicBool::new(false),
            shard: std::sync::atomic::AtomicUsize::new(0),
            board: Mutex::new(Board {
                heads: Heads::default(),
                windows: VecDeque::new(),
                policies: vec![],
            }),
            output,
        }
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        // A panic while holding the lock cannot leave the board inconsistent (every write is one assignment).
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Records a chain head seen at `at_ms` (an older or repeated block is ignored).
    pub fn head(&self, block: u64, at_ms: u64) {
        let mut b = self.board();
        if b.heads.observe(block, at_ms) {
            let bt = b.heads.block_time_ms().map_or(self.rule.block_time_s, |ms| ms / 1000.0);
            self.metrics.head(block, at_ms, bt);
        }
    }

    /// Marks the daemon ready (connected, loop running) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Marks this process as shard `index` (> 0) of a window split across shards: it follows no chain, so
    /// `/healthz` and `/readyz` answer whether it is serving its part ([`Status::set_ready`]), not chain heads.
    pub fn set_shard(&self, index: usize) {
        self.shard.store(index, Ordering::Relaxed);
    }

    /// Records a finished window.
    pub fn window(&self, summary: WindowSummary) {
        let mut b = self.board();
        b.windows.retain(|w| w.window != summary.window);
        b.windows.push_back(summary);
        b.windows.make_contiguous().sort_by_key(|w| w.window);
        while b.windows.len() > self.capacity {
            b.windows.pop_front();
        }
    }

    /// Records the components in use.
    pub fn policies(&self, policies: &Policies) {
        let list = PolicyKind::ALL
            .iter()
            .map(|&kind| {
                let l = policies.current(kind);
                PolicyInUse {
                    policy: kind.interface(),
                    component: format!("{} {}", l.name, l.version),
                    origin: l.origin.clone(),
                    sha256: l.sha256.clone(),
                }
            })
            .collect();
        self.board().policies = list;
    }

    /// Health at `now_ms`.
    pub fn health(&self, now_ms: u64) -> Health {
        let b = self.board();
        let observed = b.heads.block_time_ms();
        let block_time_s = observed.map_or(self.rule.block_time_s, |ms| ms / 1000.0);
        let stale = Duration::from_secs_f64(block_time_s * self.rule.stale_blocks as f64).max(MIN_STALE);
        let stale_after_ms = stale.as_millis() as u64;
        let head = b.heads.last.map(|(block, _)| block);
        let age = b.heads.last.map(|(_, t)| now_ms.saturating_sub(t));
        let shard = self.shard.load(Ordering::Relaxed);
        let serving = self.ready.load(Ordering::Relaxed);
        let healthy = if shard > 0 {
            serving
        } else {
            age.is_some_and(|a| a <= stale_after_ms)
        };
        let ready = healthy && serving;
        let detail = match (head, age) {
            _ if shard > 0 => format!(
                "shard {shard}: no chain of its own (shard 0 plans every window); {}",
                if serving { "serving" } else { "not serving" }
            ),
            (None, _) | (_, None) => "no chain head seen yet".to_string(),
            (Some(h), Some(a)) if healthy => format!(
                "head {h} seen {:.1} s ago (block time {block_time_s:.1} s{}, stale after {:.0} s)",
                a as f64 / 1000.0,
                if observed.is_some() { " observed" } else { " assumed" },
                stale.as_secs_f64()
            ),
            (Some(h), Some(a)) => format!(
                "no chain head for {:.1} s (newest {h}; stale after {:.0} s = {} block times of {block_time_s:.1} s)",
                a as f64 / 1000.0,
                stale.as_secs_f64(),
                self.rule.stale_blocks
            ),
        };
        Health {
            healthy,
            ready,
            head,
            head_age_ms: age,
            block_time_s,
            block_time_observed: observed.is_some(),
            stale_after_ms,
            detail,
        }
    }

    /// The view `/api/windows` serves.
    pub fn view(&self, now_ms: u64) -> StatusView {
        let health = self.health(now_ms);
        let b = self.board();
        StatusView {
            build: self.build.clone(),
            chain_url: self.chain_url.clone(),
            health,
            policies: b.policies.clone(),
            windows: b.windows.iter().cloned().collect(),
            now_ms,
        }
    }

    fn receipt_key(&self, window: u64) -> Option<String> {
        self.board()
            .windows
            .iter()
            .find(|w| w.window == window)
            .and_then(|w| w.receipt.clone())
    }
}

/// Serves the endpoints on `addr` until the task is aborted; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    status: Arc<Status>,
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
            let status = status.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let status = status.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &status).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "status connection");
                }
            });
        }
    });
    Ok((bound, task))
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

/// The view as JSON that can sit inside a `<script>` element (no `<` that could close it).
fn embeddable_json(view: &StatusView) -> String {
    serde_json::to_string(view)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c")
}

async fn respond(req: &Request<hyper::body::Incoming>, status: &Status) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    if req.method() != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, text, "only GET\n");
    }
    let now = crate::now_ms();
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            status.metrics.encode(),
        ),
        "/healthz" => {
            let h = status.health(now);
            let code = if h.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let word = if h.healthy { "ok" } else { "unhealthy" };
            reply(code, text, format!("{word}: {}\n", h.detail))
        }
        "/readyz" => {
            let h = status.health(now);
            let (code, body) = if h.ready {
                (StatusCode::OK, format!("ready: {}\n", h.detail))
            } else if h.healthy {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the window loop is not running (starting or stopping)\n".to_string(),
                )
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", h.detail))
            };
            reply(code, text, body)
        }
        "/api/windows" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&status.view(now)).unwrap_or_default(),
        ),
        "/" | "/index.html" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            PAGE.replace("__STATUS_JSON__", &embeddable_json(&status.view(now))),
        ),
        path => match path.strip_prefix("/api/receipts/").map(str::parse::<u64>) {
            Some(Ok(w)) => receipt(status, w).await,
            _ => reply(
                StatusCode::NOT_FOUND,
                text,
                "not found: try /, /api/windows, /metrics, /healthz or /readyz\n",
            ),
        },
    }
}

/// A recent window's receipt, read from the output bucket (bounded in size and time).
async fn receipt(status: &Status, window: u64) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    let (Some(store), Some(key)) = (&status.output, status.receipt_key(window)) else {
        return reply(
            StatusCode::NOT_FOUND,
            text,
            format!("no receipt for window {window} among the recent windows\n"),
        );
    };
    let path = object_store::path::Path::from(key.as_str());
    let fetch = async {
        let got = store.get(&path).await?;
        if got.meta.size > MAX_RECEIPT_BYTES {
            return Ok(None);
        }
        got.bytes().await.map(Some)
    };
    match tokio::time::timeout(Duration::from_secs(20), fetch).await {
        Ok(Ok(Some(bytes))) => reply(StatusCode::OK, "application/json", bytes),
        Ok(Ok(None)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            text,
            format!("{key}: larger than {MAX_RECEIPT_BYTES} bytes\n"),
        ),
        Ok(Err(e)) => reply(StatusCode::BAD_GATEWAY, text, format!("{key}: {e}\n")),
        Err(_) => reply(StatusCode::GATEWAY_TIMEOUT, text, format!("{key}: no answer in 20 s\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        let rule = HealthRule {
            stale_blocks: 5,
            block_time_s: 12.0,
        };
        Status::new(
            BuildInfo::default(),
            String::new(),
            rule,
            3,
            Arc::new(Metrics::default()),
            None,
        )
    }

    #[test]
    fn health_follows_the_observed_block_time() {
        let s = status();
        assert!(!s.health(1_000).healthy, "no head yet");
        s.head(10, 0);
        // Assumed 12 s blocks until observed: stale after 60 s.
        assert!(s.health(59_000).healthy);
        assert!(!s.health(61_000).healthy);
        // 1 s blocks observed: stale after 5 s (the floor).
        s.head(11, 1_000);
        s.head(12, 2_000);
        s.head(13, 3_000);
        let h = s.health(7_900);
        assert!(h.block_time_observed && (h.block_time_s - 1.0).abs() < 1e-9, "{h:?}");
        assert!(h.healthy);
        assert!(!s.health(8_100).healthy);
        // A repeated or older head changes nothing.
        s.head(12, 8_000);
        assert!(!s.health(8_100).healthy);
        assert!(!s.health(3_000).ready, "not ready before the loop runs");
        s.set_ready(true);
        assert!(s.health(3_000).ready);
    }

    #[test]
    fn the_board_keeps_the_last_windows_in_order() {
        let s = status();
        for w in [5, 3, 4, 6, 7] {
            s.window(WindowSummary::new(&WindowReport::new(w, WindowResult::Stored), 0));
        }
        s.window(WindowSummary::new(&WindowReport::new(6, WindowResult::NoValidPeers), 0));
        let v = s.view(0);
        let ws: Vec<(u64, &str)> = v.windows.iter().map(|w| (w.window, w.result)).collect();
        assert_eq!(ws, [(5, "stored"), (6, "no_valid_peers"), (7, "stored")]);
    }

    #[test]
    fn embedded_json_cannot_close_the_script_element() {
        let s = status();
        let mut r = WindowReport::new(1, WindowResult::Failed("</script><script>alert(1)</script>".into()));
        r.selected = vec![1];
        s.window(WindowSummary::new(&r, 0));
        let j = embeddable_json(&s.view(0));
        assert!(!j.contains('<'), "{j}");
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["windows"][0]["error"], "</script><script>alert(1)</script>");
    }
}
