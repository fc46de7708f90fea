//! A local test double for Subtensor's RPC surface: a WebSocket JSON-RPC server on 127.0.0.1 that answers the
//! legacy methods subxt's `LegacyBackend` calls, with **real Subtensor metadata** (V16, spec 365, vendored from
//! `bittensor-rs` 0.1.1 under MIT; see `metadata/`).
//!
//! What it does: produces blocks (on a timer, or on request), hashes headers as Substrate does, sets
//! `Timestamp::Now` per block, and serves storage seeded from a file ([`Seed`], format in [`SEED_FORMAT`]) or the
//! API: neurons (`SubtensorModule::{NetworksAdded, SubnetworkN, Keys, Uids, TotalHotkeyAlpha, Incentive}`) and
//! `Commitments::CommitmentOf`, including malformed values.
//!
//! What it does **not** do: it is not a chain. No runtime, no extrinsics, no consensus or forks (every block is
//! final at once), no trie or proofs (roots are stand-ins), no runtime APIs (`state_call` answers only the metadata
//! handshake), and it keeps only the last `retain_blocks` blocks, like a pruned node.
//!
//! The server can be stopped and started again on the same port while blocks keep coming ([`Devnet::stop_server`],
//! [`Devnet::start_server`]), so clients' reconnect logic can be tested.

mod keys;
mod rpc;
mod seed;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jsonrpsee::server::{Server, ServerConfig, ServerHandle};
use parity_scale_codec::Encode;
use thiserror::Error;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use keys::AccountId;
pub use rpc::{METADATA, SPEC_NAME, SPEC_VERSION};
pub use seed::{Neuron, NeuronSeed, RawCommitment, SEED_FORMAT, Seed, dev_hotkey};
pub use state::Timestamps;

/// Devnet errors.
#[derive(Debug, Error)]
pub enum DevnetError {
    /// A bad seed file or value.
    #[error("seed: {0}")]
    Seed(String),
    /// The server could not bind or start.
    #[error("cannot serve on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// How the devnet runs.
#[derive(Debug, Clone)]
pub struct DevnetConfig {
    /// Where to listen (port 0: any free port).
    pub addr: SocketAddr,
    /// A block every `block_time`; `None`: only on [`Devnet::produce_block`].
    pub block_time: Option<Duration>,
    /// Where `Timestamp::Now` comes from.
    pub timestamps: Timestamps,
    /// Blocks kept (older state is gone, as on a pruned node).
    pub retain_blocks: usize,
}

impl Default for DevnetConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            block_time: Some(Duration::from_secs(12)),
            timestamps: Timestamps::WallClock,
            retain_blocks: 4096,
        }
    }
}

/// State shared by the server, the block producer and the API.
pub(crate) struct Shared {
    state: Mutex<state::ChainState>,
    heads: broadcast::Sender<Arc<serde_json::Value>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, state::ChainState> {
        // A panic while holding the lock cannot leave the state half-written (every write is one map operation).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn produce(&self) -> u64 {
        let block = self.lock().produce();
        // No receiver is fine: nobody is subscribed.
        let _ = self.heads.send(Arc::new(block.header_json()));
        tracing::debug!(block = block.number, timestamp_ms = block.timestamp_ms, "devnet block");
        block.number
    }
}

/// A running devnet.
pub struct Devnet {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<ServerHandle>,
    producer: Option<JoinHandle<()>>,
}

