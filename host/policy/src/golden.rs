//! The host's golden inputs: every candidate runs them under the production limits before it may be used, and its
//! outputs must be well formed.

use crate::PolicyError;
use crate::bindings::exports::templar::policy::catchup_verification::{ParamSample, VerifyInput};
use crate::bindings::exports::templar::policy::peer_selection::SelectionInput;
use crate::bindings::exports::templar::policy::time_bounds::BoundsInput;
use crate::bindings::templar::policy::types::{ChainView, Neuron, PostedList};
use crate::engine::{Loaded, PolicyEngine, PolicyKind};

/// A metagraph of `n` neurons with varied stake, incentive and buckets, two posted lists, window 1000.
pub fn selection_input(n: u16) -> SelectionInput {
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

/// Bounds for window 1000 with a chain timestamp.
pub fn bounds_input() -> BoundsInput {
    BoundsInput {
        chain: ChainView {
            block: 7007,
            window: 1000,
            blocks_per_window: 7,
            netuid: 3,
        },
        sync_block: 7007,
        sync_timestamp_ms: Some(1_745_000_000_000),
        now_ms: 1_745_000_005_000,
        config: vec![],
    }
}

/// A catch-up comparison of three parameters, slightly out of sync.
pub fn verify_input() -> VerifyInput {
    let sample = |index, d: f64| ParamSample {
        index,
        local: vec![0.5 + d, -0.25],
        reference: vec![0.5, -0.25 - d],
    };
    VerifyInput {
        window: 1000,
        learning_rate: 4e-4,
        samples: vec![sample(0, 4e-4), sample(1, 0.0), sample(2, 8e-4)],
        config: vec![],
    }
}

/// Runs every golden input the component's policies apply to.
pub(crate) fn check(engine: &PolicyEngine, l: &Loaded) -> Result<(), PolicyError> {
    let golden = |case, e: PolicyError| PolicyError::Golden {
        origin: l.origin.clone(),
        case,
        reason: e.to_string(),
    };
    if l.provides(PolicyKind::PeerSelection) {
        engine
            .select(l, &selection_input(256))
            .map_err(|e| golden("peer-selection (256 neurons, two posted lists)", e))?;
    }
    if l.provides(PolicyKind::TimeBounds) {
        engine
            .bounds(l, &bounds_input())
            .map_err(|e| golden("time-bounds (chain timestamp present)", e))?;
    }
    if l.provides(PolicyKind::CatchupVerification) {
        engine
            .verify(l, &verify_input())
            .map_err(|e| golden("catchup-verification (three parameters)", e))?;
    }
    Ok(())
}

/// Runs `kind`'s golden input with the operator's `settings` as its config: a policy that refuses them (a value it
/// cannot parse) would fail every call, so it is refused at load time, naming the policy and its reason.
pub(crate) fn check_settings(
    engine: &PolicyEngine,
    l: &Loaded,
    kind: PolicyKind,
    settings: &[(String, String)],
) -> Result<(), PolicyError> {
    if settings.is_empty() {
        return Ok(());
    }
    let result = match kind {
        PolicyKind::PeerSelection => engine
            .select(
                l,
                &SelectionInput {
                    config: settings.to_vec(),
                    ..selection_input(256)
                },
            )
            .map(drop),
        PolicyKind::TimeBounds => engine
            .bounds(
                l,
                &BoundsInput {
                    config: settings.to_vec(),
                    ..bounds_input()
                },
            )
            .map(drop),
        PolicyKind::CatchupVerification => engine
            .verify(
                l,
                &VerifyInput {
                    config: settings.to_vec(),
                    ..verify_input()
                },
            )
            .map(drop),
    };
    result.map_err(|e| PolicyError::Settings {
        policy: l.label(),
        interface: kind.interface(),
        reason: e.to_string(),
    })
}
