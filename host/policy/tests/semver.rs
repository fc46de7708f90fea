//! Semver within 1.x, both ways it matters:
//! * a component built against `templar:policy@1.0.0` (the test guest `v1-0`, built from a copy of the 1.0.0 WIT)
//!   loads on this host (1.1.0) through the real admission, answers its kind, and the kind it predates
//!   (`contribution-weighting`) is answered by the embedded default;
//! * this host's own component (templar-default, built against 1.1.0) runs unchanged on a future 1.2 host (this test's
//!   `tests/wit-1.2`, where `log` gained a `metric` function): wasmtime matches semver-compatible names.

use aggregator_policy::EMBEDDED_DEFAULT;
use aggregator_policy::golden::selection_input;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod common;

mod v1_2 {
    wasmtime::component::bindgen!({ path: "tests/wit-1.2", world: "bundle" });
}
use v1_2::templar::policy::log::Level;
use v1_2::templar::policy::types::{ChainView, Neuron, PostedList};

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
}
impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
impl v1_2::templar::policy::log::Host for State {
    fn log(&mut self, _: Level, _: String) {}
    fn metric(&mut self, _: String, _: f64) {}
}
impl v1_2::templar::policy::types::Host for State {}

#[test]
fn a_1_1_plugin_runs_on_a_1_2_host() {
    let engine = Engine::new(&Config::new()).unwrap();
    let component = Component::new(&engine, EMBEDDED_DEFAULT).unwrap();
    let imports: Vec<String> = component
        .component_type()
        .imports(&engine)
        .map(|(n, _)| n.to_string())
        .collect();
    assert!(
        imports.iter().any(|i| i == "templar:policy/log@1.1.0"),
        "the plugin is built against 1.1.0: {imports:?}"
    );
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    v1_2::Bundle::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).unwrap();
    let pre = v1_2::BundlePre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let mut store = Store::new(
        &engine,
        State {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
        },
    );
    let bundle = pre.instantiate(&mut store).unwrap();
    // The 1.2 host's own types, built from the shared golden input.
    let g = selection_input(32);
    let input = v1_2::exports::templar::policy::peer_selection::SelectionInput {
        chain: ChainView {
            block: g.chain.block,
            window: g.chain.window,
            blocks_per_window: g.chain.blocks_per_window,
            netuid: g.chain.netuid,
        },
        neurons: g
            .neurons
            .iter()
            .map(|n| Neuron {
                uid: n.uid,
                stake: n.stake,
                incentive: n.incentive,
                has_bucket: n.has_bucket,
            })
            .collect(),
        current: vec![],
        latest: g.latest.as_ref().map(|l| PostedList {
            peers: l.peers.clone(),
            first_effective_window: l.first_effective_window,
            sync_window: l.sync_window,
        }),
        previous: g.previous.as_ref().map(|l| PostedList {
            peers: l.peers.clone(),
            first_effective_window: l.first_effective_window,
            sync_window: l.sync_window,
        }),
        state: vec![],
        config: vec![],
    };
    let out = bundle
        .templar_policy_peer_selection()
        .call_select(&mut store, &input)
        .unwrap()
        .unwrap();
    assert_eq!(out.peers, g.previous.unwrap().peers, "start-up takes the previous list");
    let info = bundle.templar_policy_describe().call_describe(&mut store).unwrap();
    assert_eq!(info.name, "templar-default");
}

#[test]
fn a_1_0_plugin_loads_on_this_1_1_host() {
    use aggregator_policy::{ContributionWeighting, PeerSelection, Policies, PolicyConfig, PolicyKind};

    let wasm = common::guest("v1-0", &[]);
    let engine = common::engine();
    let loaded = engine
        .load(&wasm, "v1-0")
        .expect("a 1.0 component passes admission on a 1.1 host");
    assert!(
        loaded
            .exports
            .iter()
            .any(|e| e == "templar:policy/peer-selection@1.0.0"),
        "{:?}",
        loaded.exports
    );
    assert_eq!(loaded.kinds, vec![PolicyKind::PeerSelection]);
    let out = engine.select(&loaded, &selection_input(16)).unwrap().value;
    assert_eq!(out.peers, vec![1, 2, 3], "{out:?}");

    // Configured as the daemon would: it answers peer selection; the kind it predates is the embedded default's.
    let dir = common::scratch("semver");
    let file = dir.path().join("v1-0.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let mut config = PolicyConfig::default();
    config.components.insert(PolicyKind::PeerSelection, file);
    let policies = Policies::new(common::engine().clone(), config).unwrap();
    let s = policies.call::<PeerSelection>(selection_input(16)).unwrap();
    assert_eq!((s.component.name.as_str(), s.fallback.is_none()), ("v1-0", true));
    let w = policies
        .call::<ContributionWeighting>(aggregator_policy::golden::weighting_input())
        .unwrap();
    assert_eq!(w.component.name, "templar-default");
    assert!(
        w.fallback.is_none(),
        "not a fallback: the default is that kind's policy"
    );
    assert_eq!(w.value.weights.len(), 15);
}
