//! The receipt of one window, as stored: plain serde types, `deny_unknown_fields` throughout (a receipt with a field
//! this host does not know is another format, not one to half-read).

use aggregator_policy::{ComponentId, ContributionWeighting, Kind, PeerSelection, TimeBounds};
pub use aggregator_store::FileRecord;
use aggregator_store::{Bucket, Endpoint};
use aggregator_window::evidence::EvidenceOrder;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::SCHEMA_VERSION;

/// Largest receipt read (a 4096-neuron metagraph in the selection input is well under 1 MiB).
pub const MAX_RECEIPT_BYTES: usize = 16 << 20;

/// Why a receipt could not be read.
#[derive(Debug, Error)]
pub enum ReceiptError {
    /// Larger than [`MAX_RECEIPT_BYTES`].
    #[error("{source_name}: {size} bytes, over the receipt limit of {MAX_RECEIPT_BYTES}")]
    TooLarge {
        /// Where it came from.
        source_name: String,
        /// Its size.
        size: usize,
    },
    /// Not JSON of this schema (the error names the line, column and field).
    #[error("{source_name}: not a receipt: {reason}")]
    Invalid {
        /// Where it came from.
        source_name: String,
        /// serde's error.
        reason: String,
    },
    /// Another `schema_version`.
    #[error("{source_name}: schema_version {found}; this host reads version {SCHEMA_VERSION}")]
    Version {
        /// Where it came from.
        source_name: String,
        /// The version found.
        found: u32,
    },
}

/// What produced one stored aggregate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The window.
    pub window: u64,
    /// The run's version `V` in every object name (Templar's `__version__`).
    pub version: String,
    /// The model (preset or file name) the files were checked and aggregated against.
    pub model: String,
    /// The host that wrote it.
    pub host: HostRecord,
    /// The chain data the window used.
    pub chain: ChainRecord,
    /// The policy calls, with their full inputs and decisions.
    pub policies: PolicyRecords,
    /// Each selected peer, in selection (= aggregation) order.
    pub peers: Vec<PeerRecord>,
    /// The numeric backend (`cpu`, `wgpu`, `cuda`): every backend gives the same bits, so this is for the record.
    pub backend: String,
    /// The stored aggregate.
    pub output: OutputRecord,
    /// Stage timings.
    pub timings_ms: Timings,
    /// Shadow trials: the candidates run beside the active policies on their inputs (never used). Absent when no
    /// candidate is configured.
    #[serde(default, skip_serializing_if = "ShadowRecords::is_empty")]
    pub shadow: ShadowRecords,
    /// When the window was split across shards: how. Absent for a window one process made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardsRecord>,
}

/// How a window was split across shards (the output is the same bytes as one process's; this is for the record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsRecord {
    /// The shards that shared the window, shard 0 coordinating.
    pub count: u32,
    /// The attempt that stored the aggregate (0: the first).
    pub attempt: u32,
    /// Rounds of judging (more than 1 when some peer was invalid in one shard's parameters only).
    pub rounds: u32,
    /// Each shard's parameters judged, `[start, end)` model indexes, in shard order.
    pub judging: Vec<[usize; 2]>,
}

/// The window's shadow trials.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowRecords {
    /// The time-bounds candidate's call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_bounds: Option<ShadowCall<TimeBounds>>,
    /// The peer-selection candidate's call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selection: Option<ShadowCall<PeerSelection>>,
    /// With `shadow_aggregate`: the aggregate the candidate's selection would have produced, against the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<ShadowAggregate>,
}

impl ShadowRecords {
    /// Whether no shadow ran.
    pub fn is_empty(&self) -> bool {
        self.time_bounds.is_none() && self.peer_selection.is_none() && self.aggregate.is_none()
    }
}

/// One shadow candidate's call on the active policy's input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct ShadowCall<K: Kind> {
    /// The candidate.
    pub component: ComponentId,
    /// The input it received: the active call's input (settings included), with the candidate's own `state` for a
    /// stateful kind.
    pub input: K::Input,
    /// Its decision, when it made a valid one.
    pub decision: Option<K::Output>,
    /// Why it made none (an error, a trap, a limit, an invalid output).
    pub error: Option<String>,
    /// How its decision compares with the active one.
    pub comparison: Option<aggregator_policy::Comparison>,
    /// Fuel it used.
    pub fuel_used: u64,
}

