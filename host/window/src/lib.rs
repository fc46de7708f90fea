//! One window's aggregation step (spec §2.5, §2.6, §3.1): per-peer outcomes in, the `aggregator-{w}-v{V}.pt`
//! payload out. The daemon, the simulator and `aggregator aggregate` all call [`aggregate_window`] (or
//! [`aggregate_window_into`], with output memory made ahead of the window).

pub mod evidence;

use std::collections::HashMap;

use aggregator_codec::{Aggregate, Gradient, SparseParam};
use aggregator_kernels::{Backend, Contribution, KernelError, PeerSparse};
use aggregator_model::{ModelSpec, ParamSpec};
use rayon::prelude::*;
use thiserror::Error;

/// A selected peer's gradient for the window, or why it cannot be used. The reason `R` is the caller's (the daemon's
/// typed skip reason, the offline command's text): this step only carries it from input to result, in peer order.
#[derive(Debug)]
pub enum PeerInput<R> {
    /// Decoded and validated against the model.
    Valid {
        /// The gradient.
        gradient: Gradient,
        /// Its weight from the selection policy: 1.0 is Templar's mean; 0 leaves the peer's values out (it still
        /// counts as valid in `success_rate`, as the policy chose it and its file was good); otherwise in
        /// `[MIN_WEIGHT, MAX_WEIGHT]` (the kernels refuse anything else).
        weight: f32,
    },
    /// Skipped: missing, outside the time bounds, malformed, … (the reason is reported).
    Skipped(R),
}

impl<R> PeerInput<R> {
    /// A valid gradient at weight 1.0 (Templar).
    pub fn valid(gradient: Gradient) -> Self {
        PeerInput::Valid { gradient, weight: 1.0 }
    }
}

/// Why the step failed (a bug in the caller or the numeric core, never a peer's fault: peers' faults are skip
/// reasons, and "no valid peers" is a [`WindowAggregate`] without a file).
#[derive(Debug, Error)]
pub enum WindowError {
    /// A gradient does not match the model it is aggregated for.
    #[error("uid {uid}: {reason}")]
    Mismatch {
        /// The peer.
        uid: u16,
        /// What is wrong.
        reason: String,
    },
    /// The numeric core refused its input.
    #[error("parameter {param:?}: {error}")]
    Kernel {
        /// Parameter name.
        param: String,
        /// The kernel error.
        error: KernelError,
    },
}

/// The result of one window.
#[derive(Debug)]
pub struct WindowAggregate<R> {
    /// The file payload; `None` when no selected peer had a valid gradient (Templar's gather returns `None` and
    /// nothing is written).
    pub file: Option<Aggregate>,
    /// Uids aggregated, in peer order.
    pub valid_uids: Vec<u16>,
    /// Uids skipped with their reasons, in peer order.
    pub skipped: Vec<(u16, R)>,
}

/// `datetime.now(timezone.utc).isoformat()`: `YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00`.
pub fn python_utc_now() -> String {
    let now = chrono::Utc::now();
    let micros = now.timestamp_subsec_micros();
    let frac = if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    };
    format!("{}{frac}+00:00", now.format("%Y-%m-%dT%H:%M:%S"))
}

/// Output memory for [`aggregate_window_into`]: one packed-bits buffer per model parameter, allocated and with every
/// page written, so that the kernels find it mapped. Not a cache: the buffers move into the aggregate.
///
/// Why: the first write to each fresh page of memory takes a page fault that zeroes the page. For the 1.2 B model the
/// output is 144 MiB, about 37,000 faults, and on the VMs this project measures on they were a tenth of a fresh
/// process's aggregation step. Made while the window's inputs are still downloaded or read (a core that waits on I/O,
/// see [`OutputBuffers::prefaulted`]'s callers), the faults leave the critical path. The bytes written are the same.
#[derive(Debug, Default)]
pub struct OutputBuffers {
    bufs: Vec<Option<Vec<u8>>>,
}

impl OutputBuffers {
    /// None made ahead: each parameter's buffer is allocated when it is aggregated (what [`aggregate_window`] uses).
    pub fn none() -> Self {
        Self::default()
    }

