//! Object storage on `object_store`: peer buckets from commitments, the time-bounded gather with one outcome per
//! peer, safe puts of the aggregate (complete or absent), retention of the server's own outputs, and the leader's
//! posted lists. Backends: Cloudflare R2, any S3-compatible URL, or a local directory (the embedded default).

mod bucket;
mod client;
pub mod coord;
mod error;
mod gather;
pub mod keys;
mod put;
mod ranged;
mod shared;
mod skip;

pub use bucket::{Bucket, COMMITMENT_LEN, Endpoint};
pub use client::{ClientSettings, Clients};
pub use error::StoreError;
pub use gather::{Bounds, FileRecord, GatherOptions, Gathered, PeerRequest, gather, size_cap};
pub use put::{PutOptions, StreamingPut, delete_old_windows, posted_lists, put, start_window};
pub use ranged::{Indexed, IndexedFile, PinnedFile, gather_indexes};
pub use shared::SharedUpload;
pub use skip::{SkipKind, SkipReason};
