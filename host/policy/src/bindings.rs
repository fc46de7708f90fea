//! Host bindings for `wit/policy.wit` (world `bundle`). A component may export any subset of the policy
//! interfaces; the host resolves each export on its own (`GuestIndices`).

wasmtime::component::bindgen!({ path: "../../wit", world: "bundle" });
