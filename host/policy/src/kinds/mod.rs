//! The policy kinds: one module per WIT interface, each holding everything the host knows about that kind (its
//! input and output types, re-exported from the private bindings; how to call it; how to validate its output; its
//! golden input). The rest of the crate (admission, the sandboxed call, fallback and hot swap) is generic over
//! [`Kind`].
//!
//! Adding a kind: the interface in `wit/policy.wit` (exported by the `bundle` world), a module here implementing
//! [`Kind`], and one line in each of [`PolicyKind`], [`PolicyKind::ALL`] and [`PolicyKind::visit`] below.

pub mod catchup_verification;
pub mod contribution_weighting;
pub mod peer_selection;
pub mod time_bounds;

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use crate::host::HostState;

/// A policy interface, by name. Code generic over the interface itself uses [`Kind`]; this enum is for places that
/// hold or print a kind at run time (slots, metrics labels, reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `peer-selection`.
    PeerSelection,
    /// `time-bounds`.
    TimeBounds,
    /// `catchup-verification`.
    CatchupVerification,
    /// `contribution-weighting` (since WIT 1.1.0).
    ContributionWeighting,
}

impl PolicyKind {
    /// Every kind, in the order slots and reports list them.
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::PeerSelection,
        PolicyKind::TimeBounds,
        PolicyKind::CatchupVerification,
        PolicyKind::ContributionWeighting,
    ];

    /// Runs `v` with the kind's [`Kind`] type: the one place that maps the enum to the types.
    pub(crate) fn visit<V: KindVisitor>(self, v: V) -> V::Out {
        match self {
            PolicyKind::PeerSelection => v.visit::<peer_selection::PeerSelection>(),
            PolicyKind::TimeBounds => v.visit::<time_bounds::TimeBounds>(),
            PolicyKind::CatchupVerification => v.visit::<catchup_verification::CatchupVerification>(),
            PolicyKind::ContributionWeighting => v.visit::<contribution_weighting::ContributionWeighting>(),
        }
    }

    /// The WIT interface name (`peer-selection`); also the metrics label.
    pub fn interface(self) -> &'static str {
        struct Name;
        impl KindVisitor for Name {
            type Out = &'static str;
            fn visit<K: Kind>(self) -> &'static str {
                K::INTERFACE
            }
        }
        self.visit(Name)
    }

    /// The WIT world that exports only this kind (and `describe`), e.g. `peer-selector`.
    pub fn world(self) -> &'static str {
        struct World;
        impl KindVisitor for World {
            type Out = &'static str;
            fn visit<K: Kind>(self) -> &'static str {
                K::WORLD
            }
        }
        self.visit(World)
    }

    /// The kind whose configuration key is `key` (`peer_selection`: the interface name with `_`).
    pub fn from_key(key: &str) -> Option<PolicyKind> {
        PolicyKind::ALL.into_iter().find(|k| k.key() == key)
    }

    /// The configuration key naming this kind's component (`peer_selection`).
    pub fn key(self) -> String {
        self.interface().replace('-', "_")
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.interface())
    }
}

/// Code run once per kind, with the kind as a type (see [`PolicyKind::visit`]).
pub(crate) trait KindVisitor {
    /// What the visit returns.
    type Out;
    /// The visit for kind `K`.
    fn visit<K: Kind>(self) -> Self::Out;
}

/// One policy interface as the host sees it. Implemented only in this crate (one module per kind); callers name a
/// kind by its type, e.g. `policies.call::<PeerSelection>(input)`.
pub trait Kind: sealed::Dispatch + Send + Sync + 'static {
    /// The run-time name.
    const KIND: PolicyKind;
    /// The WIT interface name.
    const INTERFACE: &'static str;
    /// The WIT world exporting only this kind.
    const WORLD: &'static str;
    /// The call's input record (serde: a window receipt records it, and `replay` calls the policy again with it).
    type Input: Clone + Send + Sync + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned + 'static;
    /// The decision record.
    type Output: Clone + Send + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned + 'static;
    /// The host's golden input for this kind and a short description of it: every candidate component must answer
    /// it, under the production limits, with a valid output before it may be used.
    fn golden() -> (&'static str, Self::Input);
    /// Replaces the input's `config` (the operator's settings).
    fn set_config(input: &mut Self::Input, config: Vec<(String, String)>);
    /// A one-line summary of a decision (for `plugin check` and logs).
    fn summary(output: &Self::Output) -> String;
    /// How decision `b` differs from `a`, one line per difference (peers added and removed, weights and bounds
    /// moved, state changed); empty when they are the same decision. Notes are prose and never compared.
    fn diff(a: &Self::Output, b: &Self::Output) -> Vec<String>;
    /// How decision `b` (a shadow candidate's) compares with `a` (the active policy's), as figures for metrics and
    /// the receipt; [`Comparison::differences`] is [`Kind::diff`].
    fn compare(a: &Self::Output, b: &Self::Output) -> Comparison {
        Comparison {
            differences: Self::diff(a, b),
            ..Comparison::default()
        }
    }
}

