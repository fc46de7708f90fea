//! The daemon's configuration: one type, [`DaemonConfig`], from which the TOML keys (serde), the flags and the
//! environment variables (clap) all derive, so that a key cannot exist in one form only. Precedence: flag >
//! environment > file > default ([`ConfigArgs::apply`] lays the command line over the file). Templar's
//! `R2_AGGREGATOR_*` names set the output bucket. The `device` key's flag is the binary's global `--device`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aggregator_kernels::Device;
use aggregator_policy::PolicyKind;
use aggregator_store::{Bucket, Endpoint};
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::DaemonError;

/// Everything the daemon needs to run.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Subtensor WebSocket endpoint.
    #[arg(long, env = "AGGREGATOR_CHAIN_URL", required = false)]
    pub chain_url: String,
    /// The subnet.
    #[arg(long, env = "AGGREGATOR_NETUID", required = false)]
    pub netuid: u16,
    /// Blocks per window (Templar: 7).
    #[arg(long, env = "AGGREGATOR_BLOCKS_PER_WINDOW", required = false)]
    pub blocks_per_window: u32,
    /// Templar version in object names (`aggregator-{w}-v{V}.pt`). Its flag is `--templar-version` (`--version`
    /// prints the server's own).
    #[arg(long = "templar-version", env = "AGGREGATOR_TEMPLAR_VERSION", required = false)]
    pub version: String,
    /// Model preset (`tiny`, `small`, `templar-1b`) or a model JSON file.
    #[arg(long, env = "AGGREGATOR_MODEL", required = false)]
    pub model: String,
    /// Where the last processed window and the policies' state are kept.
    #[arg(long, env = "AGGREGATOR_STATE_DIR", required = false)]
    pub state_dir: PathBuf,
    /// At most this many missed windows are backfilled after a restart or a stall (the newest ones).
    #[arg(long, env = "AGGREGATOR_MAX_BACKFILL", required = false)]
    pub max_backfill: u64,
    /// Aggregates older than this many windows are deleted from the output bucket (Templar: 100).
    #[arg(long, env = "AGGREGATOR_RETENTION_WINDOWS", required = false)]
    pub retention_windows: u64,
    /// Also copy each aggregated peer file into the output bucket (`inputs/{w}/gradient-{w}-{uid}-v{V}.pt`,
    /// deleted with its window by retention), so that `aggregator replay` can check a window after its miners
    /// delete their files. Off by default: it doubles the window's writes.
    #[arg(long, env = "AGGREGATOR_ARCHIVE_INPUTS", required = false, action = ArgAction::Set)]
    pub archive_inputs: bool,
    /// Memory for one window's data, in MiB (0: off, every peer's file is held whole). Set, the window reads each
    /// peer's file by ranges and processes the model in groups of parameters whose data fit, uploading the output
    /// as it is made (same output bytes; see ARCHITECTURE.md, "One window"). It covers the window's data and buffers, with 256 MiB
    /// kept for the process itself and the upload's parts (a budget below that makes each parameter a group of its
    /// own). Not with `archive_inputs` or the shadow aggregate (they need whole files).
    #[arg(long, env = "AGGREGATOR_MEMORY_BUDGET_MIB", required = false)]
    pub memory_budget_mib: u64,
    /// Processes sharing each window (1: this one alone). Above 1, each judges and aggregates a range of the model's
    /// parameters and puts its parts of one multipart upload; shard 0 reads the chain, runs the policies,
    /// coordinates through objects under `shards/` in the output bucket, and writes the receipt (ARCHITECTURE.md,
    /// "Shards"). Every shard runs with the same configuration but `shard_index`; the output bucket must be
    /// S3-compatible; each shard's data stay within `memory_budget_mib` (4096 when 0). Not with `archive_inputs` or
    /// the shadow aggregate.
    #[arg(long, env = "AGGREGATOR_SHARDS", required = false)]
    pub shards: u32,
    /// This process's shard, `0..shards` (0 coordinates). Unset: the ordinal that ends the host name
    /// (`aggregator-2` is shard 2), as a StatefulSet names its pods.
    #[arg(long, env = "AGGREGATOR_SHARD_INDEX", required = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_index: Option<u32>,
    /// Bound in seconds on each wait for another shard's step (a plan, a judgement, parts), beyond the gather's
    /// timeout (a step may wait that long for a peer's upload). A shard that takes longer, or is gone, fails the
    /// attempt: the upload is aborted and the window retried.
    #[arg(long, env = "AGGREGATOR_SHARD_WAIT_S", required = false)]
    pub shard_wait_s: f64,
    /// Where peers' buckets live: empty for R2 (the commitment's account), an `http(s)://` S3 URL, or a local
    /// directory (`file:///path` or a plain path) for self-hosted networks and the simulator.
    #[arg(long, env = "AGGREGATOR_PEER_ENDPOINT", required = false)]
    pub peer_endpoint: String,
    /// The output bucket (else `R2_AGGREGATOR_*`).
    #[command(flatten)]
    pub output: OutputBucket,
    /// Gathering.
    #[command(flatten)]
    pub gather: GatherConfig,
    /// Policy components and their settings.
    #[command(flatten)]
    pub policy: PolicyFiles,
    /// Address of the status endpoint: `/metrics`, `/healthz`, `/readyz`, the status page `/` and `/api/windows`
    /// (`HOST:PORT`, a host name such as `localhost:9100`, or `:PORT` for every interface; empty: off).
    #[arg(long, env = "AGGREGATOR_METRICS", required = false)]
    pub metrics: String,
    /// When `/healthz` calls the chain stale.
    #[command(flatten)]
    pub health: HealthConfig,
    /// Recent windows kept for the status page and `/api/windows`.
    #[arg(long, env = "AGGREGATOR_STATUS_WINDOWS", required = false)]
    pub status_windows: usize,
    /// Compiled-policy cache directory (empty: `state_dir/policy-cache`).
    #[arg(long, env = "AGGREGATOR_POLICY_CACHE", required = false)]
    pub policy_cache: String,
    /// Numeric backend: `cpu`, `wgpu`, `cuda` or `auto` (CUDA when present, else the CPU). The binary opens it;
    /// its flag and variable are the binary's global `--device` and `AGGREGATOR_DEVICE`.
    #[arg(skip)]
    #[serde(with = "text")]
    pub device: Device,
    /// Bound on a window's chain stage in seconds: `Timestamp::Now`, metagraph, commitments and the leader's posted
    /// peer lists together. A stage that takes longer fails the window, which is retried.
    #[arg(long, env = "AGGREGATOR_CHAIN_TIMEOUT_S", required = false)]
    pub chain_timeout_s: f64,
    /// Bound in seconds on each call to the output bucket (the existing-aggregate check, the put, retention) and on
    /// reading the leader's posted lists. A call that takes longer fails the window, which is retried.
    #[arg(long, env = "AGGREGATOR_STORAGE_TIMEOUT_S", required = false)]
    pub storage_timeout_s: f64,
}

