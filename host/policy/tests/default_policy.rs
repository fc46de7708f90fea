//! The embedded `templar-default` component, run in wasmtime, against table-driven cases from the spec:
//! `update_peers` (§4.4), the time bounds (§2.3) and the catch-up metrics (§7.4).

mod common;

use common::update_peers::{self, Step, chain, list};

use aggregator_policy::kinds::catchup_verification::{ParamSample, VerifyInput};
use aggregator_policy::kinds::peer_selection::SelectionInput;
use aggregator_policy::kinds::time_bounds::BoundsInput;
use aggregator_policy::{EMBEDDED_DEFAULT, Loaded, PolicyError};

fn default() -> std::sync::Arc<Loaded> {
    common::engine()
        .load(EMBEDDED_DEFAULT, "embedded:templar-default")
        .expect("the default loads")
}

/// Runs a table on the default: Templar's peers, and no weights (every peer 1.0).
fn run(config: &[(&str, &str)], steps: &[Step]) {
    for sel in update_peers::run_on(common::engine(), &default(), &[], config, steps) {
        assert!(sel.weights.is_none(), "Templar weighs every peer 1.0");
    }
}

#[test]
fn start_up_takes_the_previous_list_then_switches_when_the_newest_is_effective() {
    update_peers::start_up_takes_the_previous_list_then_switches_when_the_newest_is_effective(&run);
}

#[test]
fn a_single_posted_list_means_no_peers_until_it_is_effective() {
    update_peers::a_single_posted_list_means_no_peers_until_it_is_effective(&run);
}

#[test]
fn the_next_list_is_fetched_only_past_the_margin() {
    update_peers::the_next_list_is_fetched_only_past_the_margin(&run);
}

#[test]
fn an_older_or_equal_list_is_ignored_and_frequency_is_configurable() {
    update_peers::an_older_or_equal_list_is_ignored_and_frequency_is_configurable(&run);
}

fn bounds(ts: Option<u64>, now: u64, config: &[(&str, &str)]) -> Result<(u64, u64, String), PolicyError> {
    let input = BoundsInput {
        chain: chain(1000),
        sync_block: 7007,
        sync_timestamp_ms: ts,
        now_ms: now,
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    common::engine()
        .bounds(&default(), &input)
        .map(|c| (c.value.not_before_ms, c.value.not_after_ms, c.value.note))
}

#[test]
fn time_bounds_follow_the_chain_timestamp_with_a_configurable_fallback() {
    let t = 1_745_000_000_123;
    let now = 1_745_000_100_000;
    assert_eq!(
        bounds(Some(t), now, &[]).unwrap().0..=bounds(Some(t), now, &[]).unwrap().1,
        t..=t + 10_000
    );
    assert_eq!(
        bounds(Some(t), now, &[("time_window_delta_seconds", "20")]).unwrap().1,
        t + 20_000
    );
    let (lo, hi, note) = bounds(None, now, &[]).unwrap();
    assert_eq!((lo, hi), (now - 1_800_000, now + 1_800_000));
    assert!(note.contains("fallback"), "{note}");
    assert_eq!(
        bounds(None, now, &[("timestamp_fallback_seconds", "60")]).unwrap().0,
        now - 60_000
    );
    let err = bounds(None, now, &[("timestamp_fallback_seconds", "none")]).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Rejected { message, .. } if message.contains("disabled")),
        "{err}"
    );
    assert!(matches!(
        bounds(Some(t), now, &[("time_window_delta_seconds", "ten")]),
        Err(PolicyError::Rejected { .. })
    ));
}

