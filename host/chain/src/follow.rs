//! The head follower (spec §5.1): best heads from `chain_subscribeNewHeads`, turned into closed windows by a
//! [`WindowTracker`] so that no window is lost across reconnects.
//!
//! Two loops, as Templar's block listener and the verified recipe (`../shared/notes/chain.md` §1.1) have them: the
//! reconnecting RPC client retries single calls, but the head stream *ends with an error* when the connection drops,
//! so an outer loop re-subscribes (and, if the client cannot be built, reconnects) with a backoff of 1 s doubling to
//! 60 s, reset by the first head that arrives.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::client::{ClientConfig, SubtensorClient};
use crate::window::{Closed, WindowTracker, window_of};

/// What the follower reports for every head it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadEvent {
    /// The head's block number.
    pub block: u64,
    /// Its window.
    pub window: u64,
    /// Windows that closed with this head (all of them after a gap, up to the backfill limit).
    pub closed: Closed,
}

/// Re-subscribe backoff.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Cap.
    pub max: Duration,
}

impl Default for Backoff {
    /// Templar's: 1 s doubling to 60 s.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// Follows best heads until `events` is closed (the receiver dropped). Never returns an error: every failure is
/// logged and retried with backoff.
pub async fn follow_heads(
    config: ClientConfig,
    mut client: Option<SubtensorClient>,
    mut tracker: WindowTracker,
    backoff: Backoff,
    events: mpsc::Sender<HeadEvent>,
) {
    let blocks_per_window = tracker.blocks_per_window();
    let mut delay = backoff.initial;
    loop {
        if events.is_closed() {
            return;
        }
        let c = match client.take() {
            Some(c) => c,
            None => match SubtensorClient::connect(config.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs_f64(), "chain: cannot connect");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(backoff.max);
                    continue;
                }
            },
        };
        match c.subxt().stream_best_blocks().await {
            Ok(mut heads) => {
                tracing::info!(url = %crate::redact_url(&config.url), "chain: following best heads");
                while let Some(next) = heads.next().await {
                    match next {
                        Ok(block) => {
                            delay = backoff.initial;
                            let number = block.number();
                            let event = HeadEvent {
                                block: number,
                                window: window_of(number, blocks_per_window),
                                closed: tracker.observe(number),
                            };
                            if event.closed.skipped > 0 {
                                tracing::warn!(
                                    skipped = event.closed.skipped,
                                    "chain: more closed windows than the backfill limit; the oldest are left out"
                                );
                            }
                            if events.send(event).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "chain: head stream broke; re-subscribing");
                            break;
                        }
                    }
                }
                // The client is kept: its RPC layer reconnects by itself.
                client = Some(c);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = delay.as_secs_f64(), "chain: cannot subscribe to heads");
                // Keep the client unless it is the subscription itself that cannot work; a fresh connection is
                // the safer retry after repeated failures.
                if delay < backoff.max {
                    client = Some(c);
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(backoff.max);
    }
}