    /// A zeroed buffer of `packed_len()` bytes per parameter of `model`, every page already written. Takes the
    /// output's size in memory (the aggregate would take it anyway) and about a page fault per 4 KiB of it.
    pub fn prefaulted(model: &ModelSpec) -> Self {
        let bufs = model
            .params
            .iter()
            .map(|spec| {
                let mut b = vec![0u8; spec.layout.packed_len()];
                // A store per page maps it. `black_box` keeps the stores: zeros written over memory the allocator
                // already zeroed could otherwise be removed as dead.
                for byte in b.iter_mut().step_by(4096) {
                    *byte = std::hint::black_box(0);
                }
                Some(b)
            })
            .collect();
        Self { bufs }
    }

    /// Parameter `pi`'s buffer of `len` bytes: the one made ahead if it has that length, else a fresh zeroed one.
    fn take(&mut self, pi: usize, len: usize) -> Vec<u8> {
        match self.bufs.get_mut(pi).and_then(Option::take) {
            Some(b) if b.len() == len => b,
            _ => vec![0u8; len],
        }
    }
}

/// [`aggregate_window_into`] with every output buffer allocated as its parameter is aggregated.
pub fn aggregate_window<R: Clone>(
    model: &ModelSpec,
    backend: &dyn Backend,
    window: i64,
    version: &str,
    peers: &[(u16, PeerInput<R>)],
    timestamp: String,
) -> Result<WindowAggregate<R>, WindowError> {
    aggregate_window_into(model, backend, window, version, peers, timestamp, OutputBuffers::none())
}

/// Aggregates window `window` from the selected peers' inputs, in peer order (the aggregation order).
///
/// As Templar 0.2.73: `success_rate = valid / len(peers)`; `skipped_uids` lists the invalid peers in order; per
/// parameter, the valid peers that sent it are normalised (whole-tensor L2 norm + 1e-8) and merged (scatter-mean,
/// inverse DCT, sign, 1-bit pack); a parameter no valid peer sent is left out of the file. Each valid peer's
/// contribution is scaled by its weight (weighted mean per slot; every weight 1.0 gives Templar's bits exactly).
///
/// The packed bits of parameter `i` go into `buffers`' buffer `i` where it was made ahead ([`OutputBuffers`]); the
/// result does not depend on it.
pub fn aggregate_window_into<R: Clone>(
    model: &ModelSpec,
    backend: &dyn Backend,
    window: i64,
    version: &str,
    peers: &[(u16, PeerInput<R>)],
    timestamp: String,
    mut buffers: OutputBuffers,
) -> Result<WindowAggregate<R>, WindowError> {
    let (mut valid, mut skipped) = (Vec::new(), Vec::new());
    for (uid, input) in peers {
        match input {
            PeerInput::Valid { gradient: g, weight } if g.params.len() == model.params.len() => {
                valid.push((*uid, g, *weight))
            }
            PeerInput::Valid { gradient: g, .. } => {
                return Err(WindowError::Mismatch {
                    uid: *uid,
                    reason: format!(
                        "gradient has {} parameters, model {}",
                        g.params.len(),
                        model.params.len()
                    ),
                });
            }
            PeerInput::Skipped(reason) => skipped.push((*uid, reason.clone())),
        }
    }
    if valid.is_empty() {
        return Ok(WindowAggregate {
            file: None,
            valid_uids: vec![],
            skipped,
        });
    }
    let mut scratch: Vec<Vec<f32>> = vec![Vec::new(); valid.len()];
    let mut params = Vec::new();
    for (pi, spec) in model.params.iter().enumerate() {
        let sent: Vec<(Option<&SparseParam>, f32)> =
            valid.iter().map(|(_, g, w)| (g.params[pi].as_ref(), *w)).collect();
        if let Some(packed) = aggregate_param(
            spec,
            backend,
            &sent,
            &mut scratch,
            buffers.take(pi, spec.layout.packed_len()),
        )? {
            params.push((spec.name.clone(), packed));
        }
    }
    let file = Aggregate {
        params,
        timestamp,
        window,
        version: version.to_string(),
        skipped_uids: skipped.iter().map(|(u, _)| *u as i64).collect(),
        success_rate: valid.len() as f64 / peers.len() as f64,
        global_step: 0,
    };
    Ok(WindowAggregate {
        file: Some(file),
        valid_uids: valid.iter().map(|(u, ..)| *u).collect(),
        skipped,
    })
}

