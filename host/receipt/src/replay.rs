//! Replaying a window from its receipt: every input fetched and hashed, every recorded policy call made again, the
//! aggregate recomputed and compared bit for bit with the stored one. Each check is a [`Step`] with a [`Verdict`];
//! the first step that fails names what differs (the peer, the policy, the parameter).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aggregator_codec::{Aggregate, Gradient, Limits};
use aggregator_kernels::Backend;
use aggregator_model::ModelSpec;
use aggregator_policy::{EMBEDDED_DEFAULT, EXAMPLE_ROBUST, EXAMPLE_ROTATION, Kind, Loaded, PolicyEngine};
use aggregator_store::{Clients, size_cap};
use aggregator_window::{PeerInput, aggregate_window};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use aggregator_policy::ContributionWeighting;
use aggregator_policy::kinds::contribution_weighting::WeightingInput;
use aggregator_window::evidence::{self, EvidencePeer};

use crate::record::{PeerOutcome, PolicyCall, Receipt};
use crate::{sha256_hex, weighting_input};

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It matches.
    Match(String),
    /// It differs: what, exactly.
    Differs(String),
    /// It could not be checked and that breaks the proof (an input that cannot be fetched).
    Unavailable(String),
    /// It was not checked, and the rest still holds (a policy component whose wasm is not at hand).
    NotChecked(String),
}

impl Verdict {
    /// Whether this verdict fails the replay.
    pub fn failed(&self) -> bool {
        matches!(self, Verdict::Differs(_) | Verdict::Unavailable(_))
    }
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What was checked (`uid 3 input`, `policy peer-selection`, `aggregate`).
    pub what: String,
    /// How it ended.
    pub verdict: Verdict,
}

/// Every check of one replay, in order.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// The steps.
    pub steps: Vec<Step>,
}

impl ReplayReport {
    /// The first step that failed.
    pub fn first_failure(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.verdict.failed())
    }

    /// Whether every step matched (or was, harmlessly, not checked).
    pub fn passed(&self) -> bool {
        self.first_failure().is_none()
    }

    fn push(&mut self, what: impl Into<String>, verdict: Verdict) {
        self.steps.push(Step {
            what: what.into(),
            verdict,
        });
    }
}

/// Where a replay reads from and what it runs on.
pub struct ReplayOptions {
    /// The server's bucket: the stored aggregate (unless given) and archived inputs.
    pub output: Option<Arc<dyn ObjectStore>>,
    /// The stored aggregate's bytes, when they come from elsewhere (a file).
    pub aggregate: Option<Bytes>,
    /// Clients for the peers' buckets.
    pub clients: Clients,
    /// The model the receipt names.
    pub model: Arc<ModelSpec>,
    /// The backend to recompute on.
    pub backend: Arc<dyn Backend>,
    /// The policy engine (production limits).
    pub engine: PolicyEngine,
    /// Wasm files, or directories of them (such as the daemon's policy cache, which keeps every component it loaded
    /// as `{sha256}.wasm`), to find recorded components in (by SHA-256) besides the embedded ones and the recorded
    /// path.
    pub components: Vec<PathBuf>,
    /// Limit per storage call.
    pub timeout: Duration,
}

