//! The shared SeaweedFS harness, set up for this test binary.

use std::path::PathBuf;

use aggregator_testkit::seaweed::{BucketAccess, SeaweedFs};

/// Starts SeaweedFS (installing it under `<target>/seaweedfs-venv` on first use) with `buckets`.
pub async fn seaweed(buckets: &[(&str, Option<(&str, &str)>)]) -> SeaweedFs {
    let access: Vec<BucketAccess> = buckets
        .iter()
        .map(|(b, r)| BucketAccess {
            name: b.to_string(),
            reader: r.map(|(k, s)| (k.to_string(), s.to_string())),
        })
        .collect();
    aggregator_testkit::start_seaweed(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")), "store", &access)
        .await
        .unwrap()
}