/// Largest `blocks_per_window` accepted (Templar: 7).
pub const MAX_BLOCKS_PER_WINDOW: u32 = 100_000;
/// Most shards accepted.
pub const MAX_SHARDS: u32 = 64;
/// Largest `max_backfill` accepted.
pub const MAX_BACKFILL: u64 = 10_000;

/// The output bucket.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct OutputBucket {
    /// Output bucket endpoint: `r2:ACCOUNT`, an `http(s)://` S3 URL, or a local directory; empty: from
    /// `R2_AGGREGATOR_*`.
    #[arg(
        id = "output_endpoint",
        long = "output-endpoint",
        env = "AGGREGATOR_OUTPUT_ENDPOINT",
        required = false
    )]
    pub endpoint: String,
    /// Output bucket name.
    #[arg(
        id = "output_name",
        long = "output-name",
        env = "AGGREGATOR_OUTPUT_NAME",
        required = false
    )]
    pub name: String,
    /// Output bucket write access key id.
    #[arg(
        id = "output_access_key_id",
        long = "output-access-key-id",
        env = "AGGREGATOR_OUTPUT_ACCESS_KEY_ID",
        required = false
    )]
    pub access_key_id: String,
    /// Output bucket write secret (prefer the environment or the file).
    #[arg(
        id = "output_secret",
        long = "output-secret",
        env = "AGGREGATOR_OUTPUT_SECRET",
        hide_env_values = true,
        required = false
    )]
    pub secret: String,
}

/// Gathering settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct GatherConfig {
    /// Per-peer gather time limit in seconds.
    #[arg(
        id = "gather_timeout_s",
        long = "gather-timeout-s",
        env = "AGGREGATOR_GATHER_TIMEOUT_S",
        required = false
    )]
    pub timeout_s: f64,
    /// Peers fetched at once.
    #[arg(
        id = "gather_concurrency",
        long = "gather-concurrency",
        env = "AGGREGATOR_GATHER_CONCURRENCY",
        required = false
    )]
    pub concurrency: usize,
}

impl Default for GatherConfig {
    fn default() -> Self {
        Self {
            timeout_s: 15.0,
            concurrency: 15,
        }
    }
}

