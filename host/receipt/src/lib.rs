//! Every window provable. For each window it stores, the daemon writes a **receipt** beside the aggregate
//! (`receipt-{w}-v{V}.json`, JSON Schema in `host/receipt/receipt-v1.schema.json`): the chain data it read, each
//! policy call (component by SHA-256, input, decision, whether a fallback answered), each selected peer's file (by
//! key, `ETag`, size, `LastModified` and the SHA-256 of the bytes read), outcome and weight, the numeric backend, the
//! host build, the output (key, size, SHA-256, metadata timestamp) and stage timings.
//!
//! [`replay`] checks a receipt against the world: it fetches every aggregated input and checks its hash, re-runs the
//! recorded policy inputs through the recorded components, recomputes the aggregate on any backend and compares it
//! bit for bit with the stored one. `aggregator replay` and `aggregator plugin run --receipt` are its commands.
//!
//! * [`record`]: the receipt's types ([`Receipt`]), read and written as JSON.
//! * [`replay`]: the verification, step by step ([`ReplayReport`]).
//! * [`weighting`]: the `contribution-weighting` input built from the evidence (daemon, replay and bench share it).

pub mod record;
pub mod replay;
pub mod weighting;

pub use record::{
    BucketRecord, ChainRecord, FileRecord, HostRecord, OutputRecord, PeerOutcome, PeerRecord, PolicyCall,
    PolicyRecords, Receipt, ReceiptError, ShadowAggregate, ShadowCall, ShadowRecords, ShardsRecord, SkipRecord,
    Timings,
};
pub use replay::{ReplayOptions, ReplayReport, Step, Verdict, replay};
pub use weighting::weighting_input;

/// The receipt format this host writes (`schema_version`). A reader refuses any other.
pub const SCHEMA_VERSION: u32 = 1;

/// The JSON Schema of [`SCHEMA_VERSION`] (draft 2020-12), the file `host/receipt/receipt-v1.schema.json`.
pub const SCHEMA: &str = include_str!("../receipt-v1.schema.json");

/// This host's version (the workspace's).
pub const HOST_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this host was built from (`unknown` when built outside a git checkout).
pub const HOST_GIT_SHA: &str = env!("AGGREGATOR_GIT_SHA");

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
