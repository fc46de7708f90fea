//! Decide: the policies' answers for a window. The time-bounds policy gives the upload interval, the peer-selection
//! policy the peers (sandboxed WebAssembly calls, off the async threads); fallbacks and state resets are logged.

use aggregator_chain::Chain;
use aggregator_codec::PeerList;
use aggregator_policy::kinds::peer_selection::SelectionInput;
use aggregator_policy::kinds::time_bounds::BoundsInput;
use aggregator_policy::types::{ChainView, Neuron, PostedList};
use aggregator_policy::{Outcome, PeerSelection, Policies, TimeBounds};
use aggregator_policy::{PolicyError, PolicyKind};
use aggregator_receipt::{ShadowCall, ShadowRecords};
use aggregator_store::Bounds;
use thiserror::Error;

use super::observe::Observed;
use crate::daemon::Daemon;
use crate::now_ms;

/// Why the policies gave no decision (after their fallbacks).
#[derive(Debug, Error)]
pub enum DecideError {
    /// Every policy (current, last good, embedded default) failed.
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    /// The blocking task running the policies panicked or was cancelled.
    #[error("internal: policy task: {0}")]
    Panicked(String),
}

/// The policies' decision for a window, with the calls as made (for the receipt).
pub(crate) struct Decision {
    /// Valid upload times.
    pub bounds: Bounds,
    /// The time-bounds call.
    pub time_bounds: Outcome<TimeBounds>,
    /// The peer-selection call: peers, weights, the policy's new state and its note.
    pub selection: Outcome<PeerSelection>,
    /// The shadow candidates' calls on the same inputs, for the receipt (never used for the window).
    pub shadow: ShadowRecords,
}

impl Decision {
    /// The selected peers.
    pub fn peers(&self) -> &[u16] {
        &self.selection.value.peers
    }

    /// Each selected peer's weight (1.0 each when the policy gave none; validated by the policy runtime).
    pub fn weights(&self) -> Vec<f32> {
        let s = &self.selection.value;
        s.weights.clone().unwrap_or_else(|| vec![1.0; s.peers.len()])
    }
}

fn posted(l: &Option<(u64, PeerList)>) -> Option<PostedList> {
    l.as_ref().map(|(_, l)| PostedList {
        peers: l.peers.clone(),
        first_effective_window: l.first_effective_window.max(0) as u64,
        sync_window: l.sync_window.max(0) as u64,
    })
}

