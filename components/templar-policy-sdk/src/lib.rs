//! The guest SDK for `templar:policy@1.x` plugins written in Rust (built against 1.1.0).
//!
//! A complete peer-selection plugin:
//!
//! ```ignore
//! use templar_policy_sdk::{Config, Neurons, SelfCheck};
//! use world::{PeerSelection, Selection, SelectionInput};
//!
//! struct TopStake;
//!
//! impl PeerSelection for TopStake {
//!     fn select(input: SelectionInput) -> Result<Selection, String> {
//!         let max_peers: usize = Config::new(&input.config).get("max_peers", 10)?;
//!         let peers = Neurons::new(&input.neurons).top_by(max_peers, |n| n.has_bucket.then_some(n.stake));
//!         Ok(Selection { peers, weights: None, state: vec![], note: "top stake".into() })
//!     }
//! }
//!
//! impl SelfCheck for TopStake {}
//!
//! templar_policy_sdk::export!(peer_selector: TopStake);
//! ```
//!
//! What is here, and why each piece exists:
//! * [`export!`] makes the crate a component of one world: it defines a module `world` with the traits to implement
//!   and the world's input/output types, exports the type, and writes its `describe` from the crate's own name and
//!   version (a plugin only implements [`SelfCheck`], whose default passes); the shared record types ([`Neuron`],
//!   [`ChainView`], [`PostedList`]) are the SDK's own, the same in every plugin;
//! * [`Config`]: typed access to the operator's settings, with errors that name the key and the value;
//! * [`state`]: the opaque `state` bytes as a versioned serde value;
//! * [`WindowRng`]: randomness that every node draws identically for a window (the sandbox's WASI randomness is
//!   fixed, so `rand`'s OS-seeded generators would give the same numbers in every window);
//! * [`Neurons`]: lookups in the metagraph with deterministic tie-breaks;
//! * [`log`]: lines in the host's structured log;
//! * [`MIN_WEIGHT`], [`MAX_WEIGHT`], [`weight_ok`]: the weights the host accepts from a selection.
//!
//! The host's rules a plugin must live with (the sandbox): no files, no network, no environment, clocks frozen at
//! the Unix epoch, fixed WASI randomness, a fresh instance for every call, and per-call fuel, deadline and memory
//! limits. A call that breaks a limit or returns an invalid decision is answered by the host's fallback policy.

#![warn(missing_docs)]

mod config;
mod neurons;
mod rng;
pub mod state;

pub use config::{Config, ConfigError};
pub use neurons::Neurons;
pub use rng::WindowRng;

// The SDK's own generated code names its runtime by this crate's name (`runtime_path`), as plugins do.
extern crate self as templar_policy_sdk;

/// The shared interfaces (`types`, `log`), generated once for every plugin. World `bundle` is generated for them
/// with `pub_export_macro`, which leaves its exports out of the type information linked into a plugin: a plugin's
/// exports are those of the world it names in [`export!`].
#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "bundle",
        pub_export_macro: true,
        export_macro_name: "__unused_export_bundle",
        default_bindings_module: "templar_policy_sdk::__bindings",
        runtime_path: "templar_policy_sdk::__rt::rt",
    });
}

/// The runtime and macro the generated code uses, so that a plugin needs no `wit-bindgen` dependency of its own (and
/// cannot pick a different version of it).
#[doc(hidden)]
pub mod __rt {
    pub use wit_bindgen::generate;
    pub use wit_bindgen::rt;
}

include!(concat!(env!("OUT_DIR"), "/world_macro.rs"));

pub use __bindings::templar::policy::types::{ChainView, Neuron, PostedList};

/// A policy's own tests, run by the host before it loads the component (an `Err` keeps it from loading, naming the
/// reason). The default passes; override it to guard the rules that matter to you.
pub trait SelfCheck {
    /// Runs the checks.
    fn self_check() -> Result<(), String> {
        Ok(())
    }
}

/// Lines in the host's structured log. The host keeps a bounded number per call (100 by default) and truncates
/// each to 1 KiB; a guest's stdout and stderr are not logs (stderr is kept only to explain a trap).
pub mod log {
    pub use crate::__bindings::templar::policy::log::Level;
    use crate::__bindings::templar::policy::log::log;

    /// Logs at `debug`.
    pub fn debug(message: impl AsRef<str>) {
        log(Level::Debug, message.as_ref());
    }
    /// Logs at `info`.
    pub fn info(message: impl AsRef<str>) {
        log(Level::Info, message.as_ref());
    }
    /// Logs at `warn`.
    pub fn warn(message: impl AsRef<str>) {
        log(Level::Warn, message.as_ref());
    }
    /// Logs at `error`.
    pub fn error(message: impl AsRef<str>) {
        log(Level::Error, message.as_ref());
    }
}

/// The smallest non-zero weight the host accepts from a selection: 2^-20.
pub const MIN_WEIGHT: f32 = 1.0 / 1_048_576.0;
/// The largest weight the host accepts from a selection: 2^20.
pub const MAX_WEIGHT: f32 = 1_048_576.0;

