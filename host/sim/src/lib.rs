//! The zero-setup simulator: the devnet, an object store (a local directory, or any S3 server), simulated miners
//! that compress real gradients with the miner-side code and upload them on Templar's schedule, a simulated leader
//! that posts the peer list, and the **unmodified daemon** ([`aggregator_daemon::run`]) processing the windows.
//!
//! Schedule of window `w` (bounds `[T, T+Δ]`, `T` = timestamp of block `(w+1)·bpw`): a miner uploads its gradient
//! 1.2–1.7 s after `T` (S3 `LastModified` has one-second resolution, as Templar's gather sees it). With faults,
//! per `(uid, window)`: **early** (uploaded two blocks before `T`), **late** (at `T+Δ+1.5 s`: a live aggregator has
//! stopped looking by then, so it reports the peer *missing*; only a backfill sees it *too late*), **missing**,
//! **malformed** (a truncated file) or **oversized** (larger than the model's size cap).

pub mod adversary;
mod shards;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregator_catchup::{Checkpoint, Schedule, apply_aggregate};
use aggregator_codec::{PeerList, StartWindow};
use aggregator_devnet::{Devnet, DevnetConfig, Neuron as DevNeuron, Timestamps};
use aggregator_kernels::{Backend, Cpu};
use aggregator_model::ModelSpec;
use aggregator_policy::PolicyKind;
use aggregator_store::{Bucket, ClientSettings, Clients, Endpoint, PutOptions, SkipKind, keys, put, size_cap};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::sync::{mpsc, watch};

use aggregator_daemon::{DaemonConfig, DaemonError, OutputBucket, WindowReport, WindowResult, now_ms};
use aggregator_store::StoreError;
use thiserror::Error;

/// The leader's uid (highest stake; it posts the peer lists).
pub const LEADER_UID: u16 = 0;
/// The output bucket's name.
pub const OUTPUT_BUCKET: &str = "sim-aggregator";
/// The subnet.
pub const NETUID: u16 = 3;
/// The Templar version in the simulated network's object names.
pub const VERSION: &str = "0.2.73";
/// Above this many parameters the simulator reuses a pool of miner gradients and the validator keeps no
/// per-window checkpoint files (whole models of several GB).
pub const LARGE_MODEL: usize = 100_000_000;

/// A simulated fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Uploaded before the lower bound.
    Early,
    /// Uploaded after the upper bound.
    Late,
    /// Never uploaded.
    Missing,
    /// A truncated file.
    Malformed,
    /// Larger than the size cap.
    Oversized,
}

impl Fault {
    /// The skip reasons the aggregator may report for it.
    pub fn expected_reasons(self) -> &'static [SkipKind] {
        match self {
            Fault::Early => &[SkipKind::TooEarly],
            Fault::Late => &[SkipKind::Missing, SkipKind::TooLate],
            Fault::Missing => &[SkipKind::Missing],
            Fault::Malformed => &[SkipKind::Malformed],
            Fault::Oversized => &[SkipKind::TooLarge],
        }
    }
}

/// Which fault (if any) miner `uid` shows in window `w`: each kind hits one miner per window, rotating.
pub fn fault(uid: u16, window: u64, peers: u16) -> Option<Fault> {
    let slot = (uid as u64 + window) % (peers as u64).max(8);
    [
        Fault::Early,
        Fault::Late,
        Fault::Missing,
        Fault::Malformed,
        Fault::Oversized,
    ]
    .get(slot as usize)
    .copied()
}

/// A bucket name of 32 characters (Templar's account id) for `uid`.
pub fn bucket_name(uid: u16) -> String {
    format!("sim-bucket-{uid:021}")
}

/// The read key id and secret in `uid`'s commitment.
pub fn read_credentials(uid: u16) -> (String, String) {
    (format!("SIMREADKEY{uid:022}"), format!("simreadsecret{uid:051}"))
}

/// Every bucket of a simulated network with `peers` miners on an S3 server, as `(name, read credentials)`: each
/// peer's (uids `0..=peers`, readable with [`read_credentials`]) and [`OUTPUT_BUCKET`] (no reader).
pub fn s3_buckets(peers: u16) -> Vec<(String, Option<(String, String)>)> {
    (0..=peers)
        .map(|uid| (bucket_name(uid), Some(read_credentials(uid))))
        .chain([(OUTPUT_BUCKET.to_string(), None)])
        .collect()
}

/// `uid`'s 128-character commitment.
pub fn commitment(uid: u16) -> String {
    let (k, s) = read_credentials(uid);
    format!("{}{k}{s}", bucket_name(uid))
}

/// An S3 server to use instead of a local directory. Buckets `bucket_name(0..=P)` and [`OUTPUT_BUCKET`] must exist,
/// with each peer's [`read_credentials`] allowed to read its bucket.
#[derive(Debug, Clone)]
pub struct S3Target {
    /// `http(s)://host:port`.
    pub endpoint: String,
    /// Key id and secret that may write every bucket (the miners' and the server's uploads).
    pub writer: (String, String),
}

