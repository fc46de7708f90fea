//! Storage behaviour against a real S3 server (SeaweedFS on 127.0.0.1, per-peer read-only keys) and, where its
//! semantics allow, the local-directory store: gather outcomes, multipart put, retention, posted lists.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aggregator_codec::{Gradient, GradientMetadata, PeerList, SparseParam, StartWindow};
use aggregator_kernels::Cpu;
use aggregator_model::ModelSpec;
use aggregator_store::{
    Bounds, Bucket, ClientSettings, Clients, Endpoint, GatherOptions, PeerRequest, PutOptions, SharedUpload, SkipReason,
};
use aggregator_window::{PeerInput, aggregate_window};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use rand::{Rng, SeedableRng};

const VERSION: &str = "0.2.73";
const WINDOW: u64 = 100_203;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn sleep_until_ms(t: u64) {
    let now = now_ms();
    if t > now {
        tokio::time::sleep(Duration::from_millis(t - now)).await;
    }
}

/// A real gradient file of the tiny model, through the miner-side compressor.
fn gradient_file(model: &ModelSpec, seed: u64) -> Vec<u8> {
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let cpu = Cpu::new();
    let params = model
        .params
        .iter()
        .map(|p| {
            let x: Vec<f32> = (0..p.layout.numel()).map(|_| rng.random::<f32>() - 0.5).collect();
            let (mut idxs, mut vals) = (vec![0i16; p.layout.sparse_len()], vec![0f32; p.layout.sparse_len()]);
            cpu.compress(&p.layout, &x, &mut idxs, &mut vals).unwrap();
            Some(SparseParam { idxs, vals })
        })
        .collect();
    let g = Gradient {
        params,
        metadata: GradientMetadata {
            pages_info: vec![],
            window: Some(WINDOW as i64),
        },
        global_step: 1,
    };
    g.to_bytes(model).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/templar-0.2.73")
            .join(name),
    )
    .unwrap()
}

/// Buckets of one backend: how a miner writes to its bucket, and how the server reads it.
trait Backend {
    fn writer(&self, bucket: &str) -> Bucket;
    fn reader(&self, bucket: &str) -> Bucket;
    fn with_credentials(&self) -> bool;
}

struct S3(aggregator_testkit::seaweed::SeaweedFs);
impl Backend for S3 {
    fn writer(&self, b: &str) -> Bucket {
        self.0.admin_bucket(b)
    }
    fn reader(&self, b: &str) -> Bucket {
        Bucket {
            endpoint: Endpoint::Url(self.0.endpoint().to_string()),
            name: b.into(),
            access_key_id: format!("rk{b}").replace('-', ""),
            secret: format!("rs{b}secret").replace('-', ""),
        }
    }
    fn with_credentials(&self) -> bool {
        true
    }
}

/// A local-directory backend in a scratch directory removed with it.
struct Local(tempfile::TempDir);
impl Backend for Local {
    fn writer(&self, b: &str) -> Bucket {
        Bucket::local(self.0.path(), b)
    }
    fn reader(&self, b: &str) -> Bucket {
        Bucket::local(self.0.path(), b)
    }
    fn with_credentials(&self) -> bool {
        false
    }
}

fn peer_bucket(uid: u16) -> String {
    format!("peer-{uid}")
}

async fn seaweed() -> S3 {
    let buckets: Vec<(String, Option<(String, String)>)> = (0..15u16)
        .map(peer_bucket)
        .chain(["results".to_string()])
        .map(|b| {
            let cred = (
                format!("rk{b}").replace('-', ""),
                format!("rs{b}secret").replace('-', ""),
            );
            (b, Some(cred))
        })
        .collect();
    let refs: Vec<(&str, Option<(&str, &str)>)> = buckets
        .iter()
        .map(|(b, c)| (b.as_str(), c.as_ref().map(|(k, s)| (k.as_str(), s.as_str()))))
        .collect();
    S3(common::seaweed(&refs).await)
}

