//! The policy runtime: peer selection, time bounds, catch-up verification and contribution weighting as sandboxed WebAssembly components
//! (the WIT contract is `wit/policy.wit`, package `templar:policy@1.1.0`).
//!
//! * [`kinds`]: one module per policy interface ([`Kind`]): its input and output types, how to call it, how its
//!   output is validated, and its golden input. Everything else is generic over the kind.
//! * [`PolicyEngine`]: wasmtime with fuel (deterministic budget), epoch deadlines (wall-clock backstop) and a memory
//!   limit; compiled code cached by wasm hash + engine compatibility hash; an **import audit** at load (only the
//!   package's own imports and the WASI interfaces a Rust guest needs, served by an empty, deterministic context);
//!   a fresh store and instance for every call; traps and limits become typed [`PolicyError`]s carrying the guest's
//!   panic message.
//! * [`Policies`]: the policies in use, with fallback (last good, then the embedded default), counters, and hot swap
//!   of watched files at window boundaries.
//! * [`EMBEDDED_DEFAULT`]: `components/templar-default`, built by this crate's build script and embedded.

// Generated from wit/policy.wit; private: the types callers need are re-exported by `kinds` and `types`.
mod admission;
#[allow(missing_docs)]
mod bindings;
mod engine;
mod error;
mod host;
pub mod kinds;
mod policies;

pub use admission::import_allowed;
pub use engine::{Called, ComponentId, Loaded, PolicyEngine, PolicyLimits};
pub use error::PolicyError;
pub use host::PolicyLog;
pub use kinds::catchup_verification::CatchupVerification;
pub use kinds::contribution_weighting::ContributionWeighting;
pub use kinds::peer_selection::{MAX_PEERS, MAX_STATE_BYTES, PeerSelection};
pub use kinds::time_bounds::TimeBounds;
pub use kinds::{Comparison, Kind, PolicyKind, World};
pub use policies::{Outcome, Policies, PolicyConfig, Shadow, ShadowStats, SlotStats, SwapEvent};

/// The records shared by several policy interfaces (`templar:policy/types`).
pub mod types {
    pub use crate::bindings::templar::policy::types::{ChainView, Neuron, PostedList};
}

/// The host's golden inputs, one per kind (each kind's module has its own; these are the names tests and tools use).
pub mod golden {
    pub use crate::kinds::catchup_verification::golden_input as verify_input;
    pub use crate::kinds::contribution_weighting::golden_input as weighting_input;
    pub use crate::kinds::peer_selection::golden_input as selection_input;
    pub use crate::kinds::time_bounds::golden_input as bounds_input;
}

/// `components/templar-default` (Templar 0.2.73's policies), compiled to a component by the build script.
pub const EMBEDDED_DEFAULT: &[u8] = include_bytes!(env!("TEMPLAR_DEFAULT_WASM"));
/// `components/example-rotation`, the third-party example, embedded for `plugin check` demos and tests.
pub const EXAMPLE_ROTATION: &[u8] = include_bytes!(env!("EXAMPLE_ROTATION_WASM"));
/// `components/example-robust`, the contribution-weighting example (copies and disagreeing peers left out), embedded
/// for `bench robust`, `plugin check` demos and tests.
pub const EXAMPLE_ROBUST: &[u8] = include_bytes!(env!("EXAMPLE_ROBUST_WASM"));
/// The WIT contract this host implements (`wit/policy.wit`, package `templar:policy@1.1.0`), as text: what `plugin new`
/// copies into a Python project for componentize-py.
pub const WIT: &str = include_str!("../../../wit/policy.wit");
