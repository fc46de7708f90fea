//! The `contribution-weighting` call's input, from the evidence `aggregator_window::evidence` computes: one place
//! that builds it, for the daemon, `replay` (which re-derives the evidence and compares it with the recorded input)
//! and `aggregator bench robust`.

use aggregator_policy::kinds::contribution_weighting::{PeerEvidence, SimilarPeer, WeightingInput};
use aggregator_policy::types::ChainView;
use aggregator_window::evidence::PeerStats;

/// The policy input for `stats` (in selection order) of a model with `params` parameters; `config` is filled in by
/// the policy runtime from the operator's settings.
pub fn weighting_input(chain: ChainView, stats: Vec<PeerStats>, params: usize, state: Vec<u8>) -> WeightingInput {
    WeightingInput {
        chain,
        peers: stats.into_iter().map(peer_evidence).collect(),
        params: params as u32,
        state,
        config: vec![],
    }
}

/// One peer's record as the WIT has it.
pub fn peer_evidence(s: PeerStats) -> PeerEvidence {
    PeerEvidence {
        uid: s.uid,
        selection_weight: s.selection_weight,
        last_modified_ms: s.last_modified_ms,
        param_norms: s.param_norms,
        total_norm: s.total_norm,
        slots: s.slots,
        copies: s.copies,
        index_overlap: s.index_overlap,
        cosine: s.cosine,
        sign_agreement: s.sign_agreement,
        compared: s.compared,
        majority_agreement: s.majority_agreement,
        voted: s.voted,
        similar: s
            .similar
            .into_iter()
            .map(|x| SimilarPeer {
                uid: x.uid,
                overlap: x.overlap,
                identical: x.identical,
                last_modified_ms: x.last_modified_ms,
            })
            .collect(),
    }
}
