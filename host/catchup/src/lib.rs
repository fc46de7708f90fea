//! Catch-up (spec §7): replay the aggregation server's outputs onto a checkpoint, window by window, with Templar's
//! SGD step and learning-rate schedule, and verify sync against the leader's debug dicts through the
//! `catchup-verification` policy.
//!
//! Differences from Templar 0.2.73, on purpose (spec §9): the schedule steps for **every** window, also a missing
//! one (Templar's learning rate drifts when it skips), and a missing parameter is never updated with another
//! window's signs; each window reports applied / missing / invalid and the policy's verdict.

mod checkpoint;
mod schedule;

use aggregator_codec::{Aggregate, DebugDict, Limits};
use aggregator_model::ModelSpec;
use aggregator_policy::Policies;
use aggregator_policy::kinds::catchup_verification::{ParamSample, Verdict, VerifyInput};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use rayon::prelude::*;
use std::time::{Duration, Instant};
use thiserror::Error;

pub use checkpoint::Checkpoint;
pub use schedule::Schedule;

/// Catch-up errors.
#[derive(Debug, Error)]
pub enum CatchupError {
    /// A checkpoint file.
    #[error("checkpoint {0}")]
    Checkpoint(String),
    /// Storage.
    #[error("storage: {0}")]
    Storage(String),
    /// The verification policy said "out of sync" and the action is to stop.
    #[error("window {window}: out of sync ({note})")]
    OutOfSync {
        /// The window.
        window: u64,
        /// The policy's note.
        note: String,
    },
    /// Bad arguments.
    #[error("{0}")]
    Config(String),
}

/// What to do when the verification policy says "out of sync".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOutOfSync {
    /// Log and go on.
    Warn,
    /// Stop with an error (the checkpoint so far is kept by the caller).
    Stop,
}

/// How to catch up.
#[derive(Debug, Clone)]
pub struct CatchupConfig {
    /// The schedule.
    pub schedule: Schedule,
    /// Templar version in object names.
    pub version: String,
    /// Tries for the last window's aggregate (Templar: 1 + 7, 10 s apart), for a server still writing it.
    pub last_window_tries: u32,
    /// Pause between those tries.
    pub retry_delay: Duration,
    /// The leader's uid, whose `debug-{w}-{uid}-v{V}.pt` is compared.
    pub leader_uid: u16,
    /// Action when out of sync.
    pub on_out_of_sync: OnOutOfSync,
    /// Bound on each object read (an aggregate, a debug dict), body included.
    pub read_timeout: Duration,
    /// Called after each window is replayed (a progress display).
    pub on_window: OnWindow,
}

/// A callback with the window just replayed (none by default).
#[derive(Clone, Default)]
pub struct OnWindow(Option<std::sync::Arc<dyn Fn(u64) + Send + Sync>>);

impl OnWindow {
    /// Calls `f` with each replayed window.
    pub fn new(f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        Self(Some(std::sync::Arc::new(f)))
    }

    fn call(&self, window: u64) {
        if let Some(f) = &self.0 {
            f(window);
        }
    }
}

impl std::fmt::Debug for OnWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "OnWindow(set)"
        } else {
            "OnWindow(none)"
        })
    }
}

impl Default for CatchupConfig {
    fn default() -> Self {
        Self {
            schedule: Schedule::default(),
            version: "0.2.73".into(),
            last_window_tries: 8,
            retry_delay: Duration::from_secs(10),
            leader_uid: 0,
            on_out_of_sync: OnOutOfSync::Warn,
            read_timeout: Duration::from_secs(120),
            on_window: OnWindow::default(),
        }
    }
}

/// What happened to one window.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The aggregate was applied to this many parameters.
    Applied(usize),
    /// No aggregate: the schedule still advanced.
    Missing,
    /// The aggregate was unreadable (named reason); treated as missing.
    Invalid(String),
}