/// When `/healthz` (and so `/readyz`) calls the chain stale: no head for `stale_blocks` block times, the block time
/// being the one observed (the median interval of recent heads), or `block_time_s` until enough heads were seen.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Unhealthy after this many block times without a head (at least 5 s).
    #[arg(
        id = "health_stale_blocks",
        long = "health-stale-blocks",
        env = "AGGREGATOR_HEALTH_STALE_BLOCKS",
        required = false
    )]
    pub stale_blocks: u32,
    /// The block time assumed until it is observed, seconds (Bittensor: 12).
    #[arg(
        id = "health_block_time_s",
        long = "health-block-time-s",
        env = "AGGREGATOR_HEALTH_BLOCK_TIME_S",
        required = false
    )]
    pub block_time_s: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            stale_blocks: 5,
            block_time_s: 12.0,
        }
    }
}

/// Policy components (empty: the embedded `templar-default`) and the settings passed to each call.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct PolicyFiles {
    /// The component per policy kind, one key per kind named as [`PolicyKind::key`] (`peer_selection = "x.wasm"`;
    /// empty: the embedded default). Any other key in `[policy]` is an error naming it.
    #[serde(flatten)]
    pub components: Components,
    /// `key = "value"` settings (e.g. `time_window_delta_seconds`, `peer_replacement_frequency`).
    pub settings: BTreeMap<String, String>,
    /// Call limits per policy kind (`[policy.limits.peer_selection] memory_mib = 256`), for the components serving
    /// that kind (active, fallbacks, shadow); the others keep the defaults. What a Python component needs.
    pub limits: BTreeMap<String, KindLimits>,
    /// Shadow candidates: run beside the active policy on its input every window, compared and recorded, never
    /// used.
    pub shadow: ShadowFiles,
    /// Also compute, for the peer-selection shadow candidate, the aggregate its selection would have produced (its
    /// extra peers fetched within the same limits) and report the fraction of sign bits that agree with the stored
    /// aggregate. The shadow aggregate is never written.
    pub shadow_aggregate: bool,
}

/// One policy kind's call limits; an unset field keeps the default (100 000 000 fuel, 200 ms, 64 MiB).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KindLimits {
    /// Fuel per call (a deterministic instruction budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Wall-clock deadline per call, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Largest linear memory of a call, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
}

/// Adds `KIND.FIELD=VALUE` pairs (`--policy-limit`) to per-kind limits; an error names the pair. (The kind is
/// checked by [`DaemonConfig::validate`].)
pub fn add_limits(limits: &mut BTreeMap<String, KindLimits>, pairs: &[(String, String)]) -> Result<(), String> {
    for (path, value) in pairs {
        let (kind, field) = path
            .split_once('.')
            .ok_or_else(|| format!("{path}={value}: expected KIND.FIELD=VALUE"))?;
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{path}={value}: the value is not a whole number"))?;
        let entry = limits.entry(kind.to_string()).or_default();
        match field {
            "fuel" => entry.fuel = Some(n),
            "deadline_ms" => entry.deadline_ms = Some(n),
            "memory_mib" => entry.memory_mib = Some(n),
            _ => return Err(format!("{path}: the field is not fuel, deadline_ms or memory_mib")),
        }
    }
    Ok(())
}

/// Largest limits a configuration may give a policy kind: 10^11 fuel, 10 s, 4 GiB.
pub const MAX_KIND_LIMITS: (u64, u64, u64) = (100_000_000_000, 10_000, 4096);

impl KindLimits {
    /// These limits over `base`.
    pub fn apply(&self, base: aggregator_policy::PolicyLimits) -> aggregator_policy::PolicyLimits {
        aggregator_policy::PolicyLimits {
            fuel: self.fuel.unwrap_or(base.fuel),
            deadline: self.deadline_ms.map_or(base.deadline, Duration::from_millis),
            memory_bytes: self.memory_mib.map_or(base.memory_bytes, |m| (m as usize) << 20),
            log_lines: base.log_lines,
        }
    }
}

/// The shadow candidate per policy kind the daemon calls each window (catch-up verification runs in `aggregator
/// catchup`, not in the daemon: try a verifier there, or with `aggregator plugin run --receipt`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowFiles {
    /// Peer-selection candidate (`.wasm`; empty: none).
    pub peer_selection: String,
    /// Time-bounds candidate (`.wasm`; empty: none).
    pub time_bounds: String,
}

impl ShadowFiles {
    /// The configured candidates.
    pub fn iter(&self) -> impl Iterator<Item = (PolicyKind, &str)> {
        [
            (PolicyKind::PeerSelection, self.peer_selection.as_str()),
            (PolicyKind::TimeBounds, self.time_bounds.as_str()),
        ]
        .into_iter()
        .filter(|(_, f)| !f.is_empty())
    }
}