impl Devnet {
    /// Seeds the state, starts the server and (with a block time) the block producer.
    pub async fn start(config: DevnetConfig, seed: &Seed) -> Result<Self, DevnetError> {
        let (heads, _) = broadcast::channel(256);
        let shared = Arc::new(Shared {
            state: Mutex::new(state::ChainState::new(
                BTreeMap::new(),
                config.retain_blocks,
                config.timestamps,
            )),
            heads,
        });
        let mut devnet = Self {
            shared,
            addr: config.addr,
            server: None,
            producer: None,
        };
        devnet.apply_seed(seed)?;
        // Block 1 carries the seed (block 0 is an empty genesis).
        devnet.produce_block();
        devnet.start_server().await?;
        if let Some(period) = config.block_time {
            let shared = devnet.shared.clone();
            devnet.producer = Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    shared.produce();
                }
            }));
        }
        Ok(devnet)
    }

    /// The WebSocket URL (`ws://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The newest block's number.
    pub fn head(&self) -> u64 {
        self.shared.lock().best().number
    }

    /// The timestamp of block `number`, if kept.
    pub fn timestamp_ms(&self, number: u64) -> Option<u64> {
        self.shared.lock().by_number(number).map(|b| b.timestamp_ms)
    }

    /// Produces one block now (also while the server is stopped); returns its number.
    pub fn produce_block(&self) -> u64 {
        self.shared.produce()
    }

    /// Produces blocks until the head is `number`.
    pub fn produce_until(&self, number: u64) {
        while self.head() < number {
            self.produce_block();
        }
    }

    /// Stores a seed's neurons and commitments (seen from the next block on).
    pub fn apply_seed(&self, seed: &Seed) -> Result<(), DevnetError> {
        let neurons: Vec<Neuron> = seed.neurons.iter().map(NeuronSeed::neuron).collect::<Result<_, _>>()?;
        self.set_neurons(seed.netuid, &neurons);
        for (n, s) in neurons.iter().zip(&seed.neurons) {
            if let Some(c) = &s.commitment {
                self.set_commitment(seed.netuid, &n.hotkey, c.as_bytes());
            }
        }
        for (i, c) in seed.raw_commitments.iter().enumerate() {
            let hotkey = seed::parse_hotkey(&format!("raw_commitments[{i}].hotkey"), &c.hotkey)?;
            let bytes = seed::parse_hex(&format!("raw_commitments[{i}].registration"), &c.registration)?;
            self.set_raw_commitment(seed.netuid, &hotkey, bytes);
        }
        Ok(())
    }

    /// Replaces the subnet's neurons (uids must be distinct; gaps are left unregistered).
    pub fn set_neurons(&self, netuid: u16, neurons: &[Neuron]) {
        let mut s = self.shared.lock();
        let n = neurons.iter().map(|n| n.uid as usize + 1).max().unwrap_or(0);
        // Deregister every previous uid first (Keys and the reverse Uids map); the old SubnetworkN bounds them.
        let previous = s
            .pending(&keys::subnetwork_n(netuid))
            .and_then(|v| <[u8; 2]>::try_from(v.as_slice()).ok())
            .map_or(0, u16::from_le_bytes);
        s.set(keys::networks_added(netuid), Some(true.encode()));
        s.set(keys::subnetwork_n(netuid), Some((n as u16).encode()));
        for uid in 0..previous {
            let key = keys::keys(netuid, uid);
            if let Some(old) = s.pending(&key).cloned() {
                if let Ok(old) = <[u8; 32]>::try_from(old.as_slice()) {
                    s.set(keys::uids(netuid, &old), None);
                }
                s.set(key, None);
            }
        }
        let mut incentive = vec![0u16; n];
        for neuron in neurons {
            s.set(keys::keys(netuid, neuron.uid), Some(neuron.hotkey.encode()));
            s.set(keys::uids(netuid, &neuron.hotkey), Some(neuron.uid.encode()));
            s.set(
                keys::total_hotkey_alpha(&neuron.hotkey, netuid),
                Some(neuron.stake.encode()),
            );
            incentive[neuron.uid as usize] = (neuron.incentive.clamp(0.0, 1.0) * u16::MAX as f64).round() as u16;
        }
        s.set(keys::incentive(netuid), Some(incentive.encode()));
    }

    /// Stores `data` as the hotkey's commitment (`Registration { fields: [Raw(data)] }`).
    pub fn set_commitment(&self, netuid: u16, hotkey: &AccountId, data: &[u8]) {
        let block = self.head() as u32;
        self.set_raw_commitment(netuid, hotkey, keys::registration(0, block, data));
    }

    /// Stores raw bytes as the hotkey's `CommitmentOf` value (malformed values included).
    pub fn set_raw_commitment(&self, netuid: u16, hotkey: &AccountId, bytes: Vec<u8>) {
        self.shared.lock().set(keys::commitment_of(netuid, hotkey), Some(bytes));
    }

    /// Removes the hotkey's commitment.
    pub fn remove_commitment(&self, netuid: u16, hotkey: &AccountId) {
        self.shared.lock().set(keys::commitment_of(netuid, hotkey), None);
    }

    /// Starts the server (again) on the devnet's address; after [`Self::stop_server`] it is the same port.
    pub async fn start_server(&mut self) -> Result<(), DevnetError> {
        if self.server.is_some() {
            return Ok(());
        }
        let bind = |source| DevnetError::Bind {
            addr: self.addr,
            source,
        };
        // Requests are tiny; the largest answer is the metadata (about 600 KB as hex).
        let limits = ServerConfig::builder()
            .max_request_body_size(1 << 20)
            .max_response_body_size(4 << 20)
            .build();
        let server = Server::builder()
            .set_config(limits)
            .build(self.addr)
            .await
            .map_err(bind)?;
        self.addr = server.local_addr().map_err(bind)?;
        self.server = Some(server.start(rpc::module(self.shared.clone())));
        tracing::info!(url = %self.url(), "devnet serving");
        Ok(())
    }

    /// Stops the server and drops its connections; blocks keep coming.
    pub async fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.stop();
            server.stopped().await;
            tracing::info!(url = %self.url(), "devnet stopped serving");
        }
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        if let Some(p) = self.producer.take() {
            p.abort();
        }
        self.stop_server().await;
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if let Some(p) = self.producer.take() {
            p.abort();
        }
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
    }
}