/// How a shadow candidate's decision compares with the active policy's on the same input. Fields that do not apply
/// to a kind are left out (`None`, empty).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// One line per difference ([`Kind::diff`]); empty when the decisions are the same.
    pub differences: Vec<String>,
    /// Peer selection: uids the candidate selected and the active policy did not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_added: Vec<u16>,
    /// Peer selection: uids the active policy selected and the candidate did not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_removed: Vec<u16>,
    /// Peer selection: |both| / |either| of the two peer sets (1 when both are empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jaccard: Option<f64>,
    /// Peer selection: peers in both selections whose weight differs (none given counts as 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_changed: Option<u32>,
    /// Time bounds: candidate's `not-before` minus the active one's, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_moved_ms: Option<i64>,
    /// Time bounds: candidate's `not-after` minus the active one's, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_moved_ms: Option<i64>,
}

impl Comparison {
    /// Whether the two decisions are the same.
    pub fn same(&self) -> bool {
        self.differences.is_empty()
    }
}

/// The [`Kind::diff`] line for two decisions' `state` bytes, when they differ (the bytes are the policy's own, so
/// only their sizes are shown).
pub(crate) fn state_diff(a: &[u8], b: &[u8]) -> Option<String> {
    (a != b).then(|| format!("state: {} bytes -> {} bytes (different)", a.len(), b.len()))
}

pub(crate) mod sealed {
    use super::*;

    /// The parts of [`Kind`] that touch the generated bindings: private to this crate, so that the bindings stay
    /// an implementation detail (the trait is nameable only here, which also seals [`Kind`]).
    pub trait Dispatch {
        /// The export's indices in an instantiated component (`GuestIndices` of the generated bindings).
        type Indices: Send + Sync + 'static;
        /// The indices, if the component exports this kind's interface at a compatible version.
        fn indices(pre: &InstancePre<HostState>) -> Option<Self::Indices>;
        /// Calls the export.
        fn invoke(
            indices: &Self::Indices,
            store: &mut Store<HostState>,
            instance: &Instance,
            input: &<Self as super::Kind>::Input,
        ) -> wasmtime::Result<Result<<Self as super::Kind>::Output, String>>
        where
            Self: super::Kind;
        /// Checks a decision against its input beyond its type (lengths, ordering, finiteness); the reason names the
        /// field.
        fn check(input: &<Self as super::Kind>::Input, output: &<Self as super::Kind>::Output) -> Result<(), String>
        where
            Self: super::Kind;
    }
}

/// A WIT world of `templar:policy`: `bundle` (every kind) or one kind's own world (`peer-selector`, …). Parses
/// from and prints as its WIT name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `bundle`: exports every kind.
    Bundle,
    /// The world exporting only this kind.
    Only(PolicyKind),
}

impl World {
    /// Every world: `bundle`, then one per kind.
    pub fn all() -> Vec<World> {
        std::iter::once(World::Bundle)
            .chain(PolicyKind::ALL.into_iter().map(World::Only))
            .collect()
    }

    /// The WIT name.
    pub fn name(self) -> &'static str {
        match self {
            World::Bundle => "bundle",
            World::Only(k) => k.world(),
        }
    }

    /// The kinds a component of this world exports.
    pub fn kinds(self) -> Vec<PolicyKind> {
        match self {
            World::Bundle => PolicyKind::ALL.to_vec(),
            World::Only(k) => vec![k],
        }
    }

    /// The world whose kinds are exactly `kinds` (in [`PolicyKind::ALL`] order), if any.
    pub fn of(kinds: &[PolicyKind]) -> Option<World> {
        World::all().into_iter().find(|w| w.kinds() == kinds)
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for World {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        World::all().into_iter().find(|w| w.name() == s).ok_or_else(|| {
            let names: Vec<_> = World::all().into_iter().map(World::name).collect();
            format!("unknown world {s:?}; one of {}", names.join(", "))
        })
    }
}