/// Replays `receipt`. Errors are never returned for what the world holds: every finding is a step.
pub async fn replay(receipt: &Receipt, o: &ReplayOptions) -> ReplayReport {
    let mut report = ReplayReport::default();
    let output_name = receipt.output.key.clone();

    // 1. The stored aggregate, checked against the receipt first: a changed aggregate is named as such.
    let stored = match &o.aggregate {
        Some(b) => Ok(b.clone()),
        None => match &o.output {
            Some(store) => {
                get(
                    store.as_ref(),
                    &output_name,
                    Limits::default().max_archive_bytes,
                    o.timeout,
                )
                .await
            }
            None => Err("no output bucket or aggregate file given".to_string()),
        },
    };
    let stored = match stored {
        Ok(b) => {
            let sha = sha256_hex(&b);
            if sha != receipt.output.sha256 || b.len() as u64 != receipt.output.size {
                report.push(
                    format!("aggregate {output_name}"),
                    Verdict::Differs(format!(
                        "the stored aggregate's SHA-256 is {sha} ({} bytes); the receipt says {} ({} bytes)",
                        b.len(),
                        receipt.output.sha256,
                        receipt.output.size
                    )),
                );
            } else {
                report.push(
                    format!("aggregate {output_name}"),
                    Verdict::Match(format!("SHA-256 {} ({} bytes)", short(&sha), b.len())),
                );
            }
            Some(b)
        }
        Err(e) => {
            report.push(format!("aggregate {output_name}"), Verdict::Unavailable(e));
            None
        }
    };

    // 2. The policies, on their recorded inputs.
    let calls = &receipt.policies;
    report.steps.push(rerun(&calls.time_bounds, o));
    report.steps.push(rerun(&calls.peer_selection, o));
    if let Some(call) = &calls.contribution_weighting {
        report.steps.push(rerun(call, o));
    }

    // 3. The peers listed are the ones selected, at the decided weights (the contribution weighting's for the
    // peers it weighed).
    let decided = &calls.peer_selection.decision.peers;
    let weights = receipt.aggregation_weights();
    let listed: Vec<u16> = receipt.peers.iter().map(|p| p.uid).collect();
    let listed_weights: Vec<u32> = receipt.peers.iter().map(|p| p.weight.to_bits()).collect();
    if &listed != decided {
        report.push(
            "selection",
            Verdict::Differs(format!("peers {listed:?} recorded, the selection decided {decided:?}")),
        );
    } else if listed_weights != weights.iter().map(|w| w.to_bits()).collect::<Vec<_>>() {
        report.push(
            "selection",
            Verdict::Differs(format!(
                "weights {:?} recorded, the policies decided {weights:?}",
                receipt.peers.iter().map(|p| p.weight).collect::<Vec<_>>()
            )),
        );
    } else {
        report.push(
            "selection",
            Verdict::Match(format!("{} peers at the decided weights", listed.len())),
        );
    }

    // 4. Every aggregated input: fetched, hashed, inside the bounds, decoded.
    let bounds = &calls.time_bounds.decision;
    let limits = Limits::for_gradient(o.model.sparse_bytes() as u64);
    let cap = size_cap(&o.model);
    let mut inputs: Vec<(u16, PeerInput<String>)> = Vec::new();
    let mut complete = true;
    for p in &receipt.peers {
        let what = format!("uid {} input", p.uid);
        if p.outcome == PeerOutcome::Skipped {
            let reason = p
                .skip
                .as_ref()
                .map_or_else(|| "skipped".to_string(), |s| s.reason.clone());
            inputs.push((p.uid, PeerInput::Skipped(reason)));
            continue;
        }
        let Some(file) = &p.file else {
            report.push(
                what,
                Verdict::Differs("aggregated, but the receipt records no file".into()),
            );
            complete = false;
            continue;
        };
        // A file read by ranges (a window within a memory budget, or split across shards) has no SHA-256: it is
        // then identified by its ETag and size, as the host pinned its reads to them; the recomputation below
        // still has to give the stored bits from these bytes.
        let want = match (&file.sha256, &file.etag) {
            (Some(sha), _) => Identity::Sha256(sha.clone()),
            (None, Some(etag)) => Identity::ETag(etag.clone()),
            (None, None) => {
                report.push(
                    what,
                    Verdict::Differs("aggregated, but the receipt records neither SHA-256 nor ETag".into()),
                );
                complete = false;
                continue;
            }
        };
        if !(bounds.not_before_ms..=bounds.not_after_ms).contains(&file.last_modified_ms) {
            report.push(
                what.clone(),
                Verdict::Differs(format!(
                    "LastModified {} ms is outside the recorded bounds [{}, {}]",
                    file.last_modified_ms, bounds.not_before_ms, bounds.not_after_ms
                )),
            );
        }
        let (bytes, from, etag) = match fetch_input(p, o, cap).await {
            Ok(x) => x,
            Err(e) => {
                report.push(what, Verdict::Unavailable(e));
                complete = false;
                continue;
            }
        };
        let sha = sha256_hex(&bytes);
        let found = match &want {
            Identity::Sha256(want) if &sha != want => Some(format!(
                "SHA-256 {sha} ({} bytes), the receipt says {want} ({} bytes)",
                bytes.len(),
                file.size
            )),
            Identity::ETag(want) if etag.as_ref() != Some(want) || bytes.len() as u64 != file.size => Some(format!(
                "ETag {} ({} bytes), the receipt says {want} ({} bytes)",
                etag.as_deref().unwrap_or("none"),
                bytes.len(),
                file.size
            )),
            _ => None,
        };
        if let Some(found) = found {
            report.push(
                what,
                Verdict::Differs(format!("{from}: {found}: not the file aggregated")),
            );
            complete = false;
            continue;
        }
        let identity = match &want {
            Identity::Sha256(_) => format!("SHA-256 {}", short(&sha)),
            Identity::ETag(e) => format!("ETag {e} (read by ranges; SHA-256 {})", short(&sha)),
        };
        let model = o.model.clone();
        let decoded = tokio::task::spawn_blocking(move || Gradient::read(&bytes, &model, &limits)).await;
        match decoded {
            Ok(Ok(g)) => {
                report.push(
                    what,
                    Verdict::Match(format!("{from}: {identity} at weight {}", p.weight)),
                );
                inputs.push((
                    p.uid,
                    PeerInput::Valid {
                        gradient: g,
                        weight: p.weight,
                    },
                ));
            }
            Ok(Err(e)) => {
                report.push(
                    what,
                    Verdict::Differs(format!("{from}: aggregated, but it is not valid: {e}")),
                );
                complete = false;
            }
            Err(e) => {
                report.push(what, Verdict::Unavailable(format!("decoder failed: {e}")));
                complete = false;
            }
        }
    }

    // 5. The contribution-weighting evidence, re-derived from the inputs and compared with the recorded input.
    let inputs = match &calls.contribution_weighting {
        Some(call) if complete => {
            let (step, inputs) = rederive_evidence(receipt, call, inputs, o).await;
            report.steps.push(step);
            inputs
        }
        Some(_) => {
            report.push(
                "evidence",
                Verdict::NotChecked("not every aggregated input is at hand".into()),
            );
            inputs
        }
        None => inputs,
    };

    // 6. The aggregate, recomputed and compared bit for bit.
    let what = format!("recomputed on {}", o.backend.name());
    if !complete {
        report.push(
            what,
            Verdict::NotChecked("not every aggregated input is at hand".into()),
        );
        return report;
    }
    let Some(stored) = stored else {
        report.push(what, Verdict::NotChecked("the stored aggregate is not at hand".into()));
        return report;
    };
    let (model, backend) = (o.model.clone(), o.backend.clone());
    let (window, version, timestamp) = (
        receipt.window as i64,
        receipt.version.clone(),
        receipt.output.timestamp.clone(),
    );
    let recomputed = tokio::task::spawn_blocking(move || {
        let a = aggregate_window(&model, backend.as_ref(), window, &version, &inputs, timestamp)
            .map_err(|e| e.to_string())?;
        let file = a.file.ok_or("no valid peer: nothing to compare")?;
        let bytes = file.to_bytes().map_err(|e| e.to_string())?;
        Ok::<_, String>((file, bytes))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match recomputed {
        Err(e) => report.push(what, Verdict::Differs(format!("the recomputation failed: {e}"))),
        Ok((_, bytes)) if bytes[..] == stored[..] => report.push(
            what,
            Verdict::Match(format!("{} bytes, identical to {output_name}", bytes.len())),
        ),
        Ok((file, _)) => report.push(what, Verdict::Differs(first_difference(&file, &stored, &o.model))),
    }
    report
}

/// Where the recomputed aggregate and the stored bytes part: the first parameter, or the metadata field.
fn first_difference(recomputed: &Aggregate, stored: &[u8], model: &ModelSpec) -> String {
    let theirs = match Aggregate::read(stored, Some(model), &Limits::default()) {
        Ok(a) => a,
        Err(e) => return format!("the stored aggregate is not a valid aggregate file: {e}"),
    };
    for (i, (name, bits)) in recomputed.params.iter().enumerate() {
        match theirs.params.iter().find(|(n, _)| n == name) {
            None => return format!("parameter {name}: missing from the stored aggregate"),
            Some((_, stored_bits)) if stored_bits != bits => {
                let byte = bits.iter().zip(stored_bits).position(|(a, b)| a != b).unwrap_or(0);
                return format!(
                    "parameter {name} (#{i}): packed byte {byte} differs (element {})",
                    byte * 8
                );
            }
            Some(_) => {}
        }
    }
    if let Some((name, _)) = theirs
        .params
        .iter()
        .find(|(n, _)| !recomputed.params.iter().any(|(m, _)| m == n))
    {
        return format!("parameter {name}: in the stored aggregate, not in the recomputed one");
    }
    let fields = [
        ("window", recomputed.window != theirs.window),
        ("version", recomputed.version != theirs.version),
        ("timestamp", recomputed.timestamp != theirs.timestamp),
        ("skipped_uids", recomputed.skipped_uids != theirs.skipped_uids),
        (
            "success_rate",
            recomputed.success_rate.to_bits() != theirs.success_rate.to_bits(),
        ),
        ("global_step", recomputed.global_step != theirs.global_step),
    ];
    match fields.iter().find(|(_, differs)| *differs) {
        Some((field, _)) => format!("metadata field {field} differs"),
        None => "same parameters and metadata, different bytes (the encoding)".into(),
    }
}

/// Computes the evidence again from the decoded inputs (at their selection weights, with the recorded upload times
/// and digests) and compares it with the contribution-weighting call's recorded input, field by field.
async fn rederive_evidence(
    receipt: &Receipt,
    call: &PolicyCall<ContributionWeighting>,
    inputs: Vec<(u16, PeerInput<String>)>,
    o: &ReplayOptions,
) -> (Step, Vec<(u16, PeerInput<String>)>) {
    let what = "evidence (contribution-weighting input)".to_string();
    let selection = receipt.selection_weights();
    let records: Vec<(u64, Option<String>)> = receipt
        .peers
        .iter()
        .map(|p| {
            let f = p.file.as_ref();
            (f.map_or(0, |f| f.last_modified_ms), f.and_then(|f| f.sha256.clone()))
        })
        .collect();
    let model = o.model.clone();
    let order = receipt.policies.evidence_order;
    let recorded = call.input.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let peers: Vec<EvidencePeer> = inputs
            .iter()
            .enumerate()
            .filter_map(|(i, (uid, input))| match input {
                PeerInput::Valid { gradient, .. } => Some(EvidencePeer {
                    uid: *uid,
                    gradient,
                    weight: selection[i],
                    last_modified_ms: records[i].0,
                    sha256: records[i].1.as_deref(),
                }),
                PeerInput::Skipped(_) => None,
            })
            .collect();
        let stats = evidence::compute_in(&model, &peers, order);
        let again = weighting_input(recorded.chain, stats, model.params.len(), recorded.state.clone());
        let verdict = compare_evidence(&recorded, &again);
        (verdict, inputs)
    })
    .await;
    match joined {
        Ok((verdict, inputs)) => (Step { what, verdict }, inputs),
        Err(e) => (
            Step {
                what,
                verdict: Verdict::Unavailable(format!("the evidence task failed: {e}")),
            },
            Vec::new(),
        ),
    }
}