#[test]
fn catch_up_metrics_and_verdict() {
    let lr = 4e-4;
    let input = |samples: Vec<ParamSample>, lr: f64, config: Vec<(String, String)>| VerifyInput {
        window: 7,
        learning_rate: lr,
        samples,
        config,
    };
    let s = |index, local: &[f64], reference: &[f64]| ParamSample {
        index,
        local: local.to_vec(),
        reference: reference.to_vec(),
    };
    // Diffs: 2 lr, 0, 4 lr, -2 lr → sum|d| = 8 lr over 4 values: 2 steps behind on average, max 4.
    let samples = vec![
        s(0, &[1.0 + 2.0 * lr, 0.5], &[1.0, 0.5]),
        s(1, &[0.25 + 4.0 * lr, -0.5 - 2.0 * lr], &[0.25, -0.5]),
    ];
    let v = common::engine()
        .verify(&default(), &input(samples.clone(), lr, vec![]))
        .unwrap()
        .value;
    assert_eq!(v.count, 4);
    assert!(
        (v.avg_steps_behind - 2.0).abs() < 1e-9 && (v.max_steps_behind - 4.0).abs() < 1e-9,
        "{v:?}"
    );
    assert!((v.l2_norm - (24.0f64).sqrt() * lr).abs() < 1e-12 && (v.avg_l2_norm - v.l2_norm / 4.0).abs() < 1e-15);
    assert!(v.in_sync, "2 <= 3 steps");
    let strict = vec![("sync_max_steps_behind".to_string(), "1.5".to_string())];
    assert!(
        !common::engine()
            .verify(&default(), &input(samples, lr, strict))
            .unwrap()
            .value
            .in_sync
    );
    let empty = common::engine()
        .verify(&default(), &input(vec![], lr, vec![]))
        .unwrap()
        .value;
    assert!(empty.avg_steps_behind.is_infinite() && !empty.in_sync);
    let zero_lr = common::engine()
        .verify(&default(), &input(vec![s(0, &[1.0], &[1.0])], 0.0, vec![]))
        .unwrap()
        .value;
    assert!(zero_lr.max_steps_behind.is_infinite() && !zero_lr.in_sync);
    let mismatch = common::engine().verify(&default(), &input(vec![s(3, &[1.0, 2.0], &[1.0])], lr, vec![]));
    assert!(matches!(mismatch, Err(PolicyError::Rejected { message, .. }) if message.contains("#3")));
}

#[test]
fn a_saved_state_every_policy_refuses_is_dropped_for_that_call_and_named() {
    use aggregator_policy::{Policies, PolicyConfig};
    let policies = Policies::new(common::engine().clone(), PolicyConfig::default()).unwrap();
    let input = SelectionInput {
        chain: chain(100),
        neurons: vec![],
        current: vec![],
        latest: Some(list(&[4, 5], 101)),
        previous: Some(list(&[1, 2], 99)),
        state: vec![0xde, 0xad, 0xbe, 0xef],
        config: vec![],
    };
    let out = policies.select_peers(input.clone()).unwrap();
    assert_eq!(out.value.peers, [1, 2], "{}", out.value.note);
    let refused = out.state_reset.expect("the state was reset").to_string();
    assert!(
        refused.contains("state of 4 bytes is not templar-default's"),
        "{refused}"
    );
    // A state the policy reads is kept, and nothing is reset.
    let again = policies
        .select_peers(SelectionInput {
            state: out.value.state,
            current: out.value.peers,
            ..input
        })
        .unwrap();
    assert!(again.state_reset.is_none());
}

#[test]
fn settings_a_policy_cannot_parse_refuse_it_at_load_time() {
    use aggregator_policy::{Policies, PolicyConfig};
    for (key, value, interface) in [
        ("time_window_delta_seconds", "abc", "time-bounds"),
        ("time_window_delta_seconds", "-100", "time-bounds"),
        ("peer_replacement_frequency", "often", "peer-selection"),
        ("sync_max_steps_behind", "x", "catchup-verification"),
    ] {
        let config = PolicyConfig {
            settings: vec![(key.into(), value.into())],
            ..Default::default()
        };
        let e = Policies::new(common::engine().clone(), config)
            .err()
            .unwrap_or_else(|| panic!("{key} = {value:?} was accepted"))
            .to_string();
        assert!(e.contains(key) && e.contains(value) && e.contains(interface), "{e}");
    }
    let fine = PolicyConfig {
        settings: vec![("time_window_delta_seconds".into(), "4".into())],
        ..Default::default()
    };
    Policies::new(common::engine().clone(), fine).unwrap();
}
