//! The window within a memory budget (`memory_budget_mib`), end to end against SeaweedFS: the simulator with faults,
//! the daemon reading every peer's file by ranges one parameter at a time (a 1 MiB budget leaves room for one
//! parameter per group) and uploading its output as it is made. Every stored output equals an independent
//! recomputation from the stored gradient files with whole-file reads (the same bytes as a window without a
//! budget), faulty peers are skipped for the reasons their faults explain, and each receipt names the output's
//! SHA-256.

use std::path::PathBuf;

use aggregator_codec::{Aggregate, Gradient, Limits};
use aggregator_daemon::WindowResult;
use aggregator_kernels::Cpu;
use aggregator_model::ModelSpec;
use aggregator_receipt::Receipt;
use aggregator_sim::{self as sim, S3Target, SimOptions};
use aggregator_store::{Bucket, ClientSettings, Clients, keys};
use aggregator_testkit::seaweed::{ADMIN, BucketAccess};
use aggregator_testkit::start_seaweed;
use aggregator_window::{PeerInput, aggregate_window};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use sha2::{Digest, Sha256};

const PEERS: u16 = 6;

async fn get(clients: &Clients, bucket: &Bucket, key: &str) -> Option<Vec<u8>> {
    let store = clients.get(bucket).unwrap();
    match store.get(&Path::from(key)).await {
        Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("{key}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_within_a_memory_budget_store_the_same_bytes() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let buckets: Vec<BucketAccess> = sim::s3_buckets(PEERS).into_iter().map(Into::into).collect();
    let sw = start_seaweed(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")), "budget", &buckets)
        .await
        .unwrap();
    let outcome = sim::run(SimOptions {
        windows: 3,
        peers: PEERS,
        model: "tiny".into(),
        faults: true,
        s3: Some(S3Target {
            endpoint: sw.endpoint().to_string(),
            writer: (ADMIN.0.into(), ADMIN.1.into()),
        }),
        data_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sim-budget-{}", std::process::id()))),
        memory_budget_mib: 1,
        ..SimOptions::default()
    })
    .await
    .unwrap();

    let model = ModelSpec::preset("tiny").unwrap();
    let clients = Clients::new(ClientSettings::default());
    let admin = |name: &str| sw.admin_bucket(name);
    let cpu = Cpu::new();
    assert_eq!(outcome.reports.len(), 3);
    assert!(!outcome.faults.is_empty());
    let mut stored = 0;
    for r in &outcome.reports {
        let w = r.window;
        for (uid, reason) in &r.skipped {
            let fault = outcome
                .faults
                .get(&(w, *uid))
                .unwrap_or_else(|| panic!("window {w}: uid {uid} skipped ({reason}) without a fault"));
            assert!(
                fault.expected_reasons().contains(&reason.kind()),
                "window {w}: uid {uid} {fault:?} reported as {reason}"
            );
        }
        let mut inputs = Vec::new();
        for &uid in &r.selected {
            let input = match outcome.faults.get(&(w, uid)) {
                Some(f) => PeerInput::Skipped(*f),
                None => {
                    let bytes = get(
                        &clients,
                        &admin(&sim::bucket_name(uid)),
                        &keys::gradient(w, uid, "0.2.73"),
                    )
                    .await
                    .unwrap_or_else(|| panic!("window {w}: uid {uid}'s gradient is stored"));
                    let limits = Limits::for_gradient(model.sparse_bytes() as u64);
                    PeerInput::valid(Gradient::read(&bytes, &model, &limits).unwrap())
                }
            };
            inputs.push((uid, input));
        }
        let output = get(&clients, &admin(sim::OUTPUT_BUCKET), &keys::aggregate(w, "0.2.73")).await;
        match (&r.result, output) {
            (WindowResult::Stored, Some(bytes)) => {
                stored += 1;
                let file = Aggregate::read(&bytes, Some(&model), &Limits::default()).unwrap();
                // The same timestamp gives the same bytes: the whole-file step's file, encoded, is this file.
                let expected = aggregate_window(&model, &cpu, w as i64, "0.2.73", &inputs, file.timestamp.clone())
                    .unwrap()
                    .file
                    .expect("the recomputation has valid peers");
                assert_eq!(expected.to_bytes().unwrap(), bytes, "window {w}: byte for byte");
                assert_eq!(bytes.len() as u64, r.output_bytes);
                let sha = hex::encode(Sha256::digest(&bytes));
                assert_eq!(r.output_sha256.as_deref(), Some(sha.as_str()));
                let text = get(&clients, &admin(sim::OUTPUT_BUCKET), &keys::receipt(w, "0.2.73"))
                    .await
                    .expect("a stored window has its receipt");
                let receipt = Receipt::from_json(&text, "receipt").unwrap();
                assert_eq!(receipt.output.sha256, sha);
                assert_eq!(receipt.output.size, bytes.len() as u64);
                // Read by ranges (never whole, so no SHA-256 of the file), pinned to the ETag recorded.
                for p in receipt
                    .peers
                    .iter()
                    .filter(|p| p.outcome == aggregator_receipt::PeerOutcome::Aggregated)
                {
                    let file = p.file.as_ref().expect("an aggregated peer's file is recorded");
                    assert!(
                        file.sha256.is_none() && file.etag.is_some(),
                        "window {w}: uid {}: {file:?}",
                        p.uid
                    );
                }
            }
            (WindowResult::NoValidPeers, None) => {}
            (result, output) => panic!("window {w}: {result:?} with output {:?}", output.map(|b| b.len())),
        }
    }
    assert!(stored >= 2, "most windows have valid peers");
}