/// One window's report.
#[derive(Debug, Clone)]
pub struct WindowOutcome {
    /// The window.
    pub window: u64,
    /// Its learning rate.
    pub lr: f64,
    /// What was applied.
    pub applied: Applied,
    /// The verification verdict, when the leader's debug dict was there.
    pub verdict: Option<Verdict>,
    /// Time spent on the window.
    pub elapsed: Duration,
}

/// Applies one window's packed signs: `p ← p·(1 − lr·wd) − lr·g`, `g = +1` for a set bit and `−1` otherwise, in
/// f32 as torch's SGD does it (the decay factor and `lr` rounded to f32 once). Returns the parameters updated.
pub fn apply_aggregate(ckpt: &mut Checkpoint, aggregate: &Aggregate, lr: f64, weight_decay: f64) -> usize {
    let lr32 = lr as f32;
    let decay = (weight_decay > 0.0).then_some((1.0 - lr * weight_decay) as f32);
    let mut applied = 0;
    for (name, packed) in &aggregate.params {
        let Some((_, p)) = ckpt.params.iter_mut().find(|(n, _)| n == name) else {
            continue;
        };
        if packed.len() != p.len().div_ceil(8) {
            continue;
        }
        applied += 1;
        // `p − lr` equals `p + (−lr)` exactly in IEEE arithmetic, so each element adds `±lr` chosen by its bit: the
        // bit flips the sign of `lr` (an XOR on the sign bit), branch-free, eight elements per byte, so the loops
        // vectorise. The decay multiply and the add stay two roundings, as torch's two in-place ops.
        p.par_chunks_mut(1 << 16)
            .zip(packed.par_chunks(1 << 13))
            .for_each(|(p, bits)| match decay {
                Some(d) => apply_bits(p, bits, lr32, |v, step| v * d + step),
                None => apply_bits(p, bits, lr32, |v, step| v + step),
            });
    }
    applied
}

/// `p[i] ← f(p[i], ±lr)` for each element, `−lr` where bit `i` of `bits` (little-endian within a byte) is set.
#[inline(always)]
fn apply_bits(p: &mut [f32], bits: &[u8], lr: f32, f: impl Fn(f32, f32) -> f32) {
    let step = |byte: u8, j: usize| f32::from_bits(lr.to_bits() ^ (u32::from(byte >> j & 1) << 31));
    let whole = p.len() / 8;
    let mut chunks = p.chunks_exact_mut(8);
    for (chunk, &byte) in (&mut chunks).zip(bits) {
        for (j, v) in chunk.iter_mut().enumerate() {
            *v = f(*v, step(byte, j));
        }
    }
    let rest = chunks.into_remainder();
    if let Some(&byte) = bits.get(whole) {
        for (j, v) in rest.iter_mut().enumerate() {
            *v = f(*v, step(byte, j));
        }
    }
}

/// The samples the leader's debug dict allows: for each `<param>_debug` list, the same leading elements of ours.
pub fn samples(ckpt: &Checkpoint, debug: &DebugDict) -> Vec<ParamSample> {
    debug
        .values
        .iter()
        .filter_map(|(name, reference)| {
            let index = ckpt.params.iter().position(|(n, _)| n == name)?;
            let local = ckpt.params[index].1.get(..reference.len())?;
            Some(ParamSample {
                index: index as u32,
                local: local.iter().map(|&v| v as f64).collect(),
                reference: reference.clone(),
            })
        })
        .collect()
}

