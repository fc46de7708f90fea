//! Chain reads of the aggregation server (spec §5): window arithmetic with a tracker that never loses a closed
//! window, and `Commitments::CommitmentOf` decoding under Templar's 128-character rule.
//!
//! Still to come (issue 6): the subxt client (LegacyBackend, reconnecting RPC, head follower, `Timestamp::Now`,
//! metagraph, commitment iteration) behind a narrow `Chain` trait, and the local devnet.

mod commitment;
mod window;

pub use commitment::{CommitmentError, Data, Registration};
pub use window::{Closed, WindowTracker, sync_block, window_of};