/// `--policy-setting KEY=VALUE` (repeatable; `AGGREGATOR_POLICY_SETTINGS` takes `k=v,k2=v2`) and one flag per
/// policy kind (`--peer-selection FILE`, `AGGREGATOR_PEER_SELECTION`), generated from [`PolicyKind::ALL`]; flags
/// add to the file's settings and replace its components.
impl Args for PolicyFiles {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd.arg(
            Arg::new("policy_settings")
                .long("policy-setting")
                .value_name("KEY=VALUE")
                .env("AGGREGATOR_POLICY_SETTINGS")
                .value_delimiter(',')
                .action(ArgAction::Append)
                .value_parser(parse_setting)
                .help("Policy setting KEY=VALUE (repeatable), e.g. time_window_delta_seconds=10"),
        );
        let cmd = cmd
            .arg(
                Arg::new("policy_limits")
                    .long("policy-limit")
                    .value_name("KIND.FIELD=VALUE")
                    .env("AGGREGATOR_POLICY_LIMITS")
                    .value_delimiter(',')
                    .action(ArgAction::Append)
                    .value_parser(parse_setting)
                    .help("Call limit of one policy kind (repeatable), e.g. peer_selection.memory_mib=256"),
            )
            .arg(
                Arg::new("shadow_peer_selection")
                    .long("shadow-peer-selection")
                    .value_name("FILE")
                    .env("AGGREGATOR_SHADOW_PEER_SELECTION")
                    .help("A peer-selection shadow candidate (.wasm): run and compared every window, never used"),
            )
            .arg(
                Arg::new("shadow_time_bounds")
                    .long("shadow-time-bounds")
                    .value_name("FILE")
                    .env("AGGREGATOR_SHADOW_TIME_BOUNDS")
                    .help("A time-bounds shadow candidate (.wasm): run and compared every window, never used"),
            )
            .arg(
                Arg::new("shadow_aggregate")
                    .long("shadow-aggregate")
                    .value_name("BOOL")
                    .env("AGGREGATOR_SHADOW_AGGREGATE")
                    .value_parser(clap::value_parser!(bool))
                    .help("Also compute the shadow selection's aggregate and report its sign agreement"),
            );
        PolicyKind::ALL.into_iter().fold(cmd, |cmd, kind| {
            cmd.arg(
                Arg::new(kind.key())
                    .long(kind.interface())
                    .value_name("FILE")
                    .env(format!("AGGREGATOR_{}", kind.key().to_uppercase()))
                    .help(format!(
                        "The {} policy component (.wasm; default: embedded)",
                        kind.interface()
                    )),
            )
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for PolicyFiles {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut p = PolicyFiles::default();
        p.update_from_arg_matches(m)?;
        Ok(p)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(pairs) = m.get_many::<(String, String)>("policy_settings") {
            self.settings.extend(pairs.cloned());
        }
        for kind in PolicyKind::ALL {
            if let Some(file) = m.get_one::<String>(&kind.key()) {
                self.components.set(kind, file.clone());
            }
        }
        if let Some(pairs) = m.get_many::<(String, String)>("policy_limits") {
            let pairs: Vec<(String, String)> = pairs.cloned().collect();
            add_limits(&mut self.limits, &pairs).map_err(|e| {
                clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("--policy-limit {e}\n"))
            })?;
        }
        if let Some(f) = m.get_one::<String>("shadow_peer_selection") {
            self.shadow.peer_selection = f.clone();
        }
        if let Some(f) = m.get_one::<String>("shadow_time_bounds") {
            self.shadow.time_bounds = f.clone();
        }
        if let Some(b) = m.get_one::<bool>("shadow_aggregate") {
            self.shadow_aggregate = *b;
        }
        Ok(())
    }
}

/// A policy setting `KEY=VALUE` as the command line gives it (`--policy-setting`), both sides trimmed.
pub fn parse_setting(kv: &str) -> Result<(String, String), String> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| format!("{kv:?}: expected KEY=VALUE"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// The command line's layer of the configuration: the flags and environment variables actually given (nothing for
/// an absent one, so that the file's value stays), laid over a configuration by [`ConfigArgs::apply`]. Its flags
/// are [`DaemonConfig`]'s own (clap derives them from the same fields serde reads from the file).
#[derive(Debug, Clone, Default)]
pub struct ConfigArgs(ArgMatches);

impl FromArgMatches for ConfigArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(m.clone()))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        self.0 = m.clone();
        Ok(())
    }
}

impl Args for ConfigArgs {
    fn augment_args(cmd: Command) -> Command {
        DaemonConfig::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        DaemonConfig::augment_args_for_update(cmd)
    }
}

