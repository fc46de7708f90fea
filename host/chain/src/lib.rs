//! Chain reads of the aggregation server (spec §5), on subxt 0.51 against Subtensor:
//!
//! - [`window`](window_of): window arithmetic and a [`WindowTracker`] that never loses a closed window;
//! - [`follow_heads`]: the best-head follower with reconnects and backoff, reporting closed windows;
//! - [`Chain`]: the narrow read interface the window loop uses (head, `Timestamp::Now` at a block, metagraph,
//!   commitments), implemented by [`SubtensorClient`] and by test doubles;
//! - `Commitments::CommitmentOf` values decoded by hand ([`Registration`]) under Templar's 128-character rule.
//!
//! The aggregator never writes to the chain.

mod client;
mod commitment;
mod follow;
mod metagraph;
mod window;

use std::future::Future;

use thiserror::Error;

pub use client::{Client, ClientConfig, SubtensorClient};
pub use commitment::{CommitmentError, Data, Registration};
pub use follow::{Backoff, HeadEvent, follow_heads};
pub use metagraph::{Commitments, Committed, DefaultedField, Metagraph, Neuron, SkippedCommitment};
pub use window::{Closed, WindowTracker, sync_block, window_of};

/// Chain read errors; each names what was being read.
#[derive(Debug, Error)]
pub enum ChainError {
    /// No connection could be made.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The endpoint.
        url: String,
        /// Why.
        reason: String,
    },
    /// The block is unknown to the node (not produced yet, or pruned: old blocks need an archive node).
    #[error("block {0} is not available on this node (not produced yet, or pruned)")]
    BlockNotFound(u64),
    /// An RPC failed.
    #[error("reading {what}: {reason}")]
    Rpc {
        /// What was read.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A value did not decode as the metadata says.
    #[error("decoding {what}: {reason}")]
    Decode {
        /// What was decoded.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A read took too long.
    #[error("reading {0}: timed out")]
    Timeout(String),
}

/// What the window loop reads from the chain. Kept narrow so the loop is testable and the client swappable.
pub trait Chain: Send + Sync {
    /// The finalized head's block number.
    fn head(&self) -> impl Future<Output = Result<u64, ChainError>> + Send;
    /// `Timestamp::Now` (milliseconds) at block `block`.
    fn timestamp_ms(&self, block: u64) -> impl Future<Output = Result<u64, ChainError>> + Send;
    /// The hash of block `block` (`0x` and 64 hex digits), which pins the chain data a window receipt names; `None`
    /// where the chain has no hashes (test fakes).
    fn block_hash(&self, block: u64) -> impl Future<Output = Result<Option<String>, ChainError>> + Send {
        let _ = block;
        async { Ok(None) }
    }
    /// The subnet's neurons at `block` (the finalized head if `None`).
    fn metagraph(&self, netuid: u16, block: Option<u64>) -> impl Future<Output = Result<Metagraph, ChainError>> + Send;
    /// The subnet's commitments at the metagraph's block, under Templar's rules (malformed ones are skipped and
    /// logged, never an error).
    fn commitments(&self, metagraph: &Metagraph) -> impl Future<Output = Result<Commitments, ChainError>> + Send;
}

/// `url` without what may be a credential: the user information (`user:pass@`) and the query string
/// (`?apikey=…`), each replaced by `…`. For the status page and the logs, which are often seen more widely than the
/// configuration is.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, _)) => (b, "?…"),
        None => (url, ""),
    };
    let redacted = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://…@{host}{path}"),
                None => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    redacted + query
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn credentials_in_the_chain_url_are_not_shown() {
        assert_eq!(
            redact_url("wss://entrypoint-finney.opentensor.ai:443"),
            "wss://entrypoint-finney.opentensor.ai:443"
        );
        assert_eq!(
            redact_url("wss://u:secret@rpc.example/ws?apikey=k"),
            "wss://…@rpc.example/ws?…"
        );
        assert_eq!(
            redact_url("ws://127.0.0.1:9944/path?token=t"),
            "ws://127.0.0.1:9944/path?…"
        );
    }
}