/// Simulator settings.
#[derive(Clone)]
pub struct SimOptions {
    /// Windows to process.
    pub windows: u64,
    /// Miners (uids `1..=peers`).
    pub peers: u16,
    /// Model preset or file.
    pub model: String,
    /// Inject faults.
    pub faults: bool,
    /// S3 instead of a local directory.
    pub s3: Option<S3Target>,
    /// Where the store, state and outputs go (default: a fresh temporary directory).
    pub data_dir: Option<PathBuf>,
    /// Time between blocks.
    pub block_time: Duration,
    /// Blocks per window (at least 3).
    pub blocks_per_window: u32,
    /// Upload window Δ in seconds.
    pub delta_s: u64,
    /// Seed of the miners' gradients.
    pub seed: u64,
    /// Serve the daemon's status endpoint (`/`, `/api/windows`, `/metrics`, `/healthz`, `/readyz`) here while the
    /// simulation runs (port 0: any free port; the URL is printed).
    pub metrics: Option<SocketAddr>,
    /// After the last window, stop the network and the daemon but keep serving the status page (same address)
    /// until SIGINT or SIGTERM.
    pub linger: bool,
    /// What the daemon reports about its build.
    pub build: aggregator_daemon::metrics::BuildInfo,
    /// Print progress and the table to stdout/stderr.
    pub verbose: bool,
    /// Windows (as offsets from the first) whose aggregate is lost before the validator reads it, as in an
    /// outage: the validator and any later catch-up see them missing.
    pub lose: Vec<u64>,
    /// The daemon's numeric backend.
    pub backend: Arc<dyn Backend>,
    /// A peer-selection component for the daemon (default: the embedded templar-default).
    pub peer_selection: Option<PathBuf>,
    /// Policy settings for the daemon, besides the simulator's `time_window_delta_seconds`.
    pub policy_settings: Vec<(String, String)>,
    /// The daemon's `archive_inputs`.
    pub archive_inputs: bool,
    /// The daemon's `memory_budget_mib` (0: off).
    pub memory_budget_mib: u64,
    /// A peer-selection shadow candidate for the daemon (`policy.shadow.peer_selection`).
    pub shadow_peer_selection: Option<PathBuf>,
    /// The daemon's `policy.shadow_aggregate`.
    pub shadow_aggregate: bool,
    /// Call limits per policy kind for the daemon (`policy.limits`).
    pub policy_limits: BTreeMap<String, aggregator_daemon::KindLimits>,
    /// Adversarial miners (the last uids). With any, every miner draws from [`adversary::Miners`] (honest ones
    /// share a direction plus noise) and each window's stored aggregate is compared with the honest-only one.
    pub adversaries: adversary::Adversaries,
    /// A contribution-weighting component for the daemon (default: the embedded templar-default).
    pub contribution_weighting: Option<PathBuf>,
    /// Processes sharing each window (the daemon's `shards`; 1: the daemon alone). Shards 1.. run beside the
    /// daemon (shard 0): as threads, or as processes of `shard_exe`. Shards need `s3` (one multipart upload).
    pub shards: u32,
    /// The `aggregator` binary that runs shards 1.. as processes (`aggregator run --config FILE`, each with its
    /// own state directory and log `shard-{i}.log` in the data directory); `None`: threads of this process.
    pub shard_exe: Option<PathBuf>,
    /// The daemon's `shard_wait_s`.
    pub shard_wait_s: f64,
    /// `(shard, window offset)`: that shard is stopped when the coordinator starts that window (as a crash: what
    /// it was doing is left undone; a process is killed), and started again once that attempt is aborted.
    pub shard_outage: Option<(usize, u64)>,
    /// Uids whose honest uploads carry a NaN in the model's last parameter only: malformed there, valid in every
    /// other parameter (with shards, valid in every shard's range but the last's).
    pub partly_malformed: Vec<u16>,
    /// `(uid, window offset)`: with shards, once shard 0 has judged that window's first round, the miner uploads
    /// another valid file in place of its own (a new `ETag`), as a miner replacing its file mid-window; the file
    /// it replaced is kept as `replaced-{w}-{uid}.pt` in the data directory.
    pub replace_mid_window: Option<(u16, u64)>,
}

impl std::fmt::Debug for SimOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimOptions")
            .field("windows", &self.windows)
            .field("peers", &self.peers)
            .field("model", &self.model)
            .field("faults", &self.faults)
            .field("s3", &self.s3)
            .field("data_dir", &self.data_dir)
            .field("seed", &self.seed)
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            windows: 3,
            peers: 6,
            model: "tiny".into(),
            faults: false,
            s3: None,
            data_dir: None,
            block_time: Duration::from_secs(1),
            blocks_per_window: 3,
            delta_s: 4,
            seed: 2073,
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            linger: false,
            build: Default::default(),
            verbose: true,
            lose: vec![],
            backend: Arc::new(Cpu::new()),
            peer_selection: None,
            policy_settings: vec![],
            archive_inputs: false,
            memory_budget_mib: 0,
            shadow_peer_selection: None,
            shadow_aggregate: false,
            policy_limits: BTreeMap::new(),
            adversaries: adversary::Adversaries::default(),
            contribution_weighting: None,
            shards: 1,
            shard_exe: None,
            shard_wait_s: 60.0,
            shard_outage: None,
            partly_malformed: vec![],
            replace_mid_window: None,
        }
    }
}