/// Whether the re-derived evidence equals the recorded one (config and state are the call's own, not evidence).
fn compare_evidence(recorded: &WeightingInput, again: &WeightingInput) -> Verdict {
    let as_json = |p: &aggregator_policy::kinds::contribution_weighting::PeerEvidence| {
        serde_json::to_value(p).unwrap_or_default()
    };
    if recorded.peers.len() != again.peers.len() || recorded.params != again.params {
        return Verdict::Differs(format!(
            "{} peers and {} parameters recorded, {} and {} re-derived",
            recorded.peers.len(),
            recorded.params,
            again.peers.len(),
            again.params
        ));
    }
    for (a, b) in recorded.peers.iter().zip(&again.peers) {
        let (ja, jb) = (as_json(a), as_json(b));
        if ja != jb {
            let field = ja
                .as_object()
                .and_then(|m| {
                    m.iter()
                        .find(|(k, v)| jb.get(k.as_str()) != Some(v))
                        .map(|(k, _)| k.clone())
                })
                .unwrap_or_default();
            return Verdict::Differs(format!(
                "uid {}: recorded {field} {}, re-derived {}",
                a.uid,
                ja.get(&field).cloned().unwrap_or_default(),
                jb.get(&field).cloned().unwrap_or_default()
            ));
        }
    }
    Verdict::Match(format!(
        "{} peers' evidence re-derived, identical",
        recorded.peers.len()
    ))
}

