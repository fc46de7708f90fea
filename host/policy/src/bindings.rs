//! Host bindings for `wit/policy.wit` (world `bundle`). A component may export any subset of the policy
//! interfaces; the host resolves each export on its own (`GuestIndices`).

//! The generated types derive serde so that a window receipt records every policy input and decision as it was, and
//! `replay` and `plugin run` can call a component again with exactly that input.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "bundle",
    additional_derives: [serde::Serialize, serde::Deserialize],
});