/// What a simulation did.
#[derive(Debug)]
pub struct SimOutcome {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The first simulated window.
    pub first_window: u64,
    /// One report per window, in order.
    pub reports: Vec<WindowReport>,
    /// The injected faults.
    pub faults: BTreeMap<(u64, u16), Fault>,
    /// The output bucket.
    pub output: Bucket,
    /// Each miner's bucket (with the reader credentials of its commitment).
    pub peer_buckets: BTreeMap<u16, Bucket>,
    /// `/metrics` text at the end.
    pub metrics_text: String,
    /// The simulated validator's checkpoints, `checkpoint-{w}.safetensors` after each window.
    pub validator_dir: PathBuf,
    /// With adversaries: per stored window, the fraction of the stored aggregate's sign bits equal to those of the
    /// aggregate of the honest miners it aggregated alone.
    pub honest_agreement: BTreeMap<u64, f64>,
}

/// Why a simulation could not run or finish.
#[derive(Debug, Error)]
pub enum SimError {
    /// The daemon (its configuration, state, or a window) failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The simulated network's storage (a miner's upload, the validator's reads).
    #[error("simulator: storage: {0}")]
    Store(#[from] StoreError),
    /// The simulated network itself (set-up, a miner, the validator).
    #[error("simulator: {0}")]
    Network(String),
}

fn sim_err(e: impl std::fmt::Display) -> SimError {
    SimError::Network(e.to_string())
}

/// A simulated miner's honest upload for `window`: every parameter of `model` from uniform noise in `[-1, 1)` seeded
/// by `seed`, DCT-top-k compressed on `cpu`, as `gradient-{w}-{uid}-v{V}.pt` bytes.
pub fn miner_gradient(model: &ModelSpec, cpu: &Cpu, seed: u64, window: u64) -> Result<Vec<u8>, SimError> {
    adversary::gradient(model, cpu, window, |i, n| {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    })?
    .to_bytes(model)
    .map_err(sim_err)
}

/// `bytes` (a valid gradient file) with the first value of the model's last parameter made NaN.
fn nan_in_last_param(model: &ModelSpec, bytes: &[u8]) -> Result<Vec<u8>, SimError> {
    let limits = aggregator_codec::Limits::for_gradient(model.sparse_bytes() as u64);
    let mut g = aggregator_codec::Gradient::read(bytes, model, &limits).map_err(sim_err)?;
    if let Some(Some(p)) = g.params.last_mut()
        && let Some(v) = p.vals.first_mut()
    {
        *v = f32::NAN;
    }
    g.to_bytes(model).map_err(sim_err)
}

struct World {
    clients: Arc<Clients>,
    writer_buckets: BTreeMap<u16, Bucket>,
    model: Arc<ModelSpec>,
    cpu: Arc<Cpu>,
    options: SimOptions,
    /// Gradients reused round-robin for large models (compressing 1.2 B parameters per miner per window would
    /// dominate the simulation); small models get a fresh gradient per miner and window.
    pool: Vec<Arc<Vec<u8>>>,
    /// With adversaries: who attacks and what everyone uploads.
    miners: Option<Arc<adversary::Miners>>,
}

impl World {
    /// `uid`'s upload for window `w`, and the uid it copies (with adversaries).
    async fn upload_of(&self, uid: u16, w: u64) -> Result<(Arc<Vec<u8>>, Option<u16>), SimError> {
        let Some(miners) = self.miners.clone() else {
            return Ok((self.gradient(uid, w).await?, None));
        };
        let (model, cpu) = (self.model.clone(), self.cpu.clone());
        tokio::task::spawn_blocking(move || {
            let u = miners.upload(&model, &cpu, uid, w)?;
            Ok((Arc::new(u.gradient.to_bytes(&model).map_err(sim_err)?), u.copy_of))
        })
        .await
        .map_err(sim_err)?
    }

    async fn gradient(&self, uid: u16, w: u64) -> Result<Arc<Vec<u8>>, SimError> {
        if !self.pool.is_empty() {
            return Ok(self.pool[(uid as usize + w as usize) % self.pool.len()].clone());
        }
        let (model, cpu) = (self.model.clone(), self.cpu.clone());
        let seed = self.options.seed ^ ((uid as u64) << 32) ^ w;
        tokio::task::spawn_blocking(move || miner_gradient(&model, &cpu, seed, w).map(Arc::new))
            .await
            .map_err(sim_err)?
    }

