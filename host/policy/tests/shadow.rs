//! Shadow candidates: run on the active policy's input, compared, counted, never used; a failing candidate (at
//! load or per call) changes nothing but its own record and counters.

mod common;

use aggregator_policy::golden::selection_input;
use aggregator_policy::{EXAMPLE_ROTATION, PeerSelection, Policies, PolicyConfig, PolicyKind, TimeBounds};

fn policies(dir: &std::path::Path, shadow: &[u8], settings: Vec<(String, String)>) -> Policies {
    let path = dir.join("candidate.wasm");
    common::install(&path, shadow);
    let config = PolicyConfig {
        shadow: [(PolicyKind::PeerSelection, path)].into(),
        settings,
        ..Default::default()
    };
    Policies::new(common::engine().clone(), config).unwrap()
}

#[test]
fn a_disagreeing_candidate_is_compared_and_never_used() {
    let dir = common::scratch("shadow-differs");
    let with = policies(dir.path(), EXAMPLE_ROTATION, vec![]);
    let without = Policies::new(common::engine().clone(), PolicyConfig::default()).unwrap();
    let input = selection_input(64);
    let active = with.select_peers(input.clone()).unwrap();
    let alone = without.select_peers(input).unwrap().value;
    assert_eq!(
        format!("{:?}", active.value),
        format!("{alone:?}"),
        "the shadow changes nothing"
    );
    assert_eq!(active.component.name, "templar-default");
    let shadow = with.shadow::<PeerSelection>(&active.input, &active.value).unwrap();
    assert_eq!(shadow.component.name, "example-rotation");
    let decision = shadow.decision.expect("it decided");
    let cmp = shadow.comparison.expect("compared");
    assert!(!cmp.same(), "rotation ignores the posted lists");
    let added: Vec<u16> = decision
        .peers
        .iter()
        .filter(|u| !active.value.peers.contains(u))
        .copied()
        .collect();
    assert_eq!(cmp.peers_added, added);
    let j = cmp.jaccard.unwrap();
    assert!((0.0..1.0).contains(&j), "{j}");
    // No time-bounds candidate: nothing runs.
    assert!(
        with.shadow::<TimeBounds>(&aggregator_policy::golden::bounds_input(), &dummy_bounds())
            .is_none()
    );
    let stats = with.shadow_stats();
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].1.calls, stats[0].1.differed, stats[0].1.failures), (1, 1, 0));
    // The active slot saw no failure or fallback.
    assert!(with.stats().iter().all(|(_, s)| s.failures == 0 && s.fallbacks == 0));
}

fn dummy_bounds() -> aggregator_policy::kinds::time_bounds::Bounds {
    aggregator_policy::kinds::time_bounds::Bounds {
        not_before_ms: 0,
        not_after_ms: 1,
        note: String::new(),
    }
}

#[test]
fn a_trapping_candidate_changes_only_its_counter() {
    let dir = common::scratch("shadow-traps");
    let settings = vec![("misbehave".to_string(), "panic".to_string())];
    let with = policies(dir.path(), &common::guest("hostile", &[]), settings.clone());
    let mut input = selection_input(64);
    input.current = vec![1, 2];
    let active = with.select_peers(input).unwrap();
    let shadow = with.shadow::<PeerSelection>(&active.input, &active.value).unwrap();
    assert!(shadow.decision.is_none() && shadow.comparison.is_none());
    let error = shadow.error.expect("the candidate trapped").to_string();
    assert!(error.contains("panics on purpose"), "{error}");
    let stats = with.shadow_stats();
    assert_eq!((stats[0].1.calls, stats[0].1.failures), (1, 1));
    assert!(with.stats().iter().all(|(_, s)| s.failures == 0 && s.fallbacks == 0));
}

#[test]
fn a_candidate_that_fails_its_checks_is_left_out_and_the_policies_load() {
    let dir = common::scratch("shadow-refused");
    let with = policies(dir.path(), &common::guest("hostile", &["selfcheck-spin"]), vec![]);
    let refusals = with.shadow_refusals();
    assert_eq!(refusals.len(), 1);
    assert!(
        refusals[0].contains("peer-selection") && refusals[0].contains("fuel"),
        "{refusals:?}"
    );
    assert!(with.shadow_candidate(PolicyKind::PeerSelection).is_none());
    let active = with.select_peers(selection_input(8)).unwrap();
    assert!(with.shadow::<PeerSelection>(&active.input, &active.value).is_none());
    assert!(with.shadow_stats()[0].1.refused);
}
