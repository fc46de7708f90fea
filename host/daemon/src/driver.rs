//! The driver: closed windows from the head follower → [`Daemon::process`] (the phases, [`crate::window`]) →
//! report, metrics and state, one window at a time, oldest first, with state persisted after each.
//!
//! **No window is lost to a transient failure.** A window whose attempt fails (chain, storage, policy, a timeout)
//! goes to a retry queue with backoff (2 s doubling to 30 s) and is tried again, oldest first, whenever no newly
//! closed window is waiting or, when some always are (a daemon that has fallen behind), after each newly closed
//! window processed (so a due retry never waits behind more than one), for as long as it lies within `max_backfill`
//! windows of the newest closed one (older
//! than that, its miners' uploads may be gone: it is then recorded failed with the last error). The queue is part of
//! the persisted state, so a restart resumes it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use aggregator_chain::{Chain, HeadEvent};
use tokio::sync::{mpsc, watch};

use crate::DaemonError;
use crate::daemon::Daemon;
use crate::now_ms;
use crate::report::{WindowReport, WindowResult};
use crate::status::WindowSummary;
use crate::window::NextSelection;

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

/// The first retry's delay; each further attempt doubles it, up to [`RETRY_MAX`].
pub const RETRY_BASE: Duration = Duration::from_secs(2);
/// The longest delay between two attempts at a window.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Delay before retrying a window that has failed `attempts` times: `base` doubling, at most [`RETRY_MAX`].
fn retry_delay(base: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1 << attempts.saturating_sub(1).min(8))
        .min(RETRY_MAX.max(base))
}

impl<C: Chain + 'static> Daemon<C> {
    /// Processes closed windows from `heads` until it ends or `shutdown` turns true: newly closed windows first,
    /// then due retries, oldest first, a due retry taken after each newly closed window (see the module docs). On shutdown the current window gets `grace` to finish;
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
        // Whether the last window taken was newly closed: a due retry goes next, so none starves behind a queue
        // that never empties.
        let mut last_fresh = false;
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
            let due = retries.iter().find(|(_, r)| r.due <= now).map(|(&w, _)| w);
            let next = match due {
                Some(w) if last_fresh => Some(w),
                _ => fresh.pop_front().or(due),
            };
            last_fresh = next.is_some() && next != due;
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
        // Usually recorded already by `crate::run`'s forwarder as the head arrived; a repeat is ignored.
        self.status.head(ev.block, now_ms());
        if ev.closed.skipped > 0 {
            self.metrics.error(crate::metrics::ErrorKind::BackfillLimit);
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
            self.metrics.error(crate::metrics::ErrorKind::State);
            tracing::error!(error = %e, "state: cannot save; kept in memory and saved again after the next window");
        }
    }

    fn finish(&mut self, report: WindowReport, selection: NextSelection, retries: &BTreeMap<u64, Retry>) {
        let finished = now_ms();
        self.metrics.window(report.window, &report.result, finished);
        self.metrics
            .peers(report.selected.len(), report.aggregated.len(), &report.skipped);
        let summary = WindowSummary::new(&report, finished);
        for (stage, seconds) in [
            ("chain", summary.stages.chain),
            ("gather", summary.stages.gather),
            ("process", summary.stages.process),
            ("put", summary.stages.put),
        ] {
            self.metrics.stage(stage, seconds);
        }
        self.metrics.output(report.output_bytes);
        self.metrics.policies(&self.policies.stats());
        self.status.policies(&self.policies);
        self.status.window(summary);
        // A retried window older than the newest one processed leaves the selection state alone: the policy's
        // state moves forward with the windows.
        let newest = self.state.last_processed.is_none_or(|l| report.window >= l);
        if newest && let Some(next) = selection {
            self.state.current_peers = next.peers;
            self.state.selection_state = hex::encode(next.state);
            if let Some(shadow) = next.shadow_state {
                self.state.shadow_selection_state = hex::encode(shadow);
            }
            if let Some(weighting) = next.weighting_state {
                self.state.weighting_state = hex::encode(weighting);
            }
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
}