impl ConfigArgs {
    /// Whether the key with clap id `id` was given by flag or environment variable.
    pub fn is_set(&self, id: &str) -> bool {
        matches!(
            self.0
                .try_get_raw(id)
                .ok()
                .flatten()
                .and_then(|_| self.0.value_source(id)),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        )
    }

    /// Sets every key given by flag or environment variable in `config`; the others keep their value.
    pub fn apply(&self, config: &mut DaemonConfig) -> Result<(), DaemonError> {
        config
            .update_from_arg_matches(&self.0)
            .map_err(|e| DaemonError::Config(e.to_string()))
    }
}

/// Serde for a key whose type parses itself (`FromStr`) and prints itself (`Display`), as a TOML string.
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The component file per policy kind: every kind is a key (an absent one is empty), so that adding a kind to the
/// policy crate adds its key here, its flag and its environment variable without a change in this crate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Components(BTreeMap<PolicyKind, String>);

impl Components {
    /// The kinds with a configured file, and the file.
    pub fn iter(&self) -> impl Iterator<Item = (PolicyKind, &str)> {
        self.0.iter().map(|(k, f)| (*k, f.as_str()))
    }

    /// The file for `kind` (empty: the embedded default).
    pub fn get(&self, kind: PolicyKind) -> &str {
        self.0.get(&kind).map_or("", String::as_str)
    }

    /// Sets the file for `kind` (empty: the embedded default; the entry is removed, so that equal configurations
    /// compare equal however they were written).
    pub fn set(&mut self, kind: PolicyKind, file: impl Into<String>) {
        let file = file.into();
        if file.is_empty() {
            self.0.remove(&kind);
        } else {
            self.0.insert(kind, file);
        }
    }
}

impl Serialize for Components {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(PolicyKind::ALL.len()))?;
        for kind in PolicyKind::ALL {
            m.serialize_entry(&kind.key(), self.get(kind))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Components {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (key, file) in raw {
            let kind = PolicyKind::from_key(&key).ok_or_else(|| {
                let known: Vec<String> = PolicyKind::ALL.iter().map(|k| k.key()).collect();
                serde::de::Error::custom(format!(
                    "unknown field `{key}` in [policy], expected `settings` or one of {}",
                    known.join(", ")
                ))
            })?;
            if !file.is_empty() {
                out.insert(kind, file);
            }
        }
        Ok(Components(out))
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            chain_url: "ws://127.0.0.1:9944".into(),
            netuid: 3,
            blocks_per_window: 7,
            version: "0.2.73".into(),
            model: "templar-1b".into(),
            state_dir: PathBuf::from("aggregator-state"),
            max_backfill: 20,
            retention_windows: 100,
            peer_endpoint: String::new(),
            output: OutputBucket::default(),
            gather: GatherConfig::default(),
            policy: PolicyFiles::default(),
            metrics: String::new(),
            health: HealthConfig::default(),
            status_windows: 200,
            policy_cache: String::new(),
            device: Device::Auto,
            chain_timeout_s: 30.0,
            storage_timeout_s: 120.0,
            archive_inputs: false,
            memory_budget_mib: 0,
            shards: 1,
            shard_index: None,
            shard_wait_s: 120.0,
        }
    }
}

/// Parses an endpoint string: `r2:ACCOUNT`, `http(s)://HOST[:PORT]`, `file://PATH` or a directory path. Anything
/// else that names a scheme (`s3://bucket`, `ftp://…`) or looks like `HOST:PORT` is an error, never a directory.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    s.parse()
}

impl DaemonConfig {
    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Parses a TOML file's text; unknown keys are an error naming them.
    pub fn from_toml(text: &str) -> Result<Self, DaemonError> {
        toml::from_str(text).map_err(|e| DaemonError::Config(e.to_string()))
    }