impl<K: Kind> ShadowCall<K> {
    /// The record of `shadow`, run on `input`.
    pub fn new(input: K::Input, shadow: &aggregator_policy::Shadow<K>) -> Self {
        Self {
            component: shadow.component.clone(),
            input,
            decision: shadow.decision.clone(),
            error: shadow.error.as_ref().map(ToString::to_string),
            comparison: shadow.comparison.clone(),
            fuel_used: shadow.fuel_used,
        }
    }
}

/// The peer-selection candidate's aggregate, computed from the files its selection names (never stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowAggregate {
    /// Uids whose gradients it aggregated.
    pub aggregated: Vec<u16>,
    /// Uids the candidate selected that the active policy did not, fetched for it.
    pub fetched: Vec<u16>,
    /// Sign bits compared (parameters present in both aggregates).
    pub bits_compared: u64,
    /// Of those, bits equal in both.
    pub bits_agreeing: u64,
    /// `bits_agreeing / bits_compared` (1 when nothing was compared), or none when the shadow aggregate could not
    /// be computed (see `error`).
    pub sign_agreement: Option<f64>,
    /// Why it could not be computed.
    pub error: Option<String>,
}

/// The host build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    /// The aggregator's version.
    pub version: String,
    /// The git commit it was built from, or `unknown`.
    pub git_sha: String,
}

impl HostRecord {
    /// This host.
    pub fn this() -> Self {
        Self {
            version: crate::HOST_VERSION.to_string(),
            git_sha: crate::HOST_GIT_SHA.to_string(),
        }
    }
}

/// The chain data of the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainRecord {
    /// The sync block, `(window + 1) * blocks_per_window`.
    pub sync_block: u64,
    /// Its hash (`0x…`), when the chain gave one.
    pub sync_block_hash: Option<String>,
    /// `Timestamp::Now` at the sync block (ms), when it could be read.
    pub timestamp_ms: Option<u64>,
    /// The finalized head when the window was read.
    pub head: Option<u64>,
    /// The block the metagraph was read at (the sync block, or the head when that block was pruned).
    pub metagraph_block: u64,
}

/// Each policy the window called.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecords {
    /// `time-bounds`.
    pub time_bounds: PolicyCall<TimeBounds>,
    /// `peer-selection`.
    pub peer_selection: PolicyCall<PeerSelection>,
    /// `contribution-weighting` (WIT 1.1.0), on the evidence computed from the gathered files; absent when no
    /// selected peer had a valid gradient, and in receipts of hosts before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contribution_weighting: Option<PolicyCall<ContributionWeighting>>,
    /// The order in which the evidence's sums were added (`by-parameter` from this host on); absent in receipts of
    /// hosts before it, which added them `by-chunk`. A replay re-derives the evidence in this order.
    #[serde(default = "EvidenceOrder::legacy", skip_serializing_if = "is_legacy_order")]
    pub evidence_order: EvidenceOrder,
}

fn is_legacy_order(o: &EvidenceOrder) -> bool {
    *o == EvidenceOrder::legacy()
}

/// One policy call: who answered, on what, and what it decided.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct PolicyCall<K: Kind> {
    /// The component whose decision was used.
    pub component: ComponentId,
    /// When the configured policy failed and a fallback (the last good one, or the embedded default) answered: why
    /// it failed. `component` is then the fallback.
    pub fallback: Option<String>,
    /// When every policy refused the saved state and the call was made again with an empty one: the refusal.
    pub state_reset: Option<String>,
    /// The input exactly as the policy received it (the operator's settings in `config`).
    pub input: K::Input,
    /// The decision.
    pub decision: K::Output,
}

impl<K: Kind> From<&aggregator_policy::Outcome<K>> for PolicyCall<K> {
    fn from(o: &aggregator_policy::Outcome<K>) -> Self {
        Self {
            component: o.component.clone(),
            fallback: o.fallback.as_ref().map(ToString::to_string),
            state_reset: o.state_reset.as_ref().map(ToString::to_string),
            input: o.input.clone(),
            decision: o.value.clone(),
        }
    }
}

/// A selected peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRecord {
    /// The uid.
    pub uid: u16,
    /// Its weight from the selection (1.0 when the policy gave none); 0 leaves its values out.
    pub weight: f32,
    /// Its bucket, from its on-chain commitment; none when it had no valid commitment.
    pub bucket: Option<BucketRecord>,
    /// The object the gather found; none when there was none (missing, no bucket, storage failure before `HEAD`).
    pub file: Option<FileRecord>,
    /// Whether it was aggregated.
    pub outcome: PeerOutcome,
    /// Why it was skipped (with [`PeerOutcome::Skipped`]).
    pub skip: Option<SkipRecord>,
    /// The key of its archived copy in the output bucket (`archive_inputs`), if one was written.
    pub archived: Option<String>,
}