/// The object's bytes as the store handed them over (no copy), `None` when it is not there.
async fn get(
    store: &dyn ObjectStore,
    key: &str,
    max: u64,
    timeout: Duration,
) -> Result<Option<bytes::Bytes>, CatchupError> {
    let err = |e: String| CatchupError::Storage(format!("{key}: {e}"));
    let read = async {
        // One GET: its metadata gives the size before the body is read.
        let r = match store.get(&ObjectPath::from(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(err(e.to_string())),
        };
        if r.meta.size > max {
            return Err(err(format!("{} bytes, over {max}", r.meta.size)));
        }
        r.bytes().await.map(Some).map_err(|e| err(e.to_string()))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(err(format!("no answer within {timeout:?}"))))
}

/// Catches `ckpt` up from its window to `to` (inclusive): every window `ckpt.window + 1 ..= to` is applied if its
/// aggregate exists (the last one is retried), the schedule steps every window, and each applied window is
/// verified against the leader's debug dict in `debug` through `policies` when both are given.
pub async fn catch_up(
    ckpt: &mut Checkpoint,
    to: u64,
    model: &ModelSpec,
    aggregates: &dyn ObjectStore,
    debug: Option<&dyn ObjectStore>,
    policies: Option<&Policies>,
    config: &CatchupConfig,
) -> Result<Vec<WindowOutcome>, CatchupError> {
    let mut out = Vec::new();
    let max = (model.numel() as u64 / 8) * 2 + (16 << 20);
    let limits = Limits {
        max_archive_bytes: max,
        max_tensor_bytes: max,
        ..Limits::default()
    };
    for w in ckpt.window + 1..=to {
        let started = Instant::now();
        let lr = config.schedule.lr_at(Schedule::step_of(w, ckpt.start_window));
        let key = aggregator_store::keys::aggregate(w, &config.version);
        let tries = if w == to { config.last_window_tries.max(1) } else { 1 };
        let mut bytes = None;
        for attempt in 1..=tries {
            bytes = get(aggregates, &key, max, config.read_timeout).await?;
            if bytes.is_some() || attempt == tries {
                break;
            }
            tracing::info!(window = w, attempt, "aggregate not there yet; retrying");
            tokio::time::sleep(config.retry_delay).await;
        }
        let applied = match bytes.map(|b| Aggregate::read(&b, Some(model), &limits)) {
            None => Applied::Missing,
            Some(Err(e)) => Applied::Invalid(format!("{key}: {e}")),
            Some(Ok(agg)) => {
                // CPU-bound but short (rayon; well under a second per window on the 1.2 B model).
                Applied::Applied(apply_aggregate(ckpt, &agg, lr, config.schedule.weight_decay))
            }
        };
        ckpt.window = w;
        let mut verdict = None;
        if let (Applied::Applied(_), Some(store), Some(policies)) = (&applied, debug, policies) {
            let key = aggregator_store::keys::debug(w, config.leader_uid, &config.version);
            if let Some(b) = get(store, &key, 64 << 20, config.read_timeout).await? {
                match DebugDict::read(&b, &Limits::default()) {
                    Ok(d) => {
                        let input = VerifyInput {
                            window: w,
                            learning_rate: lr,
                            samples: samples(ckpt, &d),
                            config: vec![],
                        };
                        match policies.verify(input) {
                            Ok(v) => verdict = Some(v.value),
                            Err(e) => tracing::warn!(window = w, error = %e, "verification policy failed"),
                        }
                    }
                    Err(e) => tracing::warn!(window = w, error = %e, "leader debug dict unreadable"),
                }
            }
        }
        match &applied {
            Applied::Missing => tracing::warn!(window = w, lr, "no aggregate; the schedule still advances"),
            Applied::Invalid(r) => tracing::warn!(window = w, reason = %r, "aggregate unreadable; treated as missing"),
            Applied::Applied(n) => tracing::info!(window = w, lr, params = n, "applied"),
        }
        config.on_window.call(w);
        let out_of_sync = verdict.as_ref().is_some_and(|v| !v.in_sync);
        let note = verdict.as_ref().map(|v| v.note.clone()).unwrap_or_default();
        out.push(WindowOutcome {
            window: w,
            lr,
            applied,
            verdict,
            elapsed: started.elapsed(),
        });
        if out_of_sync {
            tracing::warn!(window = w, %note, "out of sync with the leader");
            if config.on_out_of_sync == OnOutOfSync::Stop {
                return Err(CatchupError::OutOfSync { window: w, note });
            }
        }
    }
    Ok(out)
}
