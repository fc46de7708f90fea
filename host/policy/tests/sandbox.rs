//! Hostile components, built from `tests/guests` by the test, are contained: a clear error, a stopped loop, an
//! unaffected host, the fallback used and counted.

mod common;

use std::time::{Duration, Instant};

use aggregator_policy::golden::selection_input;
use aggregator_policy::{EXAMPLE_ROTATION, Policies, PolicyConfig, PolicyError, PolicyKind};

/// WASI filesystem and sockets are served empty (language runtimes such as CPython import them whether or not a
/// policy uses them): a component that tries to read a file or open a connection gets an error inside the guest, so
/// its golden input fails and it is refused, naming what it tried. Imports outside WASI 0.2 are refused outright.
#[test]
fn files_and_sockets_are_unreachable_and_other_imports_are_refused_at_load() {
    let e = common::engine();
    for (features, needle) in [(&["fs"][..], "read /etc/passwd: Err"), (&["net"][..], "connect: Err")] {
        let err = e.load(&common::guest("hostile", features), "hostile").unwrap_err();
        assert!(
            matches!(&err, PolicyError::Golden { reason, .. } if reason.contains(needle)),
            "{features:?}: {err}"
        );
    }
    let err = e.load(&common::guest("evil-import", &[]), "evil").unwrap_err();
    assert!(
        matches!(&err, PolicyError::ImportNotAllowed { import, .. } if import.starts_with("templar:policy/network")),
        "{err}"
    );
    assert!(!aggregator_policy::import_allowed("wasi:http/outgoing-handler@0.2.0"));
    assert!(!aggregator_policy::import_allowed("wasi:filesystem/types@0.3.0"));
}

#[test]
fn a_wrong_interface_is_refused_at_load() {
    let err = common::engine()
        .load(&common::guest("wrong-interface", &[]), "wrong")
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::WrongInterface { reason, .. } if reason.contains("@2.0.0")),
        "{err}"
    );
    let err = common::engine().load(b"\0asm not really", "garbage").unwrap_err();
    assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
}

#[test]
fn a_self_check_that_never_ends_is_stopped_and_refused() {
    let t = Instant::now();
    let err = common::engine()
        .load(&common::guest("hostile", &["selfcheck-spin"]), "spinner")
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::SelfCheck { reason, .. } if reason.contains("fuel")),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "compile + stopped self-check took {:?}",
        t.elapsed()
    );
}

/// Weights the kernels would refuse (NaN, infinite, negative, below 2^-20 or above 2^20, wrong length) fail the call
/// in the policy, where it falls back (counted), not in the kernels after the gather; 0 and the range's ends pass.
#[test]
fn hostile_weights_fail_the_call_and_fall_back() {
    let dir = common::scratch("weights");
    let path = dir.path().join("hostile.wasm");
    common::install(&path, &common::guest("hostile", &[]));
    // A window after start-up (the hostile guest misbehaves only then) with `weights` for peers 1, 2, …
    let select = |weights: &str| {
        let config = PolicyConfig {
            components: [(PolicyKind::PeerSelection, path.clone())].into(),
            settings: vec![("misbehave".into(), format!("weights={weights}"))],
            ..Default::default()
        };
        let policies = Policies::new(common::engine().clone(), config).unwrap();
        let mut input = selection_input(64);
        input.current = vec![1];
        let out = policies.select_peers(input).unwrap();
        (out, policies.stats()[0].1.clone())
    };
    let refused = [
        ("1,NaN", "NaN"),
        ("1,-1", "-1"),
        ("inf,1", "inf"),
        ("1e-7", "0.0000001"),
        ("2e6,1", "2000000"),
        ("1,-0.000001", "-0.000001"),
    ];
    for (weights, shown) in refused {
        let (out, stats) = select(weights);
        let cause = out
            .fallback
            .unwrap_or_else(|| panic!("weights {weights} were accepted"));
        assert!(
            matches!(&cause, PolicyError::InvalidOutput { reason, .. } if reason.contains(shown) && reason.contains("not in [2^-20, 2^20]")),
            "{weights}: {cause}"
        );
        assert!(out.policy.starts_with("templar-default"));
        assert_eq!((stats.failures, stats.fallbacks), (1, 1), "{weights}");
    }
    for weights in ["0,1", "0.00000095367431640625,1048576", "0.5,2,0"] {
        let (out, stats) = select(weights);
        assert!(out.fallback.is_none(), "{weights}: {:?}", out.fallback);
        assert_eq!(stats.failures, 0);
        assert_eq!(
            out.input.config[0].1,
            format!("weights={weights}"),
            "the input as the policy saw it"
        );
        assert_eq!(out.component.name, "hostile");
    }
}