/// A peer's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerOutcome {
    /// Its gradient went into the aggregate (at its weight).
    Aggregated,
    /// It was skipped (see [`PeerRecord::skip`]).
    Skipped,
}

/// Why a peer was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkipRecord {
    /// The bounded label (`missing`, `too-early`, `too-late`, `too-large`, `malformed`, `timeout`,
    /// `storage-error`, `no-bucket`).
    pub kind: String,
    /// The full reason, as logged.
    pub reason: String,
}

/// A peer's bucket as its commitment gave it. The read credentials are the ones the miner published on chain for
/// anyone to read its gradients (Templar's commitment rule), never the server's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketRecord {
    /// `r2:ACCOUNT`, an S3 URL or `file://PATH` (what `--store` takes).
    pub endpoint: String,
    /// The bucket name.
    pub name: String,
    /// The committed read key id.
    pub access_key_id: String,
    /// The committed read secret (public on chain).
    pub secret_access_key: String,
}

impl From<&Bucket> for BucketRecord {
    fn from(b: &Bucket) -> Self {
        Self {
            endpoint: b.endpoint.to_string(),
            name: b.name.clone(),
            access_key_id: b.access_key_id.clone(),
            secret_access_key: b.secret.clone(),
        }
    }
}

impl BucketRecord {
    /// The bucket to read from; an endpoint that does not parse is named.
    pub fn bucket(&self) -> Result<Bucket, String> {
        let endpoint: Endpoint = self.endpoint.parse()?;
        Ok(Bucket {
            endpoint,
            name: self.name.clone(),
            access_key_id: self.access_key_id.clone(),
            secret: self.secret_access_key.clone(),
        })
    }
}

/// The stored aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRecord {
    /// Its key in the output bucket, `aggregator-{w}-v{V}.pt`.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 (hex) of its bytes.
    pub sha256: String,
    /// The `timestamp` in its metadata (the one value a recomputation cannot know).
    pub timestamp: String,
}

/// Stage timings in ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// Chain reads and policies.
    pub chain: u64,
    /// Gather.
    pub gather: u64,
    /// Aggregation and encoding.
    pub process: u64,
    /// The aggregate's put (and the archive's); none in a receipt recovered after a crash between the writes.
    pub put: Option<u64>,
}

impl Receipt {
    /// Pretty JSON (what is stored).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a receipt serialises");
        v.push(b'\n');
        v
    }

    /// Reads a receipt: size-limited, this schema version only, unknown fields refused.
    pub fn from_json(bytes: &[u8], source_name: &str) -> Result<Self, ReceiptError> {
        if bytes.len() > MAX_RECEIPT_BYTES {
            return Err(ReceiptError::TooLarge {
                source_name: source_name.to_string(),
                size: bytes.len(),
            });
        }
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let invalid = |e: serde_json::Error| ReceiptError::Invalid {
            source_name: source_name.to_string(),
            reason: e.to_string(),
        };
        let v: Version = serde_json::from_slice(bytes).map_err(invalid)?;
        if v.schema_version != SCHEMA_VERSION {
            return Err(ReceiptError::Version {
                source_name: source_name.to_string(),
                found: v.schema_version,
            });
        }
        serde_json::from_slice(bytes).map_err(invalid)
    }

    /// The weights the selection decided, one per selected peer (1.0 each when it gave none).
    pub fn selection_weights(&self) -> Vec<f32> {
        let d = &self.policies.peer_selection.decision;
        d.weights.clone().unwrap_or_else(|| vec![1.0; d.peers.len()])
    }

    /// The weight each selected peer was aggregated at: the contribution-weighting decision's for the peers it
    /// weighed (the valid ones, in order), the selection's for the others.
    pub fn aggregation_weights(&self) -> Vec<f32> {
        let mut weights = self.selection_weights();
        if let Some(call) = &self.policies.contribution_weighting {
            let mut decided = call.input.peers.iter().map(|p| p.uid).zip(&call.decision.weights);
            for (w, p) in weights.iter_mut().zip(&self.policies.peer_selection.decision.peers) {
                if let Some((uid, x)) = decided.clone().next()
                    && uid == *p
                {
                    *w = *x;
                    decided.next();
                }
            }
        }
        weights
    }
}
