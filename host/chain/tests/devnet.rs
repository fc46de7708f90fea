//! The real subxt client over a real WebSocket against the devnet (real Subtensor metadata, spec 365).

use std::time::{Duration, Instant};

use aggregator_chain::{
    Backoff, Chain, ChainError, ClientConfig, HeadEvent, SubtensorClient, WindowTracker, follow_heads, sync_block,
};
use aggregator_devnet::{Devnet, DevnetConfig, NeuronSeed, RawCommitment, Seed, Timestamps, dev_hotkey};
use parity_scale_codec::{Compact, Encode};
use tokio::sync::mpsc;

const NETUID: u16 = 3;
const START_MS: u64 = 1_750_000_000_000;

fn manual() -> DevnetConfig {
    DevnetConfig {
        block_time: None,
        timestamps: Timestamps::Fixed {
            start_ms: START_MS,
            step_ms: 12_000,
        },
        retain_blocks: 64,
        ..DevnetConfig::default()
    }
}

fn commitment(tag: u8) -> String {
    let c = (b'a' + tag) as char;
    format!("{}{}{}", c.to_string().repeat(32), "K".repeat(32), "S".repeat(64))
}

fn hex32(b: [u8; 32]) -> String {
    format!("0x{}", hex_string(&b))
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A registration whose first field is the given SCALE-encoded `Data` bytes.
fn registration_with(field: &[u8]) -> String {
    let mut out = 0u64.encode();
    out.extend(9u32.encode());
    out.extend(Compact(1u32).encode());
    out.extend_from_slice(field);
    format!("0x{}", hex_string(&out))
}

fn seed() -> Seed {
    let neuron = |uid: u16, stake: u64, incentive: f64, commitment: Option<String>| NeuronSeed {
        uid,
        hotkey: None,
        stake,
        incentive,
        commitment,
    };
    let mut raw = vec![129u8];
    raw.extend([0xffu8; 128]); // Raw128, not UTF-8
    let stranger = [7u8; 32];
    Seed {
        netuid: NETUID,
        neurons: vec![
            neuron(0, 5_000_000_000_000, 0.5, Some(commitment(0))),
            neuron(1, 90_000_000_000_000, 0.25, Some(commitment(1))),
            neuron(2, 1_000_000_000, 0.0, Some("too short".into())),
            neuron(3, 0, 0.0, None),
            neuron(4, 0, 1.0, None),
        ],
        raw_commitments: vec![
            RawCommitment {
                hotkey: hex32(dev_hotkey(3)),
                registration: registration_with(&raw),
            },
            RawCommitment {
                hotkey: hex32(dev_hotkey(4)),
                registration: registration_with(&[200, 1, 2, 3]), // unknown Data tag
            },
            RawCommitment {
                hotkey: hex32(stranger),
                registration: registration_with(&{
                    let mut v = vec![129u8];
                    v.extend(commitment(9).as_bytes());
                    v
                }),
            },
        ],
    }
}

async fn client(devnet: &Devnet) -> SubtensorClient {
    let mut config = ClientConfig::new(devnet.url());
    config.connect_timeout = Duration::from_secs(10);
    SubtensorClient::connect(config).await.expect("connects to the devnet")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_timestamps_metagraph_and_commitments() {
    let devnet = Devnet::start(manual(), &seed()).await.unwrap();
    devnet.produce_until(20);
    let chain = client(&devnet).await;

    assert_eq!(chain.head().await.unwrap(), 20);
    for block in [1, 7, 20] {
        assert_eq!(chain.timestamp_ms(block).await.unwrap(), START_MS + block * 12_000);
        assert_eq!(
            Some(chain.timestamp_ms(block).await.unwrap()),
            devnet.timestamp_ms(block)
        );
    }
    assert!(
        matches!(chain.timestamp_ms(99).await, Err(ChainError::BlockNotFound(99))),
        "a block not produced yet is named"
    );

    let m = chain.metagraph(NETUID, Some(10)).await.unwrap();
    assert_eq!(m.block, 10);
    assert_eq!(m.neurons.iter().map(|n| n.uid).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(m.neurons[2].hotkey, dev_hotkey(2));
    assert!(m.neurons[2].hotkey_ss58.starts_with('5'), "SS58 with prefix 42");
    assert_eq!(m.neurons[1].stake, 90_000_000_000_000);
    assert_eq!(m.neurons[1].stake_tao(), 90_000.0);
    assert_eq!(m.neurons[0].incentive, (0.5f64 * 65535.0).round() / 65535.0);
    assert_eq!(m.neurons[4].incentive, 1.0);
    assert_eq!(m.leader().map(|n| n.uid), Some(1), "argmax stake");
    assert!(
        chain.metagraph(42, None).await.unwrap().neurons.is_empty(),
        "an empty subnet"
    );

    let c = chain.commitments(&m).await.unwrap();
    assert_eq!(c.by_uid.keys().copied().collect::<Vec<_>>(), [0, 1]);
    assert_eq!(c.by_uid[&1].text, commitment(1));
    assert_eq!(c.by_uid[&1].hotkey, dev_hotkey(1));
    let mut reasons: Vec<&str> = c.skipped.iter().map(|s| s.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("9 characters")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("not UTF-8")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("unknown Data tag 200")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("not registered")), "{reasons:?}");

    // A commitment changed on chain shows from the next block on, not before.
    devnet.set_commitment(NETUID, &dev_hotkey(4), commitment(4).as_bytes());
    devnet.produce_block();
    let later = chain.metagraph(NETUID, None).await.unwrap();
    assert!(chain.commitments(&later).await.unwrap().by_uid.contains_key(&4));
    assert!(!chain.commitments(&m).await.unwrap().by_uid.contains_key(&4));
    devnet.shutdown().await;
}

async fn next_event(rx: &mut mpsc::Receiver<HeadEvent>) -> HeadEvent {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a head within 30 s")
        .expect("the follower runs")
}

/// Collects closed windows until `window` has been reported.
async fn closed_until(rx: &mut mpsc::Receiver<HeadEvent>, window: u64, closed: &mut Vec<u64>) {
    while closed.last().is_none_or(|&w| w < window) {
        closed.extend(next_event(rx).await.closed.windows);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reports_every_window_across_a_restart_on_the_same_port() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    const BPW: u32 = 5;
    let mut devnet = Devnet::start(manual(), &seed()).await.unwrap();
    devnet.produce_until(12);
    let (tx, mut rx) = mpsc::channel(64);
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(800),
    };
    let mut config = ClientConfig::new(devnet.url());
    config.reconnect_max_delay = Duration::from_millis(500);
    let follower = tokio::spawn(follow_heads(
        config,
        None,
        WindowTracker::new(BPW, 1000, None),
        backoff,
        tx,
    ));

    // The subscription starts with the current head; a fresh tracker reports the newest closed window.
    let first = next_event(&mut rx).await;
    assert_eq!(
        (first.block, first.window, first.closed.windows.clone()),
        (12, 2, vec![1])
    );
    let mut closed = first.closed.windows;
    for _ in 13..=21 {
        devnet.produce_block();
    }
    closed_until(&mut rx, 3, &mut closed).await;
    assert_eq!(closed, [1, 2, 3]);

    // The node goes away while the chain moves on by eight windows, then comes back on the same port.
    let port = devnet.addr().port();
    devnet.stop_server().await;
    devnet.produce_until(61);
    tokio::time::sleep(Duration::from_millis(300)).await;
    devnet.start_server().await.unwrap();
    assert_eq!(devnet.addr().port(), port);
    devnet.produce_block(); // 62

    closed_until(&mut rx, 11, &mut closed).await;
    assert_eq!(closed, (1..=11).collect::<Vec<_>>(), "no window lost, none repeated");
    assert_eq!(sync_block(11, BPW), 60);

    drop(rx);
    devnet.produce_block();
    tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the follower stops when nobody listens")
        .unwrap();
    devnet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_is_ready_in_under_a_second_and_produces_blocks_on_a_timer() {
    let started = Instant::now();
    let config = DevnetConfig {
        block_time: Some(Duration::from_millis(100)),
        ..DevnetConfig::default()
    };
    let devnet = Devnet::start(config, &seed()).await.unwrap();
    let chain = client(&devnet).await;
    let ready = started.elapsed();
    eprintln!("devnet started and answered the client in {ready:?}");
    assert!(ready < Duration::from_secs(1), "ready in {ready:?}");

    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(follow_heads(
        ClientConfig::new(devnet.url()),
        Some(chain.clone()),
        WindowTracker::new(2, 100, None),
        Backoff::default(),
        tx,
    ));
    let a = next_event(&mut rx).await.block;
    let b = next_event(&mut rx).await.block;
    assert_eq!(b, a + 1, "consecutive heads");
    // Wall-clock timestamps, as a real chain sets them.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ts = chain.timestamp_ms(b).await.unwrap();
    assert!(now.abs_diff(ts) < 10_000, "timestamp {ts} vs now {now}");
    devnet.shutdown().await;
}