/// Calls the recorded component again on the recorded input.
fn rerun<K: Kind>(call: &PolicyCall<K>, o: &ReplayOptions) -> Step {
    let what = format!(
        "policy {} ({} {}, {})",
        K::INTERFACE,
        call.component.name,
        call.component.version,
        short(&call.component.sha256)
    );
    let loaded = match find_component(&call.component.sha256, &call.component.origin, o) {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Step {
                what,
                verdict: Verdict::NotChecked(format!(
                    "its wasm (SHA-256 {}) is not at hand; pass it with --components",
                    call.component.sha256
                )),
            };
        }
        Err(e) => {
            return Step {
                what,
                verdict: Verdict::Unavailable(e),
            };
        }
    };
    let verdict = match o.engine.run::<K>(&loaded, &call.input) {
        Err(e) => Verdict::Differs(format!("the recorded input now fails: {e}")),
        Ok(c) => {
            let diff = K::diff(&call.decision, &c.value);
            if diff.is_empty() {
                Verdict::Match(format!("same decision: {}", K::summary(&c.value)))
            } else {
                Verdict::Differs(format!("a different decision: {}", diff.join("; ")))
            }
        }
    };
    Step { what, verdict }
}

/// The component with SHA-256 `sha`: embedded, at its recorded path, or among `o.components`.
fn find_component(sha: &str, origin: &str, o: &ReplayOptions) -> Result<Option<Arc<Loaded>>, String> {
    let mut candidates: Vec<(Vec<u8>, String)> = vec![
        (EMBEDDED_DEFAULT.to_vec(), "embedded:templar-default".into()),
        (EXAMPLE_ROTATION.to_vec(), "embedded:example-rotation".into()),
        (EXAMPLE_ROBUST.to_vec(), "embedded:example-robust".into()),
    ];
    let mut files: Vec<PathBuf> = vec![PathBuf::from(origin)];
    for c in &o.components {
        match std::fs::read_dir(c) {
            Ok(dir) => files.extend(
                dir.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "wasm")),
            ),
            Err(_) => files.push(c.clone()),
        }
    }
    for f in files {
        if let Ok(wasm) = std::fs::read(&f) {
            candidates.push((wasm, f.display().to_string()));
        }
    }
    for (wasm, name) in candidates {
        if sha256_hex(&wasm) == sha {
            return o.engine.load(&wasm, &name).map(Some).map_err(|e| e.to_string());
        }
    }
    Ok(None)
}

