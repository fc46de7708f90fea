//! Python policy components, built with componentize-py (installed from PyPI on first use, like SeaweedFS), run
//! under the same sandbox as Rust ones: the Python example follows the same `update_peers` tables as the Rust
//! default (their rules coincide on the peers), adds its stake weights, and a hostile Python plugin (an endless
//! loop, a huge allocation, files, sockets) is stopped by the limits or finds nothing outside. All under the
//! default limits: the example needs about 3.5 million fuel and 5 ms per call.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use aggregator_policy::golden::selection_input;
use aggregator_policy::kinds::peer_selection::SelectionInput;
use aggregator_policy::types::Neuron;
use aggregator_policy::{Loaded, Policies, PolicyConfig, PolicyEngine, PolicyError, PolicyKind, PolicyLimits};
use common::update_peers::{self, Step, chain, list};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python(dir: &Path, world: &str) -> Vec<u8> {
    aggregator_testkit::python::build(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        dir,
        "app",
        &root().join("wit/policy.wit"),
        world,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The default limits, with a compiled-code cache shared by this binary's test processes (compiling CPython's
/// 18 MB takes seconds).
fn engine() -> &'static PolicyEngine {
    static E: OnceLock<PolicyEngine> = OnceLock::new();
    E.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-cwasm-cache");
        PolicyEngine::new(PolicyLimits::default(), Some(cache)).expect("engine")
    })
}

fn example() -> Arc<Loaded> {
    let wasm = python(&root().join("components/python-stake-weighted"), "peer-selector");
    engine()
        .load(&wasm, "python-stake-weighted")
        .expect("the Python example loads")
}

fn hostile() -> Arc<Loaded> {
    let wasm = python(&root().join("host/policy/tests/guests-py/hostile"), "peer-selector");
    engine()
        .load(&wasm, "python-hostile")
        .expect("the hostile Python plugin passes its checks")
}

#[test]
fn the_python_example_follows_the_same_update_peers_tables_as_the_rust_default() {
    let policy = example();
    assert_eq!(
        (policy.name.as_str(), policy.version.as_str()),
        ("python-stake-weighted", "0.1.0")
    );
    for (name, table) in update_peers::ALL {
        let run = |config: &[(&str, &str)], steps: &[Step]| {
            for sel in update_peers::run_on(engine(), &policy, &[], config, steps) {
                // No neuron has stake here: no weights, as the default.
                assert!(sel.weights.is_none(), "{name}: {:?}", sel.weights);
            }
        };
        table(&run);
    }
}

#[test]
fn the_python_example_weighs_peers_by_stake_within_bounds() {
    let policy = example();
    let neuron = |uid, stake| Neuron {
        uid,
        stake,
        incentive: 0.0,
        has_bucket: true,
    };
    // Mean stake of [1, 2, 3] is 100: weights 0.5, 1.5, 1.0.
    let neurons = [neuron(1, 50.0), neuron(2, 150.0), neuron(3, 100.0), neuron(4, 1e9)];
    let steps = [Step {
        window: 100,
        latest: None,
        previous: Some(list(&[1, 2, 3], 99)),
        expect: &[1, 2, 3],
    }];
    let sel = update_peers::run_on(engine(), &policy, &neurons, &[], &steps);
    assert_eq!(sel[0].weights, Some(vec![0.5, 1.5, 1.0]));
    let steps = [Step {
        window: 100,
        latest: None,
        previous: Some(list(&[1, 9], 99)),
        expect: &[1, 9],
    }];
    let sel = update_peers::run_on(engine(), &policy, &neurons, &[], &steps);
    // Mean stake 25: uid 1 counts 2.0; uid 9 (no stake, not in the metagraph) is clamped up to 1/64.
    assert_eq!(sel[0].weights, Some(vec![2.0, 1.0 / 64.0]));
    let sel = update_peers::run_on(engine(), &policy, &neurons, &[("weighting", "none")], &steps);
    assert_eq!(sel[0].weights, None);
    let input = SelectionInput {
        chain: chain(100),
        config: vec![("weighting".into(), "loud".into())],
        ..selection_input(4)
    };
    let err = engine().select(&policy, &input).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Rejected { message, .. } if message.contains("weighting")),
        "{err}"
    );
}

/// The hostile plugin's answer when told to `misbehave = mode` with peers already chosen.
fn misbehave(policy: &Loaded, mode: &str) -> Result<Vec<u16>, PolicyError> {
    let input = SelectionInput {
        current: vec![1, 2],
        config: vec![("misbehave".into(), mode.into())],
        ..selection_input(8)
    };
    engine().select(policy, &input).map(|c| c.value.peers)
}

#[test]
fn a_hostile_python_plugin_is_stopped_by_the_limits_and_reaches_nothing_outside() {
    let policy = hostile();
    assert_eq!(misbehave(&policy, "").unwrap().len(), 3);
    let spin = misbehave(&policy, "spin").unwrap_err();
    assert!(
        matches!(spin, PolicyError::OutOfFuel { .. } | PolicyError::Timeout { .. }),
        "{spin}"
    );
    let oom = misbehave(&policy, "oom").unwrap_err();
    assert!(
        matches!(&oom, PolicyError::MemoryLimit { .. })
            || matches!(&oom, PolicyError::Trap { message, .. } | PolicyError::Rejected { message, .. } if message.contains("MemoryError")),
        "{oom}"
    );
    for mode in ["fs", "net", "raise"] {
        let err = misbehave(&policy, mode).unwrap_err();
        assert!(
            matches!(err, PolicyError::Trap { .. } | PolicyError::Rejected { .. }),
            "{mode}: {err}"
        );
        let text = err.to_string();
        assert!(
            !text.contains("allocated") && !text.contains("connected") && !text.contains("bytes of"),
            "{mode}: {text}"
        );
    }
    // The same instance-per-call sandbox: a later call is unaffected.
    assert_eq!(misbehave(&policy, "").unwrap().len(), 3);
}

/// A kind's own limits (`[policy.limits.<kind>]`) apply to the components serving that kind and to no other.
#[test]
fn limits_per_kind_apply_to_that_kind_only() {
    let dir = common::scratch("python-limits");
    let file = dir.path().join("python_stake_weighted.wasm");
    std::fs::write(
        &file,
        python(&root().join("components/python-stake-weighted"), "peer-selector"),
    )
    .unwrap();
    let tight = PolicyLimits {
        fuel: 100_000,
        ..PolicyLimits::default()
    };
    let config = |kind| PolicyConfig {
        components: [(PolicyKind::PeerSelection, file.clone())].into(),
        limits: [(kind, tight)].into(),
        ..Default::default()
    };
    let err = Policies::new(engine().clone(), config(PolicyKind::PeerSelection))
        .err()
        .expect("too little fuel for the Python selector");
    assert!(err.to_string().contains("fuel"), "{err}");
    let policies = Policies::new(engine().clone(), config(PolicyKind::TimeBounds)).unwrap();
    assert_eq!(policies.limits(PolicyKind::TimeBounds), tight);
    assert_eq!(policies.limits(PolicyKind::PeerSelection), PolicyLimits::default());
    assert_eq!(
        policies.current(PolicyKind::PeerSelection).name,
        "python-stake-weighted"
    );
}