    async fn upload(&self, uid: u16, w: u64, bytes: Vec<u8>) {
        let store = match self.clients.get(&self.writer_buckets[&uid]) {
            Ok(s) => s,
            Err(e) => return tracing::error!(uid, error = %e, "sim miner: bucket"),
        };
        let key = keys::gradient(w, uid, VERSION);
        if let Err(e) = put(store.as_ref(), &key, bytes.into(), &PutOptions::default()).await {
            tracing::error!(uid, window = w, error = %e, "sim miner: upload failed");
        }
    }
}

async fn wait_for_block(devnet: &Devnet, block: u64) {
    while devnet.head() < block {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a simulation to its end.
/// A running simulated network without the daemon: the devnet, the buckets, the leader's lists and the miners,
/// uploading for windows `first_window..=last_window`.
pub struct Network {
    /// The chain.
    pub devnet: Arc<Devnet>,
    /// The first simulated window.
    pub first_window: u64,
    /// The last simulated window.
    pub last_window: u64,
    /// The injected faults.
    pub faults: Arc<BTreeMap<(u64, u16), Fault>>,
    /// The output bucket (writer credentials).
    pub output: Bucket,
    /// Each miner's bucket (reader credentials).
    pub peer_buckets: BTreeMap<u16, Bucket>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// With adversaries: who attacks.
    pub adversaries: Option<Arc<adversary::Miners>>,
    /// Each miner's bucket with the writer's credentials.
    pub(crate) writer_buckets: BTreeMap<u16, Bucket>,
    endpoint: Endpoint,
    miners: tokio::task::JoinHandle<()>,
    options: SimOptions,
}

impl Network {
    /// Starts everything but the daemon.
    pub async fn start(options: &SimOptions) -> Result<Self, SimError> {
        if options.blocks_per_window < 3 || options.peers == 0 || options.windows == 0 {
            return Err(SimError::Daemon(DaemonError::Config(
                "the simulator needs blocks_per_window ≥ 3, at least one peer and one window".into(),
            )));
        }
        let data_dir = match &options.data_dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("aggregator-sim-{}-{}", std::process::id(), now_ms())),
        };
        std::fs::create_dir_all(&data_dir).map_err(|e| sim_err(format!("{}: {e}", data_dir.display())))?;
        let say = |s: String| {
            if options.verbose {
                tracing::info!(target: "sim", "{}", s.strip_prefix("sim: ").unwrap_or(&s));
            }
        };
        let options = options.clone();
        say(format!("sim: data directory {}", data_dir.display()));
        let model = Arc::new(ModelSpec::load(&options.model).map_err(|e| DaemonError::Config(format!("model: {e}")))?);

        // Buckets: every neuron's (uid 0 is the leader), and the output.
        let (endpoint, writer) = match &options.s3 {
            Some(s3) => (Endpoint::Url(s3.endpoint.clone()), s3.writer.clone()),
            None => (Endpoint::Local(data_dir.join("store")), (String::new(), String::new())),
        };
        let bucket = |name: String, creds: (String, String)| Bucket {
            endpoint: endpoint.clone(),
            name,
            access_key_id: creds.0,
            secret: creds.1,
        };
        let uids: Vec<u16> = (0..=options.peers).collect();
        let writer_buckets: BTreeMap<u16, Bucket> = uids
            .iter()
            .map(|&u| (u, bucket(bucket_name(u), writer.clone())))
            .collect();
        let peer_buckets: BTreeMap<u16, Bucket> = uids
            .iter()
            .filter(|&&u| u != LEADER_UID)
            .map(|&u| (u, bucket(bucket_name(u), read_credentials(u))))
            .collect();
        let output = bucket(OUTPUT_BUCKET.into(), writer.clone());

        // The chain.
        let devnet = Devnet::start(
            DevnetConfig {
                block_time: Some(options.block_time),
                timestamps: Timestamps::WallClock,
                ..DevnetConfig::default()
            },
            &aggregator_devnet::Seed::default(),
        )
        .await
        .map_err(sim_err)?;
        let neurons: Vec<DevNeuron> = uids
            .iter()
            .map(|&uid| DevNeuron {
                uid,
                hotkey: aggregator_devnet::dev_hotkey(uid),
                stake: if uid == LEADER_UID {
                    100_000_000_000_000
                } else {
                    1_000_000_000 * (uid as u64 + 1)
                },
                incentive: if uid == LEADER_UID {
                    0.0
                } else {
                    1.0 / options.peers as f64
                },
            })
            .collect();
        devnet.set_neurons(NETUID, &neurons);
        for &uid in &uids {
            devnet.set_commitment(NETUID, &aggregator_devnet::dev_hotkey(uid), commitment(uid).as_bytes());
        }
        devnet.produce_block();
        say(format!(
            "sim: devnet at {} ({} neurons, a block every {:?})",
            devnet.url(),
            uids.len(),
            options.block_time
        ));

        let bpw = options.blocks_per_window as u64;
        let clients = Arc::new(Clients::new(ClientSettings::default()));
        let pool = if model.numel() > LARGE_MODEL {
            let started = Instant::now();
            let mut pool = Vec::new();
            for i in 0..3u64 {
                let (m, cpu) = (model.clone(), Arc::new(Cpu::new()));
                let seed = options.seed ^ (i << 40);
                pool.push(Arc::new(
                    tokio::task::spawn_blocking(move || miner_gradient(&m, &cpu, seed, 0))
                        .await
                        .map_err(sim_err)??,
                ));
                say(format!(
                    "sim: compressed miner gradient {}/3 ({:.1} s)",
                    i + 1,
                    started.elapsed().as_secs_f64()
                ));
            }
            pool
        } else {
            vec![]
        };
        let adversaries = if options.adversaries.0.is_empty() {
            None
        } else {
            let m = adversary::Miners::new(options.peers, &options.adversaries, options.seed)
                .map_err(|e| DaemonError::Config(format!("adversaries: {e}")))?;
            say(format!(
                "sim: adversaries {}",
                m.attacks
                    .iter()
                    .map(|(u, a)| format!("uid {u} {a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            Some(Arc::new(m))
        };
        let world = Arc::new(World {
            clients: clients.clone(),
            writer_buckets: writer_buckets.clone(),
            model: model.clone(),
            cpu: Arc::new(Cpu::new()),
            options: options.clone(),
            pool,
            miners: adversaries.clone(),
        });

        // The first simulated window starts after the present one; the leader posts its list for it. A daemon starts
        // after window `first - 1` (see `seed_daemon_state`), so that window must be open already: a state may not
        // claim a window the chain has not reached.
        let first = (devnet.head() / bpw + 1).max(2);
        let last = first + options.windows - 1;
        wait_for_block(&devnet, (first - 1) * bpw).await;
        let leader = clients.get(&world.writer_buckets[&LEADER_UID])?;
        // Two lists, as a validator that has been running a while has: a starting aggregator takes the previous one
        // (templar-default, spec §4.4), later ones switch at their first effective window.
        for (n, initial) in [(first.saturating_sub(2), true), (first - 1, false)] {
            let list = PeerList {
                peers: (1..=options.peers).collect(),
                weights: None,
                initial_selection: initial,
                sync_window: n as i64,
                first_effective_window: n as i64 + 1,
            };
            put(
                leader.as_ref(),
                &keys::peer_list(n, VERSION),
                list.to_json().into(),
                &PutOptions::default(),
            )
            .await?;
        }
        put(
            leader.as_ref(),
            &keys::start_window(VERSION),
            StartWindow {
                // The validator applies every window from `first` on (spec §7.2: start_window + 1 onwards).
                start_window: first as i64 - 1,
            }
            .to_json()
            .into(),
            &PutOptions::default(),
        )
        .await?;

        // Faults.
        let mut faults = BTreeMap::new();
        if options.faults {
            for w in first..=last {
                for uid in 1..=options.peers {
                    if let Some(f) = fault(uid, w, options.peers) {
                        faults.insert((w, uid), f);
                    }
                }
            }
        }
        let faults = Arc::new(faults);

        // Miners: gradients are made while window w runs and uploaded around T = ts((w+1)·bpw).
        let cap = size_cap(&model);
        let devnet = Arc::new(devnet);
        let miners = {
            let (world, devnet, faults) = (world.clone(), devnet.clone(), faults.clone());
            tokio::spawn(async move {
                let mut handles = Vec::new();
                for w in first..=last {
                    wait_for_block(&devnet, w * bpw).await;
                    let sync = (w + 1) * bpw;
                    for uid in 1..=world.options.peers {
                        let (world, devnet, faults) = (world.clone(), devnet.clone(), faults.clone());
                        handles.push(tokio::spawn(async move {
                            let f = faults.get(&(w, uid)).copied();
                            if f == Some(Fault::Missing) {
                                return;
                            }
                            let (bytes, copy_of) = match world.upload_of(uid, w).await {
                                Ok(b) => b,
                                Err(e) => return tracing::error!(uid, error = %e, "sim miner"),
                            };
                            let bytes = match f {
                                Some(Fault::Malformed) => bytes[..bytes.len() / 2].to_vec(),
                                Some(Fault::Oversized) => vec![0u8; cap as usize + 1],
                                None if world.options.partly_malformed.contains(&uid) => {
                                    match nan_in_last_param(&world.model, &bytes) {
                                        Ok(b) => b,
                                        Err(e) => return tracing::error!(uid, error = %e, "sim miner"),
                                    }
                                }
                                _ => bytes.to_vec(),
                            };
                            match f {
                                Some(Fault::Early) => wait_for_block(&devnet, sync - 2).await,
                                _ => {
                                    wait_for_block(&devnet, sync).await;
                                    let t = devnet.timestamp_ms(sync).unwrap_or_else(now_ms);
                                    let jitter = |uid: u16| (uid as u64 * 97 + w * 31) % 500;
                                    let at = match (f, copy_of) {
                                        (Some(Fault::Late), _) => t + world.options.delta_s * 1000 + 1500,
                                        // A copier re-uploads its victim's file after it appeared.
                                        (_, Some(victim)) => t + 1200 + jitter(victim) + adversary::COPY_DELAY_MS,
                                        _ => t + 1200 + jitter(uid),
                                    };
                                    let wait = at.saturating_sub(now_ms());
                                    tokio::time::sleep(Duration::from_millis(wait)).await;
                                }
                            }
                            world.upload(uid, w, bytes).await;
                        }));
                    }
                }
                for h in handles {
                    let _ = h.await;
                }
            })
        };
        Ok(Network {
            adversaries,
            devnet,
            first_window: first,
            last_window: last,
            faults,
            output,
            peer_buckets,
            data_dir,
            writer_buckets,
            endpoint,
            miners,
            options: options.clone(),
        })
    }

    /// The configuration of a daemon serving this network (state in `data_dir/state`).
    pub fn daemon_config(&self) -> DaemonConfig {
        let options = &self.options;
        let mut settings = BTreeMap::new();
        settings.insert("time_window_delta_seconds".to_string(), options.delta_s.to_string());
        settings.extend(options.policy_settings.iter().cloned());
        let mut components = aggregator_daemon::Components::default();
        if let Some(file) = &options.peer_selection {
            components.set(PolicyKind::PeerSelection, file.display().to_string());
        }
        if let Some(file) = &options.contribution_weighting {
            components.set(PolicyKind::ContributionWeighting, file.display().to_string());
        }
        DaemonConfig {
            chain_url: self.devnet.url(),
            netuid: NETUID,
            blocks_per_window: options.blocks_per_window,
            version: VERSION.into(),
            model: options.model.clone(),
            state_dir: self.data_dir.join("state"),
            max_backfill: options.windows + 2,
            retention_windows: (options.windows + 2).max(100),
            peer_endpoint: self.endpoint.to_string(),
            output: OutputBucket {
                endpoint: self.output.endpoint.to_string(),
                name: self.output.name.clone(),
                access_key_id: self.output.access_key_id.clone(),
                secret: self.output.secret.clone(),
            },
            gather: aggregator_daemon::GatherConfig {
                timeout_s: options.delta_s as f64 + 10.0,
                concurrency: 16,
            },
            policy: aggregator_daemon::PolicyFiles {
                components,
                settings,
                limits: options.policy_limits.clone(),
                shadow: aggregator_daemon::ShadowFiles {
                    peer_selection: options
                        .shadow_peer_selection
                        .as_ref()
                        .map(|f| f.display().to_string())
                        .unwrap_or_default(),
                    time_bounds: String::new(),
                },
                shadow_aggregate: options.shadow_aggregate,
            },
            archive_inputs: options.archive_inputs,
            memory_budget_mib: options.memory_budget_mib,
            shards: options.shards,
            shard_index: (options.shards > 1).then_some(0),
            shard_wait_s: options.shard_wait_s,
            metrics: options.metrics.map(|a| a.to_string()).unwrap_or_default(),
            device: options.backend.name().parse().unwrap_or_default(),
            ..DaemonConfig::default()
        }
    }

    /// Makes a fresh daemon start with window `first_window` (persisted state `last_processed = first - 1`).
    pub fn seed_daemon_state(&self) -> Result<(), SimError> {
        aggregator_daemon::StateFile::open(&self.data_dir.join("state"))?.save(&aggregator_daemon::PersistedState {
            last_processed: Some(self.first_window - 1),
            ..Default::default()
        })?;
        Ok(())
    }

    /// Waits for the miners to finish and stops the devnet.
    pub async fn stop(self) {
        let _ = self.miners.await;
        if let Ok(devnet) = Arc::try_unwrap(self.devnet) {
            devnet.shutdown().await;
        }
    }

    /// Stops the miners where they are (a simulation that ended early) and the devnet.
    pub async fn abort(self) {
        self.miners.abort();
        let _ = self.miners.await;
        if let Ok(devnet) = Arc::try_unwrap(self.devnet) {
            devnet.shutdown().await;
        }
    }
}

/// Runs a simulation to its end.
pub async fn run(options: SimOptions) -> Result<SimOutcome, SimError> {
    let say = |s: String| {
        if options.verbose {
            tracing::info!(target: "sim", "{}", s.strip_prefix("sim: ").unwrap_or(&s));
        }
    };
    let network = Network::start(&options).await?;
    let (first, last, bpw) = (
        network.first_window,
        network.last_window,
        options.blocks_per_window as u64,
    );
    network.seed_daemon_state()?;
    let config = network.daemon_config();
    let output = network.output.clone();
    let shards = Arc::new(std::sync::Mutex::new(shards::Shards::start(
        &network, &config, &options,
    )?));
    let outage = options
        .shard_outage
        .map(|(shard, offset)| tokio::spawn(shards::outage(shards.clone(), output.clone(), first + offset, shard)));
    let replace = options.replace_mid_window.map(|(uid, offset)| {
        let model = ModelSpec::load(&options.model).map(Arc::new);
        let bucket = network.writer_buckets.get(&uid).cloned();
        let dir = network.data_dir.clone();
        tokio::spawn(shards::replace(
            model.ok(),
            bucket,
            output.clone(),
            (uid, first + offset),
            dir,
        ))
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    // The daemon's future is not `Send` (the store's borrowed-key futures), so it runs in this task beside the
    // collector rather than on a spawned one.
    let mut validator = Validator::new(&network, &options).await?;
    let (listening_tx, listening_rx) = tokio::sync::oneshot::channel();
    let daemon = aggregator_daemon::run(
        config,
        options.backend.clone(),
        output.clone(),
        stop_rx,
        aggregator_daemon::RunOptions {
            reports: Some(report_tx),
            listening: Some(listening_tx),
            build: options.build.clone(),
        },
    );
    // Every way out of the collector (all windows reported, the daemon gone, a validator error, no report in time)
    // signals the daemon to stop, and what was collected is kept and printed.
    let collect = async {
        // The status endpoint's address (none without `metrics`, or when the daemon failed before listening).
        let listening = listening_rx.await.ok();
        if let Some((addr, _)) = &listening {
            say(format!("sim: status page http://{addr}/ (metrics on /metrics)"));
        }
        let mut reports = Vec::new();
        let mut agreement = BTreeMap::new();
        let started = Instant::now();
        let deadline = Duration::from_secs(120 + 4 * bpw * options.block_time.as_secs().max(1));
        let mut error = None;
        while reports.len() < options.windows as usize {
            match tokio::time::timeout(deadline, report_rx.recv()).await {
                Ok(Some(r)) => {
                    // Only the simulated windows, one report each (a window is reported once, when it ends).
                    if r.window < first
                        || r.window > last
                        || reports.iter().any(|p: &WindowReport| p.window == r.window)
                    {
                        continue;
                    }
                    say(format!(
                        "sim: window {} {}: {}/{} aggregated, {} skipped, {:.2} s ({:.0} s elapsed)",
                        r.window,
                        r.result.label(),
                        r.aggregated.len(),
                        r.selected.len(),
                        r.skipped.len(),
                        (r.gather + r.process + r.put).as_secs_f64(),
                        started.elapsed().as_secs_f64()
                    ));
                    if let Some(miners) = &network.adversaries
                        && r.result == WindowResult::Stored
                    {
                        match honest_agreement(&network, miners, &r).await {
                            Ok(f) => {
                                say(format!(
                                    "sim: window {} sign agreement with the honest-only aggregate: {f:.4}",
                                    r.window
                                ));
                                agreement.insert(r.window, f);
                            }
                            Err(e) => say(format!("sim: window {}: honest-only aggregate: {e}", r.window)),
                        }
                    }
                    reports.push(r);
                    // A retried window can be reported after newer ones; the validator applies them in order.
                    let validated = validator.catch_up(&reports).await;
                    if let Err(e) = validated {
                        error = Some(sim_err(format!("the simulated validator: {e}")));
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    error = Some(sim_err(format!("no window report within {deadline:?}")));
                    break;
                }
            }
        }
        let metrics_text = match &listening {
            Some((addr, _)) => fetch_metrics(*addr).await.unwrap_or_default(),
            None => String::new(),
        };
        let _ = stop_tx.send(true);
        (reports, metrics_text, error, agreement, listening)
    };
    let (daemon_result, (mut reports, metrics_text, collect_error, honest_agreement, listening)) =
        tokio::join!(daemon, collect);
    reports.sort_by_key(|r| r.window);
    let error = match (daemon_result, collect_error) {
        (Err(e), _) => Some(SimError::Daemon(e)),
        (Ok(()), Some(e)) => Some(e),
        (Ok(()), None) if reports.len() < options.windows as usize => Some(sim_err(format!(
            "the daemon stopped after {} of {} windows",
            reports.len(),
            options.windows
        ))),
        (Ok(()), None) => None,
    };
    let outcome = SimOutcome {
        data_dir: network.data_dir.clone(),
        first_window: first,
        reports,
        faults: (*network.faults).clone(),
        output,
        peer_buckets: network.peer_buckets.clone(),
        metrics_text,
        validator_dir: validator.dir.clone(),
        honest_agreement,
    };
    for task in [outage, replace].into_iter().flatten() {
        task.abort();
    }
    shards.lock().unwrap_or_else(|p| p.into_inner()).stop_all();
    if error.is_some() {
        network.abort().await;
    } else {
        network.stop().await;
    }
    if options.verbose {
        print_table(&outcome);
    }
    if options.linger
        && let Some((addr, status)) = listening
    {
        linger(addr, status).await?;
    }
    match error {
        Some(e) => {
            say(format!("sim: stopped early: {e}"));
            Err(e)
        }
        None => Ok(outcome),
    }
}

/// Serves the stopped daemon's status page again on `addr` until SIGINT or SIGTERM.
async fn linger(addr: SocketAddr, status: Arc<aggregator_daemon::status::Status>) -> Result<(), SimError> {
    let (bound, task) = aggregator_daemon::status::serve(addr, status).await?;
    tracing::info!(
        target: "sim",
        "finished; the status page stays at http://{bound}/ until Ctrl-C (SIGINT) or SIGTERM"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(sim_err)?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    task.abort();
    Ok(())
}

/// The fraction of the stored aggregate's sign bits for report `r`'s window that equal those of the aggregate of the
/// honest miners it aggregated, alone (recomputed from the miners' deterministic uploads).
async fn honest_agreement(
    network: &Network,
    miners: &Arc<adversary::Miners>,
    r: &WindowReport,
) -> Result<f64, SimError> {
    use object_store::ObjectStoreExt;
    let model = Arc::new(ModelSpec::load(&network.options.model).map_err(sim_err)?);
    let store = Clients::new(ClientSettings::default()).get(&network.output)?;
    let key = object_store::path::Path::from(keys::aggregate(r.window, VERSION));
    let bytes = store.get(&key).await.map_err(sim_err)?.bytes().await.map_err(sim_err)?;
    let honest: Vec<u16> = r.aggregated.iter().copied().filter(|u| miners.honest(*u)).collect();
    let (miners, w) = (miners.clone(), r.window);
    tokio::task::spawn_blocking(move || {
        let stored = aggregator_codec::Aggregate::read(&bytes, Some(&model), &aggregator_codec::Limits::default())
            .map_err(sim_err)?;
        let cpu = Cpu::new();
        let inputs = honest
            .iter()
            .map(|&uid| {
                let u = miners.upload(&model, &cpu, uid, w)?;
                Ok((uid, aggregator_window::PeerInput::<String>::valid(u.gradient)))
            })
            .collect::<Result<Vec<_>, SimError>>()?;
        let reference = aggregator_window::aggregate_window(&model, &cpu, w as i64, VERSION, &inputs, String::new())
            .map_err(sim_err)?
            .file
            .ok_or_else(|| sim_err("no honest miner was aggregated"))?;
        let (compared, agreeing) = aggregator_window::sign_agreement(&model, &stored, &reference);
        Ok(agreeing as f64 / compared.max(1) as f64)
    })
    .await
    .map_err(sim_err)?
}

/// `GET /metrics` over plain HTTP/1.0 (the simulator's own check; a tiny client, not worth a dependency).
pub async fn fetch_metrics(addr: SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await?;
    let mut out = Vec::new();
    s.take(16 << 20).read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).to_string();
    Ok(text.split_once("\r\n\r\n").map_or(text.clone(), |(_, b)| b.to_string()))
}

fn print_table(o: &SimOutcome) {
    println!(
        "{:>8} {:>14} {:>8} {:>10} {:>8}  {:>9} {:>10} {:>8} {:>12} {:>12} {:>8}  skipped (uid: reason)",
        "window",
        "result",
        "selected",
        "aggregated",
        "skipped",
        "gather s",
        "process s",
        "put s",
        "output bytes",
        "sha256",
        "honest"
    );
    let mut worst = Duration::ZERO;
    for r in &o.reports {
        let total = r.gather + r.process + r.put;
        worst = worst.max(total);
        let skipped: Vec<String> = r
            .skipped
            .iter()
            .map(|(u, why)| format!("{u}: {}", why.kind()))
            .collect();
        let sha = r.output_sha256.as_deref().map_or("-", |s| &s[..12.min(s.len())]);
        let honest = o
            .honest_agreement
            .get(&r.window)
            .map_or("-".to_string(), |f| format!("{f:.4}"));
        println!(
            "{:>8} {:>14} {:>8} {:>10} {:>8}  {:>9.2} {:>10.2} {:>8.2} {:>12} {:>12} {:>8}  {}",
            r.window,
            r.result.label(),
            r.selected.len(),
            r.aggregated.len(),
            r.skipped.len(),
            r.gather.as_secs_f64(),
            r.process.as_secs_f64(),
            r.put.as_secs_f64(),
            r.output_bytes,
            sha,
            honest,
            skipped.join(", ")
        );
    }
    let stored = o.reports.iter().filter(|r| r.result == WindowResult::Stored).count();
    println!(
        "summary: {} windows, {stored} stored, {} injected faults; slowest window {:.2} s (gather + process + put); outputs in {}",
        o.reports.len(),
        o.faults.len(),
        worst.as_secs_f64(),
        o.data_dir.display()
    );
    if let Some(r) = o.reports.iter().rev().find(|r| r.receipt.is_some()) {
        println!(
            "verify a window from its receipt: aggregator replay --window {} --store {} --bucket {}",
            r.window, o.output.endpoint, o.output.name
        );
    }
}

/// The simulated leader validator (uid 0): keeps a model, applies each window's aggregate as it appears (stepping
/// the schedule for missing windows too), posts `debug-{w}-0-v{V}.pt` and keeps a checkpoint per window.
struct Validator {
    ckpt: Checkpoint,
    dir: PathBuf,
    model: Arc<ModelSpec>,
    schedule: Schedule,
    output: Arc<dyn object_store::ObjectStore>,
    leader: Arc<dyn object_store::ObjectStore>,
    first: u64,
    lose: Vec<u64>,
}

impl Validator {
    async fn new(network: &Network, options: &SimOptions) -> Result<Self, SimError> {
        let model = Arc::new(ModelSpec::load(&options.model).map_err(sim_err)?);
        let dir = network.data_dir.join("validator");
        std::fs::create_dir_all(&dir).map_err(sim_err)?;
        let first = network.first_window;
        let ckpt = Checkpoint::init(&model, options.seed, first - 1, first - 1);
        // The initial model, and one per window after it (small models only: the checkpoints are whole models).
        if model.numel() <= LARGE_MODEL {
            ckpt.save(&dir.join(format!("checkpoint-{}.safetensors", first - 1)), &model)
                .map_err(sim_err)?;
        }
        let clients = Clients::new(ClientSettings::default());
        // The leader's bucket, with the writer credentials the output bucket has.
        let leader_bucket = Bucket {
            name: bucket_name(LEADER_UID),
            ..network.output.clone()
        };
        Ok(Self {
            ckpt,
            dir,
            model,
            schedule: Schedule::default(),
            output: clients.get(&network.output)?,
            leader: clients.get(&leader_bucket)?,
            first,
            lose: options.lose.clone(),
        })
    }

    /// Applies every reported window that follows the last applied one, in order.
    async fn catch_up(&mut self, reports: &[WindowReport]) -> Result<(), SimError> {
        while let Some(r) = reports.iter().find(|r| r.window == self.ckpt.window + 1) {
            self.on_window(r).await?;
        }
        Ok(())
    }

    async fn on_window(&mut self, r: &WindowReport) -> Result<(), SimError> {
        use object_store::ObjectStoreExt;
        let w = r.window;
        if w != self.ckpt.window + 1 {
            return Ok(());
        }
        let key = object_store::path::Path::from(keys::aggregate(w, VERSION));
        if self.lose.contains(&(w - self.first)) {
            let _ = self.output.delete(&key).await;
        }
        let lr = self.schedule.lr_at(Schedule::step_of(w, self.ckpt.start_window));
        match self.output.get(&key).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(sim_err)?;
                let agg =
                    aggregator_codec::Aggregate::read(&bytes, Some(&self.model), &aggregator_codec::Limits::default())
                        .map_err(sim_err)?;
                apply_aggregate(&mut self.ckpt, &agg, lr, self.schedule.weight_decay);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(sim_err(e)),
        }
        self.ckpt.window = w;
        let debug = aggregator_codec::DebugDict {
            values: self
                .ckpt
                .params
                .iter()
                .filter(|(_, v)| v.len() >= 2)
                .map(|(n, v)| (n.clone(), vec![v[0] as f64, v[1] as f64]))
                .collect(),
            successful_peers: None,
            skipped_peers: None,
            global_step: 0,
        };
        let bytes = debug.to_bytes().map_err(sim_err)?;
        put(
            self.leader.as_ref(),
            &keys::debug(w, LEADER_UID, VERSION),
            bytes.into(),
            &PutOptions::default(),
        )
        .await?;
        if self.model.numel() <= LARGE_MODEL {
            self.ckpt
                .save(&self.dir.join(format!("checkpoint-{w}.safetensors")), &self.model)
                .map_err(sim_err)?;
        }
        Ok(())
    }
}