/// A peer's aggregated file: its archived copy when there is one, else from its bucket.
/// How the receipt identifies an input file.
enum Identity {
    /// Its bytes' digest (the file was read whole).
    Sha256(String),
    /// Its object's ETag (the file was read by ranges pinned to it).
    ETag(String),
}

/// An input's bytes, where they came from, and the ETag of the object they came from (none for an archived copy,
/// whose ETag is its own).
async fn fetch_input(
    p: &crate::PeerRecord,
    o: &ReplayOptions,
    cap: u64,
) -> Result<(Vec<u8>, String, Option<String>), String> {
    if let (Some(key), Some(store)) = (&p.archived, &o.output)
        && let Ok((b, _)) = get_tagged(store.as_ref(), key, cap, o.timeout).await
    {
        return Ok((b.to_vec(), format!("archive {key}"), None));
    }
    let file = p.file.as_ref().ok_or("no file recorded")?;
    let bucket = p
        .bucket
        .as_ref()
        .ok_or("no bucket recorded")?
        .bucket()
        .map_err(|e| format!("recorded endpoint: {e}"))?;
    let store = o.clients.get(&bucket).map_err(|e| e.to_string())?;
    let (b, etag) = get_tagged(store.as_ref(), &file.key, cap, o.timeout).await?;
    Ok((b.to_vec(), format!("{}/{}", bucket.name, file.key), etag))
}

/// A whole object, at most `cap` bytes, within `timeout`.
async fn get(store: &dyn ObjectStore, key: &str, cap: u64, timeout: Duration) -> Result<Bytes, String> {
    get_tagged(store, key, cap, timeout).await.map(|(b, _)| b)
}

/// [`get`], with the object's ETag.
async fn get_tagged(
    store: &dyn ObjectStore,
    key: &str,
    cap: u64,
    timeout: Duration,
) -> Result<(Bytes, Option<String>), String> {
    let path = ObjectPath::from(key);
    let read = async {
        let r = store.get(&path).await.map_err(|e| e.to_string())?;
        if r.meta.size > cap {
            return Err(format!("{} bytes, over the cap of {cap}", r.meta.size));
        }
        let etag = r.meta.e_tag.clone();
        r.bytes().await.map(|b| (b, etag)).map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(format!("{key}: {e}")),
        Err(_) => Err(format!("{key}: no answer within {timeout:?}")),
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