impl<C: Chain + 'static> Daemon<C> {
    /// Runs the time-bounds and peer-selection policies on what [`Daemon::observe`] read.
    pub(crate) async fn decide(&self, w: u64, o: &Observed) -> Result<Decision, DecideError> {
        let cfg = &self.config;
        let chain_view = ChainView {
            block: o.sync,
            window: w,
            blocks_per_window: cfg.blocks_per_window,
            netuid: cfg.netuid,
        };
        let bounds_input = BoundsInput {
            chain: chain_view,
            sync_block: o.sync,
            sync_timestamp_ms: o.timestamp,
            now_ms: now_ms(),
            config: vec![],
        };
        let selection_input = SelectionInput {
            chain: chain_view,
            neurons: o
                .metagraph
                .neurons
                .iter()
                .map(|n| Neuron {
                    uid: n.uid,
                    stake: n.stake_tao(),
                    incentive: n.incentive,
                    has_bucket: o.buckets.contains_key(&n.uid),
                })
                .collect(),
            current: self.state.current_peers.clone(),
            latest: posted(&o.latest),
            previous: posted(&o.previous),
            state: hex::decode(&self.state.selection_state).unwrap_or_default(),
            config: vec![],
        };
        let policies = self.policies.clone();
        let shadow_state = hex::decode(&self.state.shadow_selection_state).unwrap_or_default();
        let (bounds, selection, shadow) = tokio::task::spawn_blocking(move || {
            let b = policies.time_bounds(bounds_input)?;
            let s = policies.select_peers(selection_input)?;
            let shadow = run_shadows(&policies, &b, &s, shadow_state);
            Ok::<_, PolicyError>((b, s, shadow))
        })
        .await
        .map_err(|e| DecideError::Panicked(e.to_string()))??;
        self.report_shadows(w, &shadow);
        for (kind, fallback) in [
            (PolicyKind::TimeBounds, &bounds.fallback),
            (PolicyKind::PeerSelection, &selection.fallback),
        ] {
            if let Some(e) = fallback {
                tracing::warn!(window = w, policy = kind.interface(), error = %e, "policy failed; a fallback answered");
            }
        }
        if let Some(e) = &selection.state_reset {
            self.metrics.policy_state_reset(PolicyKind::PeerSelection.interface());
            tracing::warn!(
                window = w,
                policy = %selection.policy,
                error = %e,
                "the peer-selection policy refused its saved state; it was called again with an empty state"
            );
        }
        let s = &selection.value;
        if s.peers.is_empty() {
            tracing::warn!(window = w, note = %s.note, "the peer-selection policy selected no peers");
        } else {
            tracing::info!(window = w, peers = %crate::list(&s.peers), weights = %s.weights.as_deref().map(crate::list).unwrap_or_default(), note = %s.note, "peers selected");
        }
        Ok(Decision {
            bounds: Bounds {
                not_before_ms: bounds.value.not_before_ms,
                not_after_ms: bounds.value.not_after_ms,
            },
            time_bounds: bounds,
            selection,
            shadow,
        })
    }

    /// Logs and counts what the shadow candidates decided.
    fn report_shadows(&self, w: u64, shadow: &ShadowRecords) {
        if let Some(c) = &shadow.time_bounds {
            let kind = PolicyKind::TimeBounds.interface();
            match (&c.comparison, &c.error) {
                (Some(cmp), _) => {
                    self.metrics
                        .shadow_call(kind, if cmp.same() { "same" } else { "differs" });
                    self.metrics.shadow_bounds_moved(
                        cmp.not_before_moved_ms.unwrap_or(0),
                        cmp.not_after_moved_ms.unwrap_or(0),
                    );
                    tracing::info!(window = w, policy = kind, candidate = %c.component.name,
                        differences = %cmp.differences.join("; "), "shadow candidate decided");
                }
                (None, error) => {
                    self.metrics.shadow_call(kind, "failed");
                    tracing::warn!(window = w, policy = kind, candidate = %c.component.name,
                        error = error.as_deref().unwrap_or(""), "shadow candidate failed (the window is unaffected)");
                }
            }
        }
        if let Some(c) = &shadow.peer_selection {
            let kind = PolicyKind::PeerSelection.interface();
            match (&c.comparison, &c.error) {
                (Some(cmp), _) => {
                    self.metrics
                        .shadow_call(kind, if cmp.same() { "same" } else { "differs" });
                    self.metrics.shadow_selection(
                        cmp.peers_added.len() as u64,
                        cmp.peers_removed.len() as u64,
                        cmp.jaccard.unwrap_or(1.0),
                        cmp.weights_changed.unwrap_or(0) as u64,
                    );
                    tracing::info!(window = w, policy = kind, candidate = %c.component.name,
                        added = %crate::list(&cmp.peers_added), removed = %crate::list(&cmp.peers_removed),
                        jaccard = cmp.jaccard, differences = %cmp.differences.join("; "), "shadow candidate decided");
                }
                (None, error) => {
                    self.metrics.shadow_call(kind, "failed");
                    tracing::warn!(window = w, policy = kind, candidate = %c.component.name,
                        error = error.as_deref().unwrap_or(""), "shadow candidate failed (the window is unaffected)");
                }
            }
        }
    }
}

/// Runs each configured shadow candidate on its active call's input (the peer-selection candidate with its own
/// state). A candidate's failure is part of its record, never an error of the window.
fn run_shadows(
    policies: &Policies,
    bounds: &Outcome<TimeBounds>,
    selection: &Outcome<PeerSelection>,
    shadow_state: Vec<u8>,
) -> ShadowRecords {
    let time_bounds = policies
        .shadow::<TimeBounds>(&bounds.input, &bounds.value)
        .map(|s| ShadowCall::new(bounds.input.clone(), &s));
    let input = SelectionInput {
        state: shadow_state,
        ..selection.input.clone()
    };
    let peer_selection = policies
        .shadow::<PeerSelection>(&input, &selection.value)
        .map(|s| ShadowCall::new(input, &s));
    ShadowRecords {
        time_bounds,
        peer_selection,
        aggregate: None,
    }
}
