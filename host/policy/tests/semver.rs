//! A component built against `templar:policy@1.0.0` runs unchanged on a host whose package is 1.1.0 (this test's
//! `tests/wit-1.1`, where `log` gained a `metric` function): wasmtime matches semver-compatible names.

use aggregator_policy::EMBEDDED_DEFAULT;
use aggregator_policy::golden::selection_input;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod v1_1 {
    wasmtime::component::bindgen!({ path: "tests/wit-1.1", world: "bundle" });
}
use v1_1::templar::policy::log::Level;
use v1_1::templar::policy::types::{ChainView, Neuron, PostedList};

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
impl v1_1::templar::policy::log::Host for State {
    fn log(&mut self, _: Level, _: String) {}
    fn metric(&mut self, _: String, _: f64) {}
}
impl v1_1::templar::policy::types::Host for State {}

#[test]
fn a_1_0_plugin_runs_on_a_1_1_host() {
    let engine = Engine::new(&Config::new()).unwrap();
    let component = Component::new(&engine, EMBEDDED_DEFAULT).unwrap();
    let imports: Vec<String> = component
        .component_type()
        .imports(&engine)
        .map(|(n, _)| n.to_string())
        .collect();
    assert!(
        imports.iter().any(|i| i == "templar:policy/log@1.0.0"),
        "the plugin is built against 1.0.0: {imports:?}"
    );
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    v1_1::Bundle::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).unwrap();
    let pre = v1_1::BundlePre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let mut store = Store::new(
        &engine,
        State {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
        },
    );
    let bundle = pre.instantiate(&mut store).unwrap();
    // The 1.1 host's own types, built from the shared golden input.
    let g = selection_input(32);
    let input = v1_1::exports::templar::policy::peer_selection::SelectionInput {
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