/// One parameter of a window: the valid peers' entries for it (`None`: that peer did not send it) at their weights,
/// in peer order, normalised (in parallel, into `scratch`, one buffer per peer) and merged into `out` (zeroed,
/// `packed_len()` bytes). `None` when no peer of non-zero weight sent it (it is left out of the file). What
/// [`aggregate_window_into`] does per parameter, and what a reader holding one group of parameters at a time calls.
pub fn aggregate_param(
    spec: &ParamSpec,
    backend: &dyn Backend,
    sent: &[(Option<&SparseParam>, f32)],
    scratch: &mut [Vec<f32>],
    mut out: Vec<u8>,
) -> Result<Option<Vec<u8>>, WindowError> {
    let kernel = |error| WindowError::Kernel {
        param: spec.name.clone(),
        error,
    };
    // Normalise each contributing peer (in parallel), keeping peer order. A peer of weight 0 still has its
    // parameter checked (the same errors whatever the weights); the kernels then leave it out.
    let contributions: Vec<Contribution> = scratch
        .par_iter_mut()
        .zip(sent.par_iter())
        .filter_map(|(buf, (p, w))| p.map(|p| (buf, p, *w)))
        .map(|(buf, p, weight)| {
            PeerSparse::new(&spec.layout, &p.idxs, &p.vals).map(|s| Contribution {
                sparse: s.normalised(buf),
                weight,
            })
        })
        .collect::<Result<_, _>>()
        .map_err(kernel)?;
    // No peer sent it, or only peers of weight 0 (as if they had been left out): not in the file.
    if contributions.iter().all(|c| c.weight == 0.0) {
        return Ok(None);
    }
    backend
        .aggregate(&spec.layout, &contributions, &mut out)
        .map_err(kernel)?;
    Ok(Some(out))
}

/// Sign bits compared and agreeing between two aggregates, over the parameters present in both (by name). Packed
/// signs are padded with zero bits in both, so XOR over whole bytes counts only real disagreements.
pub fn sign_agreement(model: &ModelSpec, a: &Aggregate, b: &Aggregate) -> (u64, u64) {
    let theirs: HashMap<&str, &[u8]> = b.params.iter().map(|(n, p)| (n.as_str(), p.as_slice())).collect();
    let numel: HashMap<&str, usize> = model
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.layout.numel()))
        .collect();
    let (mut compared, mut differing) = (0u64, 0u64);
    for (name, ours) in &a.params {
        let (Some(other), Some(n)) = (theirs.get(name.as_str()), numel.get(name.as_str())) else {
            continue;
        };
        if other.len() != ours.len() {
            continue;
        }
        compared += *n as u64;
        differing += ours
            .iter()
            .zip(other.iter())
            .map(|(x, y)| u64::from((x ^ y).count_ones()))
            .sum::<u64>();
    }
    (compared, compared.saturating_sub(differing))
}

#[cfg(test)]
mod sign_tests {
    use super::*;

    #[test]
    fn agreement_counts_bits_of_common_parameters() {
        let model = ModelSpec::preset("tiny").unwrap();
        let p = &model.params[0];
        let bytes = p.layout.numel().div_ceil(8);
        let agg = |fill: u8| Aggregate {
            params: vec![(p.name.clone(), vec![fill; bytes])],
            timestamp: String::new(),
            window: 1,
            version: "v".into(),
            skipped_uids: vec![],
            success_rate: 1.0,
            global_step: 0,
        };
        assert_eq!(
            sign_agreement(&model, &agg(0), &agg(0)),
            (p.layout.numel() as u64, p.layout.numel() as u64)
        );
        let mut b = agg(0);
        b.params[0].1[0] = 0b0000_0101;
        let (c, a) = sign_agreement(&model, &agg(0), &b);
        assert_eq!((c, a), (p.layout.numel() as u64, p.layout.numel() as u64 - 2));
    }
}

#[cfg(test)]
mod buffer_tests {
    use super::*;

    #[test]
    fn buffers_made_ahead_are_zeroed_sized_and_taken_once() {
        let model = ModelSpec::preset("tiny").unwrap();
        let mut b = OutputBuffers::prefaulted(&model);
        let len = model.params[0].layout.packed_len();
        let first = b.take(0, len);
        assert_eq!(first.len(), len);
        assert!(first.iter().all(|&x| x == 0));
        // Taken: a second take allocates; a length that does not match the buffer made ahead is not served by it.
        assert_eq!(b.take(0, len).len(), len);
        assert_eq!(b.take(1, 3).len(), 3);
        assert_eq!(OutputBuffers::none().take(7, 5), vec![0u8; 5]);
    }
}