/// Whether the host accepts `w` as a selection weight: exactly 0 (the peer is gathered and checked but does not move
/// the aggregate) or within [[`MIN_WEIGHT`], [`MAX_WEIGHT`]]. Any other weight makes the host refuse the whole
/// selection and fall back.
pub fn weight_ok(w: f32) -> bool {
    w == 0.0 || (MIN_WEIGHT..=MAX_WEIGHT).contains(&w)
}

/// Makes the plugin crate a component of one world, exporting `$ty`.
///
/// It defines a module `world` in the calling crate with the traits to implement and the world's own types, and
/// writes the component's `describe` from the crate's package name and version (`CARGO_PKG_NAME`,
/// `CARGO_PKG_VERSION`) and the world's policies; `self-check` calls `$ty`'s [`SelfCheck`].
///
/// | form | `world` holds |
/// |---|---|
/// | `export!(peer_selector: T)` | `PeerSelection`, `SelectionInput`, `Selection` |
/// | `export!(time_bounder: T)` | `TimeBounds`, `BoundsInput`, `Bounds` |
/// | `export!(catchup_verifier: T)` | `CatchupVerification`, `VerifyInput`, `ParamSample`, `Verdict` |
/// | `export!(contribution_weigher: T)` | `ContributionWeighting`, `WeightingInput`, `PeerEvidence`, `SimilarPeer`, `Weighting` |
/// | `export!(bundle: T)` | all of the above |
///
/// Invoke it once, at the crate root.
#[macro_export]
macro_rules! export {
    (peer_selector: $ty:ident) => {
        /// This plugin's world, `peer-selector` (generated by `templar_policy_sdk::export!`).
        mod world {
            $crate::__generate_world!("peer-selector", "crate::world");
            pub use self::exports::templar::policy::describe::{Guest as Describe, Info};
            pub use self::exports::templar::policy::peer_selection::{
                Guest as PeerSelection, Selection, SelectionInput,
            };
        }
        $crate::__describe!($ty, ["peer-selection"]);
        world::export!($ty);
    };
    (time_bounder: $ty:ident) => {
        /// This plugin's world, `time-bounder` (generated by `templar_policy_sdk::export!`).
        mod world {
            $crate::__generate_world!("time-bounder", "crate::world");
            pub use self::exports::templar::policy::describe::{Guest as Describe, Info};
            pub use self::exports::templar::policy::time_bounds::{Bounds, BoundsInput, Guest as TimeBounds};
        }
        $crate::__describe!($ty, ["time-bounds"]);
        world::export!($ty);
    };
    (catchup_verifier: $ty:ident) => {
        /// This plugin's world, `catchup-verifier` (generated by `templar_policy_sdk::export!`).
        mod world {
            $crate::__generate_world!("catchup-verifier", "crate::world");
            pub use self::exports::templar::policy::catchup_verification::{
                Guest as CatchupVerification, ParamSample, Verdict, VerifyInput,
            };
            pub use self::exports::templar::policy::describe::{Guest as Describe, Info};
        }
        $crate::__describe!($ty, ["catchup-verification"]);
        world::export!($ty);
    };
    (contribution_weigher: $ty:ident) => {
        /// This plugin's world, `contribution-weigher` (generated by `templar_policy_sdk::export!`).
        mod world {
            $crate::__generate_world!("contribution-weigher", "crate::world");
            pub use self::exports::templar::policy::contribution_weighting::{
                Guest as ContributionWeighting, PeerEvidence, SimilarPeer, Weighting, WeightingInput,
            };
            pub use self::exports::templar::policy::describe::{Guest as Describe, Info};
        }
        $crate::__describe!($ty, ["contribution-weighting"]);
        world::export!($ty);
    };
    (bundle: $ty:ident) => {
        /// This plugin's world, `bundle` (generated by `templar_policy_sdk::export!`).
        mod world {
            $crate::__generate_world!("bundle", "crate::world");
            pub use self::exports::templar::policy::catchup_verification::{
                Guest as CatchupVerification, ParamSample, Verdict, VerifyInput,
            };
            pub use self::exports::templar::policy::contribution_weighting::{
                Guest as ContributionWeighting, PeerEvidence, SimilarPeer, Weighting, WeightingInput,
            };
            pub use self::exports::templar::policy::describe::{Guest as Describe, Info};
            pub use self::exports::templar::policy::peer_selection::{
                Guest as PeerSelection, Selection, SelectionInput,
            };
            pub use self::exports::templar::policy::time_bounds::{Bounds, BoundsInput, Guest as TimeBounds};
        }
        $crate::__describe!(
            $ty,
            [
                "peer-selection",
                "time-bounds",
                "catchup-verification",
                "contribution-weighting"
            ]
        );
        world::export!($ty);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __describe {
    ($ty:ident, [$($policy:literal),*]) => {
        impl world::Describe for $ty {
            fn describe() -> world::Info {
                world::Info {
                    name: env!("CARGO_PKG_NAME").into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    policies: vec![$($policy.into()),*],
                }
            }
            fn self_check() -> Result<(), String> {
                <$ty as $crate::SelfCheck>::self_check()
            }
        }
    };
}
