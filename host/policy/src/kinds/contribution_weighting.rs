//! `contribution-weighting` (WIT 1.1.0): how much each gathered peer counts in the aggregate, decided after the
//! gather from evidence the host computed from the files (`aggregator_window::evidence`).

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use super::peer_selection::{MAX_STATE_BYTES, weight_ok};
use super::{Comparison, Kind, PolicyKind, sealed};
use crate::bindings::exports::templar::policy::contribution_weighting as wit;
use crate::host::HostState;
use crate::types::ChainView;
pub use wit::{PeerEvidence, SimilarPeer, Weighting, WeightingInput};

/// Most `similar` entries the host lists per peer (the WIT's bound).
pub const MAX_SIMILAR: usize = 16;

/// The `contribution-weighting` kind.
#[derive(Debug, Clone, Copy)]
pub struct ContributionWeighting;

impl Kind for ContributionWeighting {
    const KIND: PolicyKind = PolicyKind::ContributionWeighting;
    const INTERFACE: &'static str = "contribution-weighting";
    const WORLD: &'static str = "contribution-weigher";
    type Input = WeightingInput;
    type Output = Weighting;

    fn golden() -> (&'static str, WeightingInput) {
        (
            "contribution-weighting (15 peers: a copy, a sign flip, a lone peer's missing statistics)",
            golden_input(),
        )
    }

    fn set_config(input: &mut WeightingInput, config: Vec<(String, String)>) {
        input.config = config;
    }

    fn summary(w: &Weighting) -> String {
        let zero = w.weights.iter().filter(|x| **x == 0.0).count();
        format!("{} weights, {zero} zero; {}", w.weights.len(), w.note)
    }

    fn compare(a: &Weighting, b: &Weighting) -> Comparison {
        let changed = a
            .weights
            .iter()
            .zip(&b.weights)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count() as u32;
        Comparison {
            differences: Self::diff(a, b),
            weights_changed: Some(changed),
            ..Comparison::default()
        }
    }

    fn diff(a: &Weighting, b: &Weighting) -> Vec<String> {
        let mut out = Vec::new();
        if a.weights.len() != b.weights.len() {
            out.push(format!("{} weights -> {} weights", a.weights.len(), b.weights.len()));
        } else {
            for (i, (x, y)) in a.weights.iter().zip(&b.weights).enumerate() {
                if x.to_bits() != y.to_bits() {
                    out.push(format!("weight at position {i}: {x} -> {y}"));
                }
            }
        }
        out.extend(super::state_diff(&a.state, &b.state));
        out
    }
}

impl sealed::Dispatch for ContributionWeighting {
    type Indices = wit::GuestIndices;

    fn indices(pre: &InstancePre<HostState>) -> Option<Self::Indices> {
        wit::GuestIndices::new(pre).ok()
    }

    fn invoke(
        idx: &Self::Indices,
        store: &mut Store<HostState>,
        instance: &Instance,
        input: &WeightingInput,
    ) -> wasmtime::Result<Result<Weighting, String>> {
        idx.load(&mut *store, instance)?.call_weigh(&mut *store, input)
    }

    fn check(input: &WeightingInput, w: &Weighting) -> Result<(), String> {
        if w.weights.len() != input.peers.len() {
            return Err(format!("{} weights for {} peers", w.weights.len(), input.peers.len()));
        }
        if w.state.len() > MAX_STATE_BYTES {
            return Err(format!("{} bytes of state (limit {MAX_STATE_BYTES})", w.state.len()));
        }
        if let Some((i, bad)) = w.weights.iter().enumerate().find(|(_, x)| !weight_ok(**x)) {
            return Err(format!(
                "weight {bad} of uid {} (position {i}) is not 0 and not in [2^-20, 2^20]",
                input.peers[i].uid
            ));
        }
        Ok(())
    }
}

/// Fifteen peers of a two-parameter model, window 1000: uids 1–12 agree with each other (sign agreement 0.8–0.9),
/// uid 13 is a sign flip (0.1), uid 14 re-uploaded uid 3's file two seconds later (identical), and uid 15 was
/// selected at weight 0 (so its statistics are against the others, and it is no one's other).
pub fn golden_input() -> WeightingInput {
    let t0 = 1_700_000_000_000u64;
    let at = |uid: u16| t0 + 1000 * (uid as u64 % 3) + if uid == 14 { 2000 } else { 0 };
    let similar = |uid: u16, last_modified_ms: u64| SimilarPeer {
        uid,
        overlap: 1.0,
        identical: true,
        last_modified_ms,
    };
    let peers = (1..=15u16)
        .map(|uid| {
            let honest = uid <= 12;
            let agreement = match uid {
                13 => 0.1,
                14 => 0.85,
                _ if honest => 0.8 + (uid as f64) / 120.0,
                _ => 0.5,
            };
            let last_modified_ms = at(uid);
            PeerEvidence {
                uid,
                selection_weight: if uid == 15 { 0.0 } else { 1.0 },
                last_modified_ms,
                param_norms: vec![1.5 + uid as f64 / 10.0, 0.25],
                total_norm: ((1.5 + uid as f64 / 10.0).powi(2) + 0.0625).sqrt(),
                slots: 4096,
                copies: if uid == 3 || uid == 14 { 2 } else { 1 },
                index_overlap: 0.75,
                cosine: Some(2.0 * agreement - 1.0),
                sign_agreement: Some(agreement),
                compared: 3072,
                majority_agreement: Some(agreement),
                voted: 2048,
                similar: match uid {
                    3 => vec![similar(14, at(14))],
                    14 => vec![similar(3, at(3))],
                    _ => vec![],
                },
            }
        })
        .collect();
    WeightingInput {
        chain: ChainView {
            block: 7003,
            window: 1000,
            blocks_per_window: 7,
            netuid: 3,
        },
        peers,
        params: 2,
        state: vec![],
        config: vec![],
    }
}
