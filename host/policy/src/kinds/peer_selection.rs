//! `peer-selection`: which peers' gradients a window gathers, in aggregation order, with optional weights.

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use super::{Comparison, Kind, PolicyKind, sealed};
use crate::bindings::exports::templar::policy::peer_selection as wit;
use crate::host::HostState;
pub use wit::{Selection, SelectionInput};

use aggregator_kernels::{MAX_WEIGHT, MIN_WEIGHT};

use crate::types::{ChainView, Neuron, PostedList};

/// Largest selection accepted from a policy.
pub const MAX_PEERS: usize = 4096;
/// Largest state a policy may keep.
pub const MAX_STATE_BYTES: usize = 1 << 20;

/// Whether a selection weight is one the numeric core takes: 0 (the peer is left out) or in
/// `[MIN_WEIGHT, MAX_WEIGHT]` (so NaN, infinities, negatives, subnormals and huge values are refused here, where the
/// policy call can still fall back, rather than in the kernels after the gather).
pub fn weight_ok(w: f32) -> bool {
    w == 0.0 || (MIN_WEIGHT..=MAX_WEIGHT).contains(&w)
}

/// The `peer-selection` kind.
#[derive(Debug, Clone, Copy)]
pub struct PeerSelection;

impl Kind for PeerSelection {
    const KIND: PolicyKind = PolicyKind::PeerSelection;
    const INTERFACE: &'static str = "peer-selection";
    const WORLD: &'static str = "peer-selector";
    type Input = SelectionInput;
    type Output = Selection;

    fn golden() -> (&'static str, SelectionInput) {
        ("peer-selection (256 neurons, two posted lists)", golden_input(256))
    }

    fn set_config(input: &mut SelectionInput, config: Vec<(String, String)>) {
        input.config = config;
    }

    fn summary(s: &Selection) -> String {
        format!("{} peers; {}", s.peers.len(), s.note)
    }

    fn compare(a: &Selection, b: &Selection) -> Comparison {
        let added: Vec<u16> = b.peers.iter().filter(|u| !a.peers.contains(u)).copied().collect();
        let removed: Vec<u16> = a.peers.iter().filter(|u| !b.peers.contains(u)).copied().collect();
        let set = |s: &Selection| s.peers.iter().copied().collect::<std::collections::BTreeSet<u16>>();
        let (sa, sb) = (set(a), set(b));
        let union = sa.union(&sb).count();
        let jaccard = if union == 0 {
            1.0
        } else {
            sa.intersection(&sb).count() as f64 / union as f64
        };
        let weight = |s: &Selection, i: usize| s.weights.as_ref().map_or(1.0, |w| w[i]);
        let weights_changed = a
            .peers
            .iter()
            .enumerate()
            .filter_map(|(i, uid)| Some((i, b.peers.iter().position(|u| u == uid)?)))
            .filter(|&(i, j)| weight(a, i).to_bits() != weight(b, j).to_bits())
            .count() as u32;
        Comparison {
            differences: Self::diff(a, b),
            peers_added: added,
            peers_removed: removed,
            jaccard: Some(jaccard),
            weights_changed: Some(weights_changed),
            ..Comparison::default()
        }
    }

    fn diff(a: &Selection, b: &Selection) -> Vec<String> {
        let mut out = Vec::new();
        let added: Vec<u16> = b.peers.iter().filter(|u| !a.peers.contains(u)).copied().collect();
        let removed: Vec<u16> = a.peers.iter().filter(|u| !b.peers.contains(u)).copied().collect();
        if !added.is_empty() {
            out.push(format!("peers added: {added:?}"));
        }
        if !removed.is_empty() {
            out.push(format!("peers removed: {removed:?}"));
        }
        if added.is_empty() && removed.is_empty() && a.peers != b.peers {
            out.push(format!("peer order: {:?} -> {:?}", a.peers, b.peers));
        }
        let weight = |s: &Selection, uid: u16| {
            let i = s.peers.iter().position(|u| *u == uid)?;
            Some(s.weights.as_ref().map_or(1.0, |w| w[i]))
        };
        for uid in a.peers.iter().filter(|u| b.peers.contains(u)) {
            let (wa, wb) = (weight(a, *uid), weight(b, *uid));
            if wa.map(f32::to_bits) != wb.map(f32::to_bits) {
                out.push(format!(
                    "weight of uid {uid}: {} -> {}",
                    wa.unwrap_or_default(),
                    wb.unwrap_or_default()
                ));
            }
        }
        out.extend(super::state_diff(&a.state, &b.state));
        out
    }
}

impl sealed::Dispatch for PeerSelection {
    type Indices = wit::GuestIndices;

    fn indices(pre: &InstancePre<HostState>) -> Option<Self::Indices> {
        wit::GuestIndices::new(pre).ok()
    }

    fn invoke(
        idx: &Self::Indices,
        store: &mut Store<HostState>,
        instance: &Instance,
        input: &SelectionInput,
    ) -> wasmtime::Result<Result<Selection, String>> {
        idx.load(&mut *store, instance)?.call_select(&mut *store, input)
    }

    fn check(_: &SelectionInput, s: &Selection) -> Result<(), String> {
        if s.peers.len() > MAX_PEERS {
            return Err(format!("{} peers (limit {MAX_PEERS})", s.peers.len()));
        }
        if s.state.len() > MAX_STATE_BYTES {
            return Err(format!("{} bytes of state (limit {MAX_STATE_BYTES})", s.state.len()));
        }
        if let Some(w) = &s.weights {
            if w.len() != s.peers.len() {
                return Err(format!("{} weights for {} peers", w.len(), s.peers.len()));
            }
            if let Some((i, bad)) = w.iter().enumerate().find(|(_, x)| !weight_ok(**x)) {
                return Err(format!(
                    "weight {bad} of peer {} (position {i}) is not 0 and not in [2^-20, 2^20]",
                    s.peers[i]
                ));
            }
        }
        Ok(())
    }
}

/// A metagraph of `n` neurons with varied stake, incentive and buckets, two posted lists, window 1000 (the golden
/// input uses 256).
pub fn golden_input(n: u16) -> SelectionInput {
    let neurons = (0..n)
        .map(|uid| Neuron {
            uid,
            stake: 1000.0 + ((uid as u64 * 7919) % 1000) as f64,
            incentive: ((uid as u64 * 104_729) % 100) as f64 / 100.0,
            has_bucket: uid % 7 != 3,
        })
        .collect();
    let list = |peers: Vec<u16>, first_effective_window| PostedList {
        peers,
        first_effective_window,
        sync_window: first_effective_window - 2,
    };
    SelectionInput {
        chain: ChainView {
            block: 7003,
            window: 1000,
            blocks_per_window: 7,
            netuid: 3,
        },
        neurons,
        current: vec![],
        latest: Some(list((1..16).collect(), 1001)),
        previous: Some(list((2..10).collect(), 996)),
        state: vec![],
        config: vec![],
    }
}
