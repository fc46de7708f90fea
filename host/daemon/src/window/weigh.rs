//! Weigh: after the gather and before the aggregation, the host computes evidence about each valid gradient
//! (`aggregator_window::evidence`: norms, index overlap, cosine and sign agreement with the leave-one-out mean,
//! near-copies with both upload times) and the `contribution-weighting` policy turns it into the weights the
//! aggregation uses (the embedded default keeps the selection's weights: Templar's bits). Evidence and decision go
//! into the receipt; `replay` re-derives both.

use aggregator_chain::Chain;
use aggregator_policy::{ContributionWeighting, Outcome, PolicyError, PolicyKind};
use aggregator_window::PeerInput;
use aggregator_window::evidence::{self, EvidencePeer};
use thiserror::Error;

use super::decide::Decision;
use super::gather::Gathered;
use crate::daemon::Daemon;

/// Why no weights could be decided (after the policy's fallbacks).
#[derive(Debug, Error)]
pub enum WeighError {
    /// Every policy (current, last good, embedded default) failed.
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    /// The blocking task computing the evidence panicked or was cancelled.
    #[error("internal: weighing task: {0}")]
    Panicked(String),
}

impl<C: Chain + 'static> Daemon<C> {
    /// Weighs the gathered peers: the valid ones' weights in `gathered.inputs` become the policy's. Returns the call
    /// (none when no peer is valid: there is nothing to weigh).
    pub(crate) async fn weigh(
        &self,
        w: u64,
        d: &Decision,
        mut gathered: Gathered,
    ) -> Result<(Gathered, Option<Outcome<ContributionWeighting>>), WeighError> {
        if !gathered
            .inputs
            .iter()
            .any(|(_, i)| matches!(i, PeerInput::Valid { .. }))
        {
            return Ok((gathered, None));
        }
        let (model, policies) = (self.model.clone(), self.policies.clone());
        let chain = d.selection.input.chain;
        let state = hex::decode(&self.state.weighting_state).unwrap_or_default();
        let (gathered, outcome) = tokio::task::spawn_blocking(move || {
            let peers: Vec<EvidencePeer> = gathered
                .inputs
                .iter()
                .zip(&gathered.files)
                .filter_map(|((uid, input), file)| match input {
                    PeerInput::Valid { gradient, weight } => Some(EvidencePeer {
                        uid: *uid,
                        gradient,
                        weight: *weight,
                        last_modified_ms: file.as_ref().map_or(0, |f| f.last_modified_ms),
                        sha256: file.as_ref().and_then(|f| f.sha256.as_deref()),
                    }),
                    PeerInput::Skipped(_) => None,
                })
                .collect();
            let stats = evidence::compute(&model, &peers);
            let input = aggregator_receipt::weighting_input(chain, stats, model.params.len(), state);
            let outcome = policies.weigh(input);
            if let Ok(o) = &outcome {
                let mut decided = o.value.weights.iter();
                for (_, input) in gathered.inputs.iter_mut() {
                    if let PeerInput::Valid { weight, .. } = input
                        && let Some(x) = decided.next()
                    {
                        *weight = *x;
                    }
                }
            }
            (gathered, outcome)
        })
        .await
        .map_err(|e| WeighError::Panicked(e.to_string()))?;
        let outcome = outcome?;
        self.log_weighting(w, &outcome);
        Ok((gathered, Some(outcome)))
    }

    /// Logs and counts a contribution-weighting call: fallbacks, a reset state, the peers it excluded.
    pub(crate) fn log_weighting(&self, w: u64, outcome: &Outcome<ContributionWeighting>) {
        if let Some(e) = &outcome.fallback {
            tracing::warn!(window = w, policy = PolicyKind::ContributionWeighting.interface(), error = %e,
                "policy failed; a fallback answered");
        }
        if let Some(e) = &outcome.state_reset {
            self.metrics
                .policy_state_reset(PolicyKind::ContributionWeighting.interface());
            tracing::warn!(window = w, policy = PolicyKind::ContributionWeighting.interface(), error = %e,
                "every policy refused the saved state; weighed again with an empty one");
        }
        let excluded: Vec<u16> = outcome
            .input
            .peers
            .iter()
            .zip(&outcome.value.weights)
            .filter(|(p, x)| **x == 0.0 && p.selection_weight != 0.0)
            .map(|(p, _)| p.uid)
            .collect();
        self.metrics.weighting_excluded(excluded.len() as u64);
        tracing::info!(window = w, component = %outcome.component.name, excluded = %crate::list(&excluded),
            note = %outcome.value.note, "contribution weights decided");
    }
}
