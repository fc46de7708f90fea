//! The policy runtime: peer selection, time bounds and catch-up verification as sandboxed WebAssembly components
//! (the WIT contract is `wit/policy.wit`, package `templar:policy@1.0.0`).
//!
//! * [`PolicyEngine`]: wasmtime with fuel (deterministic budget), epoch deadlines (wall-clock backstop) and a memory
//!   limit; compiled code cached by wasm hash + engine compatibility hash; an **import audit** at load (only the
//!   package's own imports and the WASI interfaces a Rust guest needs, served by an empty, deterministic context);
//!   a fresh store and instance for every call; traps and limits become typed [`PolicyError`]s carrying the guest's
//!   panic message.
//! * [`Policies`]: the policies in use, with fallback (last good, then the embedded default), counters, and hot swap
//!   of watched files at window boundaries.
//! * [`EMBEDDED_DEFAULT`]: `components/templar-default`, built by this crate's build script and embedded.

// Generated from wit/policy.wit, whose comments are the documentation of these items.
#[allow(missing_docs)]
pub mod bindings;
mod engine;
mod error;
pub mod golden;
mod host;
mod policies;

pub use engine::{Called, Loaded, MAX_PEERS, MAX_STATE_BYTES, PolicyEngine, PolicyKind, PolicyLimits, import_allowed};
pub use error::PolicyError;
pub use host::PolicyLog;
pub use policies::{Outcome, Policies, PolicyConfig, SlotStats, SwapEvent};

/// `components/templar-default` (Templar 0.2.73's policies), compiled to a component by the build script.
pub const EMBEDDED_DEFAULT: &[u8] = include_bytes!(env!("TEMPLAR_DEFAULT_WASM"));
/// `components/example-rotation`, the third-party example, embedded for `plugin check` demos and tests.
pub const EXAMPLE_ROTATION: &[u8] = include_bytes!(env!("EXAMPLE_ROTATION_WASM"));
