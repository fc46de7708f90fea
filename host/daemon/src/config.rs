//! The daemon's configuration: a TOML file whose every key is also a flag and an environment variable (the binary
//! merges them: flag > environment > file > default). Templar's `R2_AGGREGATOR_*` names set the output bucket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aggregator_store::{Bucket, Endpoint};
use serde::{Deserialize, Serialize};

use crate::DaemonError;

/// Everything the daemon needs to run.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Subtensor WebSocket endpoint.
    pub chain_url: String,
    /// The subnet.
    pub netuid: u16,
    /// Blocks per window (Templar: 7).
    pub blocks_per_window: u32,
    /// Templar version in object names (`aggregator-{w}-v{V}.pt`).
    pub version: String,
    /// Model preset (`tiny`, `small`, `templar-1b`) or a model JSON file.
    pub model: String,
    /// Where the last processed window and the policies' state are kept.
    pub state_dir: PathBuf,
    /// At most this many missed windows are backfilled after a restart or a stall (the newest ones).
    pub max_backfill: u64,
    /// Aggregates older than this many windows are deleted from the output bucket (Templar: 100).
    pub retention_windows: u64,
    /// Where peers' buckets live: empty for R2 (the commitment's account), an `http(s)://` S3 URL, or a local
    /// directory (`file:///path` or a plain path) for self-hosted networks and the simulator.
    pub peer_endpoint: String,
    /// The output bucket (else `R2_AGGREGATOR_*`).
    pub output: OutputBucket,
    /// Gathering.
    pub gather: GatherConfig,
    /// Policy components and their settings.
    pub policy: PolicyFiles,
    /// Prometheus `/metrics` and `/healthz` address (empty: off).
    pub metrics: String,
    /// Compiled-policy cache directory (empty: `state_dir/policy-cache`).
    pub policy_cache: String,
    /// Numeric backend: `cpu`, `wgpu`, `cuda` or `auto` (CUDA when present, else the CPU). The binary opens it.
    pub device: String,
}

/// The values `device` accepts.
pub const DEVICES: [&str; 4] = ["cpu", "wgpu", "cuda", "auto"];

/// The output bucket.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputBucket {
    /// `r2:ACCOUNT`, an `http(s)://` S3 URL, or a local directory; empty: from `R2_AGGREGATOR_*`.
    pub endpoint: String,
    /// Bucket name.
    pub name: String,
    /// Write access key id.
    pub access_key_id: String,
    /// Write secret.
    pub secret: String,
}

/// Gathering settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatherConfig {
    /// Per-peer time limit in seconds.
    pub timeout_s: f64,
    /// Peers fetched at once.
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

/// Policy components (empty: the embedded `templar-default`) and the settings passed to each call.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFiles {
    /// Peer-selection component.
    pub peer_selection: String,
    /// Time-bounds component.
    pub time_bounds: String,
    /// Catch-up verification component.
    pub catchup_verification: String,
    /// `key = "value"` settings (e.g. `time_window_delta_seconds`, `peer_replacement_frequency`).
    pub settings: BTreeMap<String, String>,
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
            policy_cache: String::new(),
            device: "auto".into(),
        }
    }
}

/// Parses an endpoint string: `r2:ACCOUNT`, `http(s)://…`, `file://PATH` or a path.
pub fn parse_endpoint(s: &str) -> Endpoint {
    if let Some(account) = s.strip_prefix("r2:") {
        Endpoint::R2 {
            account: account.to_string(),
        }
    } else if s.starts_with("http://") || s.starts_with("https://") {
        Endpoint::Url(s.trim_end_matches('/').to_string())
    } else {
        Endpoint::Local(PathBuf::from(s.strip_prefix("file://").unwrap_or(s)))
    }
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

    /// Checks values that the types do not.
    pub fn validate(&self) -> Result<(), DaemonError> {
        let bad = |m: String| Err(DaemonError::Config(m));
        if self.blocks_per_window == 0 {
            return bad("blocks_per_window must be at least 1".into());
        }
        if self.version.is_empty() || self.version.contains('/') {
            return bad(format!(
                "version {:?} must be non-empty and contain no '/'",
                self.version
            ));
        }
        if !(self.gather.timeout_s.is_finite() && self.gather.timeout_s > 0.0 && self.gather.timeout_s <= 3600.0) {
            return bad(format!(
                "gather.timeout_s {} must be in (0, 3600]",
                self.gather.timeout_s
            ));
        }
        if self.gather.concurrency == 0 || self.gather.concurrency > 1024 {
            return bad(format!(
                "gather.concurrency {} must be in 1..=1024",
                self.gather.concurrency
            ));
        }
        if self.max_backfill == 0 {
            return bad("max_backfill must be at least 1".into());
        }
        if !self.metrics.is_empty() {
            self.metrics_addr()?;
        }
        if !DEVICES.contains(&self.device.as_str()) {
            return bad(format!(
                "device {:?} must be one of {}",
                self.device,
                DEVICES.join(", ")
            ));
        }
        Ok(())
    }

    /// The metrics address, if enabled.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, DaemonError> {
        if self.metrics.is_empty() {
            return Ok(None);
        }
        self.metrics
            .parse()
            .map(Some)
            .map_err(|e| DaemonError::Config(format!("metrics {:?}: {e}", self.metrics)))
    }

    /// The peer endpoint override.
    pub fn peer_endpoint(&self) -> Option<Endpoint> {
        (!self.peer_endpoint.is_empty()).then(|| parse_endpoint(&self.peer_endpoint))
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
            endpoint: parse_endpoint(&self.output.endpoint),
            name: self.output.name.clone(),
            access_key_id: self.output.access_key_id.clone(),
            secret: self.output.secret.clone(),
        })
    }

    /// The per-peer gather limit.
    pub fn gather_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.gather.timeout_s)
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
        assert_eq!(DaemonConfig::from_toml("device = \"cuda\"").unwrap().device, "cuda");
        let mut bad = DaemonConfig::from_toml("device = \"gpu\"").unwrap();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("device \"gpu\" must be one of cpu, wgpu, cuda, auto"), "{e}");
        bad.device = "auto".into();
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
        assert_eq!(parse_endpoint("r2:abc"), Endpoint::R2 { account: "abc".into() });
        assert_eq!(parse_endpoint("file:///tmp/x"), Endpoint::Local("/tmp/x".into()));
    }
}