fn local() -> Local {
    Local(
        tempfile::Builder::new()
            .prefix("store-local-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap(),
    )
}

fn clients() -> Clients {
    Clients::new(ClientSettings {
        request_timeout: Duration::from_secs(30),
        max_retries: 0,
        ..Default::default()
    })
}

async fn upload(clients: &Clients, bucket: &Bucket, key: &str, bytes: Vec<u8>) {
    clients
        .get(bucket)
        .unwrap()
        .put(&Path::from(key), bytes.into())
        .await
        .unwrap();
}

/// 15 peers: good (0-5, 14), missing (6), too early (7), too late (8), oversized (9), malformed (10),
/// wrong credentials (11), slow (12), no bucket (13).
async fn gather_faults(b: &dyn Backend) {
    let model = Arc::new(ModelSpec::preset("tiny").unwrap());
    let c = clients();
    let key = |uid| aggregator_store::keys::gradient(WINDOW, uid, VERSION);
    let good: Vec<u16> = vec![0, 1, 2, 3, 4, 5, 14];
    let files: Vec<Vec<u8>> = (0..15u64).map(|uid| gradient_file(&model, uid)).collect();
    // Never answers: a peer whose storage holds the connection open.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let _held = std::thread::spawn(move || silent.incoming().map_while(Result::ok).collect::<Vec<_>>());

    // Bounds [t0, t0 + 4 s], t0 on a second boundary (LastModified has 1 s resolution on S3).
    let t0 = (now_ms() / 1000 + 3) * 1000;
    upload(&c, &b.writer(&peer_bucket(7)), &key(7), files[7].clone()).await; // before t0
    sleep_until_ms(t0 + 200).await;
    for &uid in &good {
        upload(&c, &b.writer(&peer_bucket(uid)), &key(uid), files[uid as usize].clone()).await;
    }
    let cap = aggregator_store::size_cap(&model);
    upload(&c, &b.writer(&peer_bucket(9)), &key(9), vec![7u8; cap as usize + 1]).await;
    upload(&c, &b.writer(&peer_bucket(10)), &key(10), fixture("bad/vals-nan.pt")).await;
    upload(&c, &b.writer(&peer_bucket(11)), &key(11), files[11].clone()).await;
    sleep_until_ms(t0 + 5100).await;
    upload(&c, &b.writer(&peer_bucket(8)), &key(8), files[8].clone()).await; // after t0 + 4 s

    let bounds = Bounds {
        not_before_ms: t0,
        not_after_ms: t0 + 4000,
    };
    let peers: Vec<PeerRequest> = (0..15u16)
        .map(|uid| {
            let bucket = match uid {
                13 => None,
                11 if b.with_credentials() => Some(Bucket {
                    secret: "wrong-secret".into(),
                    ..b.reader(&peer_bucket(11))
                }),
                12 if b.with_credentials() => Some(b.reader(&peer_bucket(12)).at(Endpoint::Url(silent_url.clone()))),
                _ => Some(b.reader(&peer_bucket(uid))),
            };
            PeerRequest { uid, bucket }
        })
        .collect();
    let options = GatherOptions {
        timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let gathered = aggregator_store::gather(&c, WINDOW, VERSION, &peers, bounds, model.clone(), &options).await;
    let label = |o: &Result<Box<Gradient>, SkipReason>| o.as_ref().map_or_else(|r| r.kind().label(), |_| "ok");
    let labels: Vec<(u16, &str)> = gathered.iter().map(|g| (g.uid, label(&g.outcome))).collect();
    let mut expected: Vec<(u16, &str)> = (0..15u16)
        .map(|uid| {
            let l = match uid {
                6 => "missing",
                7 => "too-early",
                8 => "too-late",
                9 => "too-large",
                10 => "malformed",
                11 if b.with_credentials() => "storage-error",
                12 if b.with_credentials() => "timeout",
                12 => "missing",
                13 => "no-bucket",
                _ => "ok",
            };
            (uid, l)
        })
        .collect();
    if !b.with_credentials() {
        expected[11].1 = "ok";
    }
    assert_eq!(labels, expected);
    let malformed = gathered.iter().find(|g| g.uid == 10).unwrap();
    assert!(
        matches!(&malformed.outcome, Err(SkipReason::Malformed { detail }) if detail.contains("vals[11] = NaN")),
        "{:?}",
        malformed.outcome
    );
    if b.with_credentials() {
        assert!(
            gathered[12].elapsed < Duration::from_secs(5),
            "slow peer bounded by the gather timeout"
        );
    }

    // The good peers are aggregated, exactly as from the files themselves.
    let ok_uids: Vec<u16> = labels.iter().filter(|(_, l)| *l == "ok").map(|(u, _)| *u).collect();
    let inputs: Vec<(u16, PeerInput<SkipReason>)> = gathered
        .into_iter()
        .map(|g| {
            (
                g.uid,
                g.outcome.map_or_else(PeerInput::Skipped, |g| PeerInput::valid(*g)),
            )
        })
        .collect();
    let window = aggregate_window(&model, &Cpu::new(), WINDOW as i64, VERSION, &inputs, "t".into()).unwrap();
    assert_eq!(window.valid_uids, ok_uids);
    let file = window.file.expect("valid peers");
    assert_eq!(file.success_rate, ok_uids.len() as f64 / 15.0);
    let direct: Vec<(u16, PeerInput<&str>)> = (0..15u16)
        .map(|uid| {
            let input = if ok_uids.contains(&uid) {
                PeerInput::valid(Gradient::read(&files[uid as usize], &model, &Default::default()).unwrap())
            } else {
                PeerInput::Skipped("x")
            };
            (uid, input)
        })
        .collect();
    let independent = aggregate_window(&model, &Cpu::new(), WINDOW as i64, VERSION, &direct, "t".into()).unwrap();
    assert_eq!(file.params, independent.file.expect("valid peers").params);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gather_outcomes_on_s3() {
    gather_faults(&seaweed().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gather_outcomes_on_a_local_directory() {
    gather_faults(&local()).await;
}

async fn put_large_and_retention(b: &dyn Backend) {
    let c = clients();
    let results = b.writer("results");
    let store = c.get(&results).unwrap();
    // 150 MB through multipart (16 MiB parts), back byte for byte.
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(9);
    let mut big = vec![0u8; 150_000_000];
    rng.fill(&mut big[..]);
    let big = Bytes::from(big);
    let key = aggregator_store::keys::aggregate(WINDOW, VERSION);
    aggregator_store::put(store.as_ref(), &key, big.clone(), &PutOptions::default())
        .await
        .unwrap();
    let back = store
        .get(&Path::from(key.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(back == big, "150 MB object came back different ({} bytes)", back.len());
    if b.with_credentials() {
        // A put the server refuses is reported as failed, small or multipart.
        let ro = c.get(&b.reader("results")).unwrap();
        for size in [1000usize, 70 << 20] {
            let err = aggregator_store::put(
                ro.as_ref(),
                "aggregator-1-v0.2.73.pt",
                Bytes::from(vec![1u8; size]),
                &PutOptions::default(),
            )
            .await
            .unwrap_err();
            assert!(err.to_string().contains("nothing stored"), "{err}");
        }
    }
    // Retention: only this server's aggregates, receipts and archived inputs of older windows go.
    use aggregator_store::keys;
    for w in 1..=10u64 {
        upload(&c, &results, &keys::aggregate(w, VERSION), vec![1]).await;
    }
    for w in [6u64, 7, 8] {
        upload(&c, &results, &keys::receipt(w, VERSION), vec![1]).await;
        upload(&c, &results, &keys::archived_input(w, 3, VERSION), vec![1]).await;
    }
    for other in [
        "aggregator-5-v0.2.74.pt",
        "gradient-3-1-v0.2.73.pt",
        "peers_5_v0.2.73.json",
        "aggregator-x-v0.2.73.pt",
        "inputs/notes.txt",
        "receipt-5-v0.2.74.json",
    ] {
        upload(&c, &results, other, vec![1]).await;
    }
    let mut deleted = aggregator_store::delete_old_windows(store.as_ref(), VERSION, 8)
        .await
        .unwrap();
    deleted.sort();
    let mut want: Vec<String> = (1..8u64).map(|w| keys::aggregate(w, VERSION)).collect();
    for w in [6u64, 7] {
        want.push(keys::receipt(w, VERSION));
        want.push(keys::archived_input(w, 3, VERSION));
    }
    want.sort();
    assert_eq!(deleted, want);
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let mut left: Vec<String> = store
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    left.sort();
    let mut expect: Vec<String> = [8u64, 9, 10, WINDOW]
        .iter()
        .map(|&w| keys::aggregate(w, VERSION))
        .collect();
    expect.push(keys::receipt(8, VERSION));
    expect.push(keys::archived_input(8, 3, VERSION));
    expect.extend(
        [
            "aggregator-5-v0.2.74.pt",
            "aggregator-x-v0.2.73.pt",
            "gradient-3-1-v0.2.73.pt",
            "inputs/notes.txt",
            "peers_5_v0.2.73.json",
            "receipt-5-v0.2.74.json",
        ]
        .map(String::from),
    );
    expect.sort();
    assert_eq!(left, expect);

    // Posted lists: newest and previous by window number; the start window.
    let list = |n: u16| PeerList {
        peers: vec![n, n + 1],
        weights: None,
        initial_selection: false,
        sync_window: 98,
        first_effective_window: 100,
    };
    upload(&c, &results, "peers_100_v0.2.73.json", list(1).to_json()).await;
    upload(&c, &results, "peers_99_v0.2.73.json", list(2).to_json()).await;
    upload(
        &c,
        &results,
        "start_window_v0.2.73.json",
        StartWindow { start_window: 7 }.to_json(),
    )
    .await;
    let (latest, previous) = aggregator_store::posted_lists(store.as_ref(), VERSION, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(latest.map(|(w, l)| (w, l.peers)), Some((100, vec![1, 2])));
    assert_eq!(previous.map(|(w, l)| (w, l.peers)), Some((99, vec![2, 3])));
    assert_eq!(
        aggregator_store::start_window(store.as_ref(), VERSION, Duration::from_secs(30))
            .await
            .unwrap(),
        Some(7)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_retention_and_lists_on_s3() {
    put_large_and_retention(&seaweed().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_retention_and_lists_on_a_local_directory() {
    put_large_and_retention(&local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_lists_and_start_window_from_an_unanswering_bucket_end_at_their_timeout() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let bucket = Bucket {
        endpoint: Endpoint::Url(format!("http://{addr}")),
        name: "leader".into(),
        access_key_id: "k".into(),
        secret: "s".into(),
    };
    let store = Clients::new(ClientSettings::default()).get(&bucket).unwrap();
    let limit = Duration::from_millis(1500);
    let started = std::time::Instant::now();
    let e = aggregator_store::posted_lists(store.as_ref(), VERSION, limit)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no answer within") && e.contains("peers_"), "{e}");
    let e = aggregator_store::start_window(store.as_ref(), VERSION, limit)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no answer within") && e.contains("start_window_v0.2.73.json"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

/// Ranged reads (`gather_indexes`, `IndexedFile::read_params`): a file read by parameter groups gives the values a
/// whole-file read gives; a file valid in one group and malformed in another fails only the group that holds the
/// fault; a file replaced after its index was read fails its next read (pinned to the first `ETag`) and is never
/// read as a mix of the two versions.
async fn ranged_reads(b: &dyn Backend) {
    let model = Arc::new(ModelSpec::preset("tiny").unwrap());
    let n = model.params.len();
    let c = clients();
    let key = |uid| aggregator_store::keys::gradient(WINDOW, uid, VERSION);
    let mut files: Vec<Vec<u8>> = (0..5u64).map(|uid| gradient_file(&model, 100 + uid)).collect();
    // uid 3: a NaN in the last parameter's values only.
    let mut bad = Gradient::read(&files[3], &model, &aggregator_codec::Limits::default()).unwrap();
    bad.params[n - 1].as_mut().unwrap().vals[5] = f32::NAN;
    files[3] = bad.to_bytes(&model).unwrap();
    for uid in 0..5u16 {
        upload(&c, &b.writer(&peer_bucket(uid)), &key(uid), files[uid as usize].clone()).await;
    }
    let bounds = Bounds {
        not_before_ms: now_ms() - 60_000,
        not_after_ms: now_ms() + 60_000,
    };
    let peers: Vec<PeerRequest> = (0..5u16)
        .map(|uid| PeerRequest {
            uid,
            bucket: Some(b.reader(&peer_bucket(uid))),
        })
        .collect();
    // A 2 KiB tail: the tiny model's records lie before it (and its directory does not fit, so the second read of the
    // directory is exercised too).
    let options = GatherOptions {
        timeout: Duration::from_secs(10),
        tail_bytes: 2048,
        ..Default::default()
    };
    let indexed = aggregator_store::gather_indexes(&c, WINDOW, VERSION, &peers, bounds, model.clone(), &options).await;
    let t = Duration::from_secs(10);
    let limits = aggregator_codec::Limits::default();
    for (uid, ix) in indexed.iter().enumerate() {
        let f = ix.outcome.as_ref().unwrap_or_else(|e| panic!("uid {uid} indexes: {e}"));
        let record = ix.file.as_ref().unwrap();
        assert_eq!(record.size, files[uid].len() as u64);
        assert!(record.sha256.is_none(), "never read whole");
        assert!(
            ix.bytes < files[uid].len() as u64,
            "the index reads less than the file: {} of {}",
            ix.bytes,
            files[uid].len()
        );
        if uid == 3 {
            continue;
        }
        let mut params = Vec::new();
        for start in (0..n).step_by(3) {
            let (got, _) = f
                .read_params(start..(start + 3).min(n), model.clone(), t)
                .await
                .unwrap();
            params.extend(got);
        }
        assert_eq!(
            params,
            Gradient::read(&files[uid], &model, &limits).unwrap().params,
            "uid {uid}"
        );
    }
    // Valid in the first groups, malformed in the last: only the group holding the NaN fails, naming the parameter.
    let f3 = indexed[3].outcome.as_ref().unwrap();
    f3.read_params(0..n - 1, model.clone(), t)
        .await
        .expect("the groups without the fault read");
    match f3.read_params(n - 2..n, model.clone(), t).await {
        Err(SkipReason::Malformed { detail }) => {
            assert!(detail.contains(&model.params[n - 1].name), "{detail}")
        }
        other => panic!("the group with the NaN: {other:?}"),
    }
    // Replaced after its index was read: the next read fails, whatever the new version holds.
    let f4 = indexed[4].outcome.as_ref().unwrap();
    f4.read_params(0..1, model.clone(), t)
        .await
        .expect("before the replacement");
    // A second apart, so that a store whose ETag derives from the modification time sees a new one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let replacement = gradient_file(&model, 999);
    upload(&c, &b.writer(&peer_bucket(4)), &key(4), replacement.clone()).await;
    for range in [0..1, 0..n, n - 1..n] {
        match f4.read_params(range.clone(), model.clone(), t).await {
            Err(SkipReason::StorageError { detail }) => {
                assert!(detail.contains("changed during the window"), "{detail}")
            }
            other => panic!("params {range:?} after the replacement: {other:?}"),
        }
    }
    // A new gather sees the new version, whole.
    let again =
        aggregator_store::gather_indexes(&c, WINDOW, VERSION, &peers[4..], bounds, model.clone(), &options).await;
    let f = again[0].outcome.as_ref().unwrap();
    assert_ne!(
        again[0].file.as_ref().unwrap().etag,
        indexed[4].file.as_ref().unwrap().etag
    );
    let (params, _) = f.read_params(0..n, model.clone(), t).await.unwrap();
    assert_eq!(params, Gradient::read(&replacement, &model, &limits).unwrap().params);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads_on_s3() {
    ranged_reads(&seaweed().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads_on_a_local_directory() {
    ranged_reads(&local()).await;
}

/// A multipart upload shared by several writers, as a window's shards share one: created by one, each part put by
/// its own writer (joined by the upload's id) in reverse order, completed by the first; nothing is visible before
/// completion, the object is then the parts in order; an aborted upload leaves nothing; a local directory, which
/// has no such API, is refused saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_upload_on_s3() {
    let s3 = seaweed().await;
    let clients = clients();
    let bucket = s3.writer("results");
    let store = clients.multipart(&bucket).unwrap();
    let read = clients.get(&bucket).unwrap();
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(21);
    let bytes: Vec<u8> = (0..(15 << 20) + 12_345).map(|_| rng.random()).collect();
    let size = 5usize << 20;
    let parts: Vec<std::ops::Range<usize>> = (0..3)
        .map(|i| i * size..((i + 1) * size).min(bytes.len()))
        .chain(std::iter::once(3 * size..bytes.len()))
        .collect();
    let key = "shared/aggregator-7-v0.2.73.pt";
    let up = SharedUpload::create(store.clone(), key).await.unwrap();
    let writers = parts.iter().enumerate().rev().map(|(i, r)| {
        let w = SharedUpload::join(store.clone(), key, up.id().to_string());
        let data = Bytes::copy_from_slice(&bytes[r.clone()]);
        async move { (i, w.put_part(i, data).await.unwrap()) }
    });
    let mut ids = futures::future::join_all(writers).await;
    ids.sort_by_key(|(i, _)| *i);
    assert!(
        read.head(&Path::from(key)).await.is_err(),
        "nothing is visible before completion"
    );
    up.complete(ids.into_iter().map(|(_, id)| id).collect()).await.unwrap();
    let got = read.get(&Path::from(key)).await.unwrap().bytes().await.unwrap();
    assert!(got[..] == bytes[..], "the object is the parts in order");

    let aborted = "shared/aggregator-8-v0.2.73.pt";
    let up = SharedUpload::create(store.clone(), aborted).await.unwrap();
    up.put_part(0, Bytes::copy_from_slice(&bytes[..size])).await.unwrap();
    up.abort().await.unwrap();
    assert!(
        read.head(&Path::from(aborted)).await.is_err(),
        "an aborted upload leaves nothing"
    );

    let local = local();
    let e = clients.multipart(&local.writer("results")).err().unwrap().to_string();
    assert!(e.contains("S3-compatible"), "{e}");
}

/// Coordination objects: a conditional create succeeds once (the second writer is told, the object keeps the first
/// bytes); a wait returns an object written while it waits, and fails with the key and the bound when none comes
/// or when it is larger than allowed.
async fn coordination(backend: &impl Backend) {
    use aggregator_store::coord::{Created, create_once, wait_for};
    let clients = clients();
    let store = clients.get(&backend.writer("results")).unwrap();
    let key = "shards/9/plan.json";
    assert_eq!(
        create_once(store.as_ref(), key, Bytes::from_static(b"first"))
            .await
            .unwrap(),
        Created::Written
    );
    assert_eq!(
        create_once(store.as_ref(), key, Bytes::from_static(b"second"))
            .await
            .unwrap(),
        Created::Exists
    );
    let (poll, bound) = (Duration::from_millis(50), Duration::from_secs(5));
    assert_eq!(
        &wait_for(store.as_ref(), key, 100, poll, bound).await.unwrap()[..],
        b"first"
    );

    let later = "shards/9/report-1.json";
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            create_once(store.as_ref(), later, Bytes::from_static(b"report"))
                .await
                .unwrap()
        })
    };
    assert_eq!(
        &wait_for(store.as_ref(), later, 100, poll, bound).await.unwrap()[..],
        b"report"
    );
    writer.await.unwrap();

    let started = std::time::Instant::now();
    let e = wait_for(
        store.as_ref(),
        "shards/9/never.json",
        100,
        poll,
        Duration::from_millis(400),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("shards/9/never.json") && e.contains("not there after waiting"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "the wait is bounded");
    let e = wait_for(store.as_ref(), key, 3, poll, bound)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than the 3 allowed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordination_on_s3() {
    coordination(&seaweed().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordination_on_a_local_directory() {
    coordination(&local()).await;
}
