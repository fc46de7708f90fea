//! The `contribution-weighting` kind: the embedded default keeps the selection's weights, the robust example leaves
//! out copiers and dissenters (never a copy's victim), and a weigher that traps, spins or answers invalidly is
//! answered by the default and counted, the window unaffected.

mod common;

use aggregator_policy::golden::weighting_input;
use aggregator_policy::kinds::contribution_weighting::WeightingInput;
use aggregator_policy::{EXAMPLE_ROBUST, Policies, PolicyConfig, PolicyError, PolicyKind, PolicyLimits};

fn policies(dir: &std::path::Path, wasm: &[u8], settings: Vec<(String, String)>) -> Policies {
    try_policies(dir, wasm, settings).unwrap()
}

fn try_policies(dir: &std::path::Path, wasm: &[u8], settings: Vec<(String, String)>) -> Result<Policies, PolicyError> {
    let path = dir.join("weigher.wasm");
    common::install(&path, wasm);
    let config = PolicyConfig {
        settings,
        limits: [(
            PolicyKind::ContributionWeighting,
            PolicyLimits {
                deadline: std::time::Duration::from_millis(500),
                ..PolicyLimits::default()
            },
        )]
        .into(),
        ..PolicyConfig::default()
    }
    .with(PolicyKind::ContributionWeighting, path);
    Policies::new(common::engine().clone(), config)
}

fn in_window(window: u64) -> WeightingInput {
    let mut input = weighting_input();
    input.chain.window = window;
    input
}

fn fallbacks(p: &Policies) -> u64 {
    p.stats()
        .into_iter()
        .find(|(k, _)| *k == PolicyKind::ContributionWeighting)
        .unwrap()
        .1
        .fallbacks
}

#[test]
fn the_default_keeps_the_selection_weights() {
    let p = Policies::new(common::engine().clone(), PolicyConfig::default()).unwrap();
    let input = weighting_input();
    let out = p.weigh(input.clone()).unwrap();
    assert_eq!(out.component.name, "templar-default");
    let selection: Vec<f32> = input.peers.iter().map(|p| p.selection_weight).collect();
    assert_eq!(out.value.weights, selection);
}

#[test]
fn the_robust_example_leaves_out_the_copier_and_the_dissenter_only() {
    let dir = common::scratch("weighting-robust");
    let p = policies(dir.path(), EXAMPLE_ROBUST, vec![]);
    let out = p.weigh(weighting_input()).unwrap();
    assert_eq!(out.component.name, "example-robust");
    assert!(out.fallback.is_none(), "{:?}", out.fallback);
    for (e, w) in out.input.peers.iter().zip(&out.value.weights) {
        let expected = match e.uid {
            13 => 0.0, // sign flip
            14 => 0.0, // copied uid 3, two seconds later
            15 => 0.0, // selected at weight 0
            _ => 1.0,  // including uid 3, the victim
        };
        assert_eq!(*w, expected, "uid {}: {}", e.uid, out.value.note);
    }
    assert!(out.value.note.contains("uid 14 copies uid 3"), "{}", out.value.note);
    // A threshold from the operator's settings: 0.95 would leave out everyone, so no one is.
    let strict = policies(
        dir.path(),
        EXAMPLE_ROBUST,
        vec![("min_sign_agreement".into(), "0.95".into())],
    );
    let out = strict.weigh(weighting_input()).unwrap();
    assert!(out.value.note.contains("no one left out"), "{}", out.value.note);
    // A bad setting is refused when the policies load (admission runs the golden input with the settings).
    let Err(why) = try_policies(
        dir.path(),
        EXAMPLE_ROBUST,
        vec![("min_sign_agreement".into(), "high".into())],
    ) else {
        panic!("a bad setting loads");
    };
    assert!(why.to_string().contains("min_sign_agreement"), "{why}");
}

#[test]
fn a_trapping_slow_or_invalid_weigher_falls_back_and_is_counted() {
    let wasm = common::guest("hostile-weigher", &[]);
    let dir = common::scratch("weighting-hostile");
    for (how, expect) in [
        ("trap", "traps in window 1001"),
        ("spin", ""),
        ("weights", "weight NaN of uid 1"),
        ("zero", "16 weights for 15 peers"),
    ] {
        let p = policies(dir.path(), &wasm, vec![("misbehave".into(), how.into())]);
        // The golden input (window 1000) passed at load; window 1001 misbehaves.
        let out = p.weigh(in_window(1001)).unwrap();
        let error = out.fallback.as_ref().unwrap_or_else(|| panic!("{how}: no fallback"));
        assert_eq!(out.component.name, "templar-default", "{how}");
        assert!(error.to_string().contains(expect), "{how}: {error}");
        if how == "spin" {
            assert!(
                matches!(error, PolicyError::Timeout { .. } | PolicyError::OutOfFuel { .. }),
                "{how}: {error:?}"
            );
        }
        let selection: Vec<f32> = out.input.peers.iter().map(|p| p.selection_weight).collect();
        assert_eq!(out.value.weights, selection, "{how}: the default's answer");
        assert_eq!(fallbacks(&p), 1, "{how}: counted");
        // The next window's call is unaffected (a fresh instance), and behaves in window 1000.
        let again = p.weigh(in_window(1000)).unwrap();
        assert_eq!(again.component.name, "hostile-weigher", "{how}");
        assert!(again.fallback.is_none());
    }
}