#[test]
fn misbehaving_calls_are_contained_and_fall_back_to_the_default() {
    let dir = common::scratch("sandbox");
    let path = dir.path().join("hostile.wasm");
    common::install(&path, &common::guest("hostile", &[]));
    type Expect = fn(&PolicyError) -> bool;
    let cases: [(&str, Expect); 5] = [
        ("spin", |e| matches!(e, PolicyError::OutOfFuel { .. })),
        ("oom", |e| matches!(e, PolicyError::MemoryLimit { .. })),
        (
            "panic",
            |e| matches!(e, PolicyError::Trap { message, .. } if message.contains("panics on purpose (window 1000)")),
        ),
        (
            "error",
            |e| matches!(e, PolicyError::Rejected { message, .. } if message.contains("refuses")),
        ),
        (
            "bad-weights",
            |e| matches!(e, PolicyError::InvalidOutput { reason, .. } if reason.contains("1 weights for 2 peers")),
        ),
    ];
    for (i, (mode, expected)) in cases.into_iter().enumerate() {
        let config = PolicyConfig {
            components: [(PolicyKind::PeerSelection, path.clone())].into(),
            settings: vec![("misbehave".into(), mode.into())],
            ..Default::default()
        };
        let policies = Policies::new(common::engine().clone(), config).unwrap();
        assert_eq!(policies.current(PolicyKind::PeerSelection).name, "hostile");
        // A window after start-up: the policy has peers, and misbehaves.
        let mut input = selection_input(256);
        input.current = vec![1, 2, 3];
        let t = Instant::now();
        let out = policies
            .select_peers(input)
            .unwrap_or_else(|e| panic!("{mode}: no fallback: {e}"));
        let took = t.elapsed();
        let cause = out
            .fallback
            .clone()
            .unwrap_or_else(|| panic!("{mode}: the hostile policy answered"));
        assert!(expected(&cause), "{mode}: {cause}");
        assert!(
            out.policy.starts_with("templar-default"),
            "{mode}: answered by {}",
            out.policy
        );
        if mode == "spin" {
            assert!(took < Duration::from_millis(200), "the loop ran {took:?}");
        }
        let stats = policies
            .stats()
            .into_iter()
            .find(|(k, _)| *k == PolicyKind::PeerSelection)
            .unwrap()
            .1;
        assert_eq!(
            (stats.calls, stats.failures, stats.fallbacks),
            (1, 1, 1),
            "{mode} (case {i})"
        );
        // The host is unaffected: the same policies serve the next call, and a well-behaved one still works.
        assert!(policies.select_peers(selection_input(16)).is_ok());
    }
    let normal = PolicyConfig {
        components: [(PolicyKind::PeerSelection, path.clone())].into(),
        ..Default::default()
    };
    let policies = Policies::new(common::engine().clone(), normal).unwrap();
    let out = policies.select_peers(selection_input(16)).unwrap();
    assert!(out.fallback.is_none());
    assert_eq!(out.value.peers, [0, 1, 2]);
}

#[test]
fn the_example_plugin_loads_and_weighs_its_peers() {
    let l = common::engine()
        .load(EXAMPLE_ROTATION, "embedded:example-rotation")
        .unwrap();
    assert_eq!(
        (l.name.as_str(), l.kinds.as_slice()),
        ("example-rotation", &[PolicyKind::PeerSelection][..])
    );
    let mut input = selection_input(64);
    input.config = vec![("max_peers".into(), "6".into()), ("core".into(), "4".into())];
    let s = common::engine().select(&l, &input).unwrap().value;
    assert_eq!(s.peers.len(), 6);
    assert_eq!(s.weights.as_deref(), Some(&[1.0, 1.0, 1.0, 1.0, 0.5, 0.5][..]));
    input.chain.window += 1;
    let next = common::engine().select(&l, &input).unwrap().value;
    assert_eq!(next.peers[..4], s.peers[..4], "core peers are stable");
    assert_ne!(next.peers[4..], s.peers[4..], "exploring peers rotate");
}