    /// Checks every key's value beyond its type, naming the key. (Policy settings are checked by running the
    /// policies on their golden inputs with them, when the daemon loads them.)
    pub fn validate(&self) -> Result<(), DaemonError> {
        let bad = |m: String| Err(DaemonError::Config(m));
        if !(self.chain_url.starts_with("ws://") || self.chain_url.starts_with("wss://")) || self.chain_url.len() < 6 {
            return bad(format!("chain_url {:?} must be a ws:// or wss:// URL", self.chain_url));
        }
        if !(1..=MAX_BLOCKS_PER_WINDOW).contains(&self.blocks_per_window) {
            return bad(format!(
                "blocks_per_window {} must be in 1..={MAX_BLOCKS_PER_WINDOW}",
                self.blocks_per_window
            ));
        }
        let version_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+');
        if self.version.is_empty() || self.version.len() > 64 || !self.version.chars().all(version_char) {
            return bad(format!(
                "version {:?} must be 1 to 64 letters, digits, '.', '_', '-' or '+' (it is part of object names)",
                self.version
            ));
        }
        if self.model.is_empty() {
            return bad("model must name a preset or a model JSON file".into());
        }
        if self.state_dir.as_os_str().is_empty() {
            return bad("state_dir must not be empty".into());
        }
        if !self.peer_endpoint.is_empty() {
            parse_endpoint(&self.peer_endpoint).map_err(|e| DaemonError::Config(format!("peer_endpoint {e}")))?;
        }
        if !self.output.endpoint.is_empty() {
            parse_endpoint(&self.output.endpoint).map_err(|e| DaemonError::Config(format!("output.endpoint {e}")))?;
            if self.output.name.is_empty() {
                return bad("output.name is empty".into());
            }
        }
        for (key, value) in [
            ("gather.timeout_s", self.gather.timeout_s),
            ("chain_timeout_s", self.chain_timeout_s),
            ("storage_timeout_s", self.storage_timeout_s),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= 3600.0) {
                return bad(format!("{key} {value} must be in (0, 3600]"));
            }
        }
        if self.gather.concurrency == 0 || self.gather.concurrency > 1024 {
            return bad(format!(
                "gather.concurrency {} must be in 1..=1024",
                self.gather.concurrency
            ));
        }
        if !(1..=MAX_BACKFILL).contains(&self.max_backfill) {
            return bad(format!(
                "max_backfill {} must be in 1..={MAX_BACKFILL}",
                self.max_backfill
            ));
        }
        if self.retention_windows < self.max_backfill {
            return bad(format!(
                "retention_windows {} must be at least max_backfill {}: a backfilled or retried window's aggregate \
                 would otherwise be deleted by retention",
                self.retention_windows, self.max_backfill
            ));
        }
        if !self.metrics.is_empty() {
            self.metrics_addr()?;
        }
        if !(1..=100_000).contains(&self.health.stale_blocks) {
            return bad(format!(
                "health.stale_blocks {} must be in 1..=100000",
                self.health.stale_blocks
            ));
        }
        if !(self.health.block_time_s.is_finite()
            && self.health.block_time_s > 0.0
            && self.health.block_time_s <= 3600.0)
        {
            return bad(format!(
                "health.block_time_s {} must be in (0, 3600]",
                self.health.block_time_s
            ));
        }
        if !(1..=100_000).contains(&self.status_windows) {
            return bad(format!("status_windows {} must be in 1..=100000", self.status_windows));
        }
        for (key, l) in &self.policy.limits {
            if PolicyKind::from_key(key).is_none() {
                let known: Vec<String> = PolicyKind::ALL.iter().map(|k| k.key()).collect();
                return bad(format!(
                    "policy.limits.{key}: not a policy kind; one of {}",
                    known.join(", ")
                ));
            }
            let (fuel, ms, mib) = MAX_KIND_LIMITS;
            for (field, v, max) in [
                ("fuel", l.fuel, fuel),
                ("deadline_ms", l.deadline_ms, ms),
                ("memory_mib", l.memory_mib, mib),
            ] {
                if let Some(v) = v
                    && !(1..=max).contains(&v)
                {
                    return bad(format!("policy.limits.{key}.{field} {v} must be in 1..={max}"));
                }
            }
        }
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return bad(format!("shards {} must be in 1..={MAX_SHARDS}", self.shards));
        }
        if let Some(i) = self.shard_index
            && i >= self.shards
        {
            return bad(format!("shard_index {i} must be below shards ({})", self.shards));
        }
        if !(self.shard_wait_s > 0.0 && self.shard_wait_s <= 86_400.0) {
            return bad(format!("shard_wait_s {} must be in (0, 86400]", self.shard_wait_s));
        }
        if self.shards > 1 && (self.archive_inputs || self.policy.shadow_aggregate) {
            return bad(
                "shards: archive_inputs and policy.shadow_aggregate need every peer's file whole in one process; turn \
                 them off or use one shard"
                    .into(),
            );
        }
        if self.memory_budget_mib > 0 && (self.archive_inputs || self.policy.shadow_aggregate) {
            return bad(
                "memory_budget_mib: archive_inputs and policy.shadow_aggregate need every peer's file whole; turn \
                 them off or the budget off (0)"
                    .into(),
            );
        }
        if self.policy.shadow_aggregate && self.policy.shadow.peer_selection.is_empty() {
            return bad("policy.shadow_aggregate needs a peer-selection shadow (policy.shadow.peer_selection)".into());
        }
        Ok(())
    }

    /// The status endpoint's address, if enabled: `HOST:PORT` with an IP or a host name (resolved; the first
    /// address), or `:PORT` for every interface (`0.0.0.0:PORT`).
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, DaemonError> {
        if self.metrics.is_empty() {
            return Ok(None);
        }
        let bad = |why: String| DaemonError::Config(format!("metrics {:?}: {why}", self.metrics));
        let text = match self.metrics.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => self.metrics.clone(),
        };
        if let Ok(a) = text.parse() {
            return Ok(Some(a));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOST:PORT or :PORT".into()))?;
        let port: u16 = port.parse().map_err(|e| bad(format!("port {port:?}: {e}")))?;
        use std::net::ToSocketAddrs;
        let mut addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| bad(format!("host {host:?}: {e}")))?;
        addrs
            .next()
            .map(Some)
            .ok_or_else(|| bad(format!("host {host:?} has no address")))
    }

    /// The peer endpoint override (`validate` has checked it parses).
    pub fn peer_endpoint(&self) -> Option<Endpoint> {
        (!self.peer_endpoint.is_empty())
            .then(|| parse_endpoint(&self.peer_endpoint).ok())
            .flatten()
    }

    /// The output bucket: from `[output]` if its endpoint is set, else Templar's `R2_AGGREGATOR_*` variables
    /// (`env` reads one).
    pub fn output_bucket(&self, env: impl Fn(&str) -> Option<String>) -> Result<Bucket, DaemonError> {
        if self.output.endpoint.is_empty() {
            return Bucket::aggregator_from_env(env).map_err(|e| {
                DaemonError::Config(format!(
                    "no [output] endpoint and the R2_AGGREGATOR_* variables are incomplete: {e}"
                ))
            });
        }
        if self.output.name.is_empty() {
            return Err(DaemonError::Config("output.name is empty".into()));
        }
        Ok(Bucket {
            endpoint: parse_endpoint(&self.output.endpoint)
                .map_err(|e| DaemonError::Config(format!("output.endpoint {e}")))?,
            name: self.output.name.clone(),
            access_key_id: self.output.access_key_id.clone(),
            secret: self.output.secret.clone(),
        })
    }

    /// The memory budget in bytes, when one is set (`memory_budget_mib`).
    pub fn memory_budget(&self) -> Option<u64> {
        (self.memory_budget_mib > 0).then_some(self.memory_budget_mib << 20)
    }

    /// The shards sharing each window, when more than one.
    pub fn shards(&self) -> Option<usize> {
        (self.shards > 1).then_some(self.shards as usize)
    }

    /// This process's shard: `shard_index`, else the ordinal ending `hostname` (a StatefulSet's `name-N`).
    pub fn shard_index(&self, hostname: Option<&str>) -> Result<usize, DaemonError> {
        if let Some(i) = self.shard_index {
            return Ok(i as usize);
        }
        let ordinal = hostname
            .and_then(|h| h.rsplit_once('-'))
            .and_then(|(_, n)| n.parse::<u32>().ok());
        match ordinal {
            Some(i) if i < self.shards => Ok(i as usize),
            Some(i) => Err(DaemonError::Config(format!(
                "shard_index: the host name's ordinal {i} is not below shards ({})",
                self.shards
            ))),
            None => Err(DaemonError::Config(format!(
                "shard_index: unset, and the host name {:?} does not end in `-N` (a StatefulSet pod's ordinal)",
                hostname.unwrap_or("")
            ))),
        }
    }

    /// The bound on each wait for another shard's step.
    pub fn shard_wait(&self) -> Duration {
        Duration::from_secs_f64(self.shard_wait_s)
    }

    /// The per-peer gather limit.
    pub fn gather_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.gather.timeout_s)
    }

    /// The bound on a window's chain stage.
    pub fn chain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.chain_timeout_s)
    }

    /// The bound on each output-bucket call and on the leader's posted lists.
    pub fn storage_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.storage_timeout_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_defaults_and_unknown_keys_named() {
        let c = DaemonConfig::from_toml(
            r#"
            netuid = 5
            model = "tiny"
            [output]
            endpoint = "http://127.0.0.1:8333/"
            name = "agg"
            [policy.settings]
            time_window_delta_seconds = "4"
            "#,
        )
        .unwrap();
        assert_eq!((c.netuid, c.blocks_per_window, c.model.as_str()), (5, 7, "tiny"));
        assert_eq!(
            c.output_bucket(|_| None).unwrap().endpoint,
            Endpoint::Url("http://127.0.0.1:8333".into())
        );
        assert_eq!(c.policy.settings["time_window_delta_seconds"], "4");
        let e = DaemonConfig::from_toml("netuid = 5\nblock_per_window = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("block_per_window"), "{e}");
        assert_eq!(
            DaemonConfig::from_toml("device = \"cuda\"").unwrap().device,
            Device::Cuda
        );
        let e = DaemonConfig::from_toml("device = \"gpu\"").unwrap_err().to_string();
        assert!(
            e.contains("device") && e.contains("\"gpu\" must be one of cpu, wgpu, cuda, auto"),
            "{e}"
        );
        let mut bad = DaemonConfig::default();
        bad.gather.concurrency = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("gather.concurrency"));
        assert!(
            DaemonConfig::default()
                .output_bucket(|_| None)
                .unwrap_err()
                .to_string()
                .contains("R2_AGGREGATOR")
        );
        assert_eq!(DaemonConfig::from_toml(&c.to_toml()).unwrap(), c, "round trip");
        assert_eq!(parse_endpoint("r2:abc"), Ok(Endpoint::R2 { account: "abc".into() }));
        assert_eq!(parse_endpoint("file:///tmp/x"), Ok(Endpoint::Local("/tmp/x".into())));
    }

    #[test]
    fn policy_components_are_one_key_per_kind_and_others_are_named() {
        let c = DaemonConfig::from_toml("[policy]\npeer_selection = \"sel.wasm\"\n").unwrap();
        assert_eq!(c.policy.components.get(PolicyKind::PeerSelection), "sel.wasm");
        assert_eq!(c.policy.components.get(PolicyKind::TimeBounds), "");
        let text = c.to_toml();
        for kind in PolicyKind::ALL {
            assert!(
                text.contains(&format!("{} = ", kind.key())),
                "every kind is a key: {text}"
            );
        }
        assert_eq!(DaemonConfig::from_toml(&text).unwrap(), c, "round trip");
        let e = DaemonConfig::from_toml("[policy]\npeer_selektion = \"x.wasm\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer_selektion") && e.contains("peer_selection"), "{e}");
    }

    #[test]
    fn endpoints_that_are_not_directories_are_refused() {
        assert_eq!(
            parse_endpoint("https://s3.example.com/"),
            Ok(Endpoint::Url("https://s3.example.com".into()))
        );
        assert_eq!(parse_endpoint("./store"), Ok(Endpoint::Local("./store".into())));
        assert_eq!(parse_endpoint("/var/lib/x"), Ok(Endpoint::Local("/var/lib/x".into())));
        for (text, needle) in [
            ("ftp://host/x", "scheme ftp:// is not supported"),
            ("s3://bucket", "scheme s3:// is not supported"),
            ("minio:9000", "HOST:PORT without a scheme"),
            ("localhost:9000/bucket", "HOST:PORT without a scheme"),
            ("http://", "no host"),
            ("file://relative", "absolute path"),
            ("r2:", "R2 account id"),
            ("", "empty"),
        ] {
            let e = parse_endpoint(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn every_key_is_range_checked_and_named() {
        let ok = DaemonConfig {
            output: OutputBucket {
                endpoint: "http://127.0.0.1:1".into(),
                name: "b".into(),
                ..OutputBucket::default()
            },
            ..DaemonConfig::default()
        };
        ok.validate().unwrap();
        type Edit = Box<dyn Fn(&mut DaemonConfig)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("chain_url", Box::new(|c| c.chain_url = "http://x".into())),
            ("blocks_per_window", Box::new(|c| c.blocks_per_window = 0)),
            ("blocks_per_window", Box::new(|c| c.blocks_per_window = u32::MAX)),
            ("version", Box::new(|c| c.version = "0.2.73/../x".into())),
            ("version", Box::new(|c| c.version = String::new())),
            ("model", Box::new(|c| c.model = String::new())),
            ("state_dir", Box::new(|c| c.state_dir = PathBuf::new())),
            ("max_backfill", Box::new(|c| c.max_backfill = 0)),
            ("max_backfill", Box::new(|c| c.max_backfill = u64::MAX)),
            ("retention_windows", Box::new(|c| c.retention_windows = 5)),
            ("peer_endpoint", Box::new(|c| c.peer_endpoint = "s3://bucket".into())),
            ("output.endpoint", Box::new(|c| c.output.endpoint = "ftp://x".into())),
            ("output.name", Box::new(|c| c.output.name = String::new())),
            ("gather.timeout_s", Box::new(|c| c.gather.timeout_s = f64::NAN)),
            ("gather.concurrency", Box::new(|c| c.gather.concurrency = 0)),
            ("chain_timeout_s", Box::new(|c| c.chain_timeout_s = -1.0)),
            ("storage_timeout_s", Box::new(|c| c.storage_timeout_s = 1e9)),
            ("metrics", Box::new(|c| c.metrics = "nine thousand".into())),
        ];
        for (key, edit) in cases {
            let mut c = ok.clone();
            edit(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
