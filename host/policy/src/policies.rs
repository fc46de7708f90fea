//! The policies in use: one slot per policy kind, with fallback and staged hot swap.
//!
//! Each slot has its current policy, the last good one (the policy it replaced), and the embedded default. A failed
//! call (trap, limit, error, invalid output) is retried on the last good policy, then on the default, and counted.
//! A configured file is watched; a changed file is loaded as a candidate (compile, audit, self-check, golden inputs)
//! and, if it passes, swapped in atomically at the next window boundary ([`Policies::begin_window`]). A candidate
//! that fails is rejected with its reason and the current policy stays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use sha2::{Digest, Sha256};

use crate::engine::{Called, ComponentId, Loaded, PolicyEngine, PolicyLimits, hex};
use crate::host::PolicyLog;
use crate::kinds::catchup_verification::{CatchupVerification, VerifyInput};
use crate::kinds::contribution_weighting::{ContributionWeighting, WeightingInput};
use crate::kinds::peer_selection::{PeerSelection, SelectionInput};
use crate::kinds::time_bounds::{BoundsInput, TimeBounds};
use crate::kinds::{Comparison, Kind, PolicyKind};
use crate::{EMBEDDED_DEFAULT, PolicyError};

/// Which component serves each policy kind, and the operator settings passed to every call as `config`.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// Component per kind; a kind not named here is served by the embedded `templar-default`.
    pub components: BTreeMap<PolicyKind, PathBuf>,
    /// `(key, value)` settings given to every policy.
    pub settings: Vec<(String, String)>,
    /// Call limits per kind, for the components serving it (active, fallbacks and shadow); a kind not named here
    /// runs under the engine's limits. What lets a Python component have the memory it needs without loosening the
    /// other kinds' limits.
    pub limits: BTreeMap<PolicyKind, PolicyLimits>,
    /// A shadow candidate per kind: run on the active policy's input every call, compared, never used
    /// ([`Policies::shadow`]).
    pub shadow: BTreeMap<PolicyKind, PathBuf>,
}

impl PolicyConfig {
    /// This configuration with `kind` served by the component at `path`.
    pub fn with(mut self, kind: PolicyKind, path: impl Into<PathBuf>) -> Self {
        self.components.insert(kind, path.into());
        self
    }
}

/// A policy call's result, with the input exactly as the policy received it (the operator's settings in `config`,
/// and an emptied `state` after a [`Outcome::state_reset`]).
#[derive(Debug, Clone)]
pub struct Outcome<K: Kind> {
    /// The input the decision was made on.
    pub input: K::Input,
    /// The decision.
    pub value: K::Output,
    /// `name version` of the policy that made it.
    pub policy: String,
    /// The component that made it.
    pub component: ComponentId,
    /// When the current policy failed and a fallback answered: why it failed.
    pub fallback: Option<PolicyError>,
    /// What the policy logged.
    pub logs: Vec<PolicyLog>,
    /// Fuel used.
    pub fuel_used: u64,
    /// When every policy refused the saved `state` and the call was made again with an empty one: the refusal.
    pub state_reset: Option<PolicyError>,
}

/// What happened to a watched component.
#[derive(Debug, Clone, PartialEq)]
pub enum SwapEvent {
    /// A new version passed every check and waits for the next window.
    Staged {
        /// The slot.
        kind: PolicyKind,
        /// `name version`.
        policy: String,
    },
    /// A new version failed a check; the current policy stays.
    Rejected {
        /// The slot.
        kind: PolicyKind,
        /// Why.
        reason: String,
    },
    /// A staged version became current.
    Swapped {
        /// The slot.
        kind: PolicyKind,
        /// The new `name version`.
        policy: String,
    },
}

/// Counters of one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotStats {
    /// Calls made.
    pub calls: u64,
    /// Calls on which the current policy failed.
    pub failures: u64,
    /// Failed calls answered by a fallback.
    pub fallbacks: u64,
    /// Hot swaps done.
    pub swaps: u64,
    /// Candidates rejected.
    pub rejections: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    failures: AtomicU64,
    fallbacks: AtomicU64,
    swaps: AtomicU64,
    rejections: AtomicU64,
}

/// A shadow candidate's answer to the active policy's input, and how it compares. The candidate's decision is never
/// used; its failure (an error, a trap, a limit, an invalid output) is recorded here and nowhere else.
#[derive(Debug, Clone)]
pub struct Shadow<K: Kind> {
    /// The candidate.
    pub component: ComponentId,
    /// Its decision, when it made a valid one.
    pub decision: Option<K::Output>,
    /// Why it made none.
    pub error: Option<PolicyError>,
    /// Fuel used (0 when it failed).
    pub fuel_used: u64,
    /// What it logged.
    pub logs: Vec<PolicyLog>,
    /// How its decision compares with the active one (none when it failed).
    pub comparison: Option<Comparison>,
}

/// Counters of one kind's shadow candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Calls made.
    pub calls: u64,
    /// Calls on which the candidate failed (error, trap, limit, invalid output).
    pub failures: u64,
    /// Calls on which it decided differently from the active policy.
    pub differed: u64,
    /// Whether the candidate was refused when the policies were loaded (its reason is in
    /// [`Policies::shadow_refusals`]).
    pub refused: bool,
}

#[derive(Default)]
struct ShadowCounters {
    calls: AtomicU64,
    failures: AtomicU64,
    differed: AtomicU64,
}

struct Slot {
    kind: PolicyKind,
    engine: PolicyEngine,
    shadow: Option<Arc<Loaded>>,
    shadow_refused: Option<String>,
    shadow_counters: ShadowCounters,
    current: ArcSwap<Loaded>,
    last_good: ArcSwapOption<Loaded>,
    default: Arc<Loaded>,
    pending: Mutex<Option<Arc<Loaded>>>,
    source: Option<PathBuf>,
    seen_hash: Mutex<Option<String>>,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slot {
    fn call<K: Kind>(
        &self,
        input: K::Input,
        f: impl Fn(&Loaded, &K::Input) -> Result<Called<K::Output>, PolicyError>,
    ) -> Result<Outcome<K>, PolicyError> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let done = |c: Called<K::Output>, l: &Loaded, fallback, input: K::Input| Outcome {
            input,
            value: c.value,
            policy: l.label(),
            component: l.id(),
            fallback,
            logs: c.logs,
            fuel_used: c.fuel_used,
            state_reset: None,
        };
        let current = self.current.load_full();
        let error = match f(&current, &input) {
            Ok(c) => return Ok(done(c, &current, None, input)),
            Err(e) => e,
        };
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        let mut tried = vec![Arc::as_ptr(&current)];
        for candidate in [self.last_good.load_full(), Some(self.default.clone())]
            .into_iter()
            .flatten()
        {
            if tried.contains(&Arc::as_ptr(&candidate)) || !candidate.provides(self.kind) {
                continue;
            }
            tried.push(Arc::as_ptr(&candidate));
            if let Ok(c) = f(&candidate, &input) {
                self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                return Ok(done(c, &candidate, Some(error), input));
            }
        }
        Err(error)
    }
}

/// The policies in use, one slot per [`PolicyKind`].
pub struct Policies {
    engine: PolicyEngine,
    slots: Vec<Slot>,
    settings: Vec<(String, String)>,
}

impl Policies {
    /// Loads the embedded default and every configured component. A configured component that fails to load is an
    /// error: the operator asked for it. So is one that fails its golden inputs with the operator's settings (a
    /// setting it cannot parse, say): it would fail every call. A shadow candidate that fails to load is not: it is
    /// left out, its reason kept ([`Policies::shadow_refusals`]), and the policies in use are unaffected.
    pub fn new(engine: PolicyEngine, config: PolicyConfig) -> Result<Self, PolicyError> {
        let default = engine.load(EMBEDDED_DEFAULT, "embedded:templar-default")?;
        let mut slots = Vec::new();
        for kind in PolicyKind::ALL {
            let engine = config
                .limits
                .get(&kind)
                .map_or_else(|| engine.clone(), |l| engine.with_limits(*l));
            let source = config.components.get(&kind).cloned();
            let (current, seen) = match &source {
                None => (default.clone(), None),
                Some(path) => {
                    let wasm = read(path)?;
                    let loaded = engine.load(&wasm, &path.display().to_string())?;
                    if !loaded.provides(kind) {
                        return Err(PolicyError::NotProvided {
                            policy: loaded.label(),
                            interface: kind.interface(),
                        });
                    }
                    (loaded, Some(hex(&Sha256::digest(&wasm))))
                }
            };
            engine.check_settings(&current, kind, &config.settings)?;
            let (shadow, shadow_refused) = match config.shadow.get(&kind) {
                None => (None, None),
                Some(path) => match load_for(&engine, path, kind, &config.settings) {
                    Ok(l) => (Some(l), None),
                    Err(e) => (None, Some(format!("shadow {} ({}): {e}", kind, path.display()))),
                },
            };
            slots.push(Slot {
                kind,
                engine: engine.clone(),
                shadow,
                shadow_refused,
                shadow_counters: ShadowCounters::default(),
                current: ArcSwap::new(current),
                last_good: ArcSwapOption::empty(),
                default: default.clone(),
                pending: Mutex::new(None),
                source,
                seen_hash: Mutex::new(seen),
                counters: Counters::default(),
            });
        }
        Ok(Self {
            engine,
            slots,
            settings: config.settings,
        })
    }

    fn slot(&self, kind: PolicyKind) -> &Slot {
        &self.slots[PolicyKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("every kind has a slot")]
    }

    /// The engine.
    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    /// The policy currently serving `kind`.
    pub fn current(&self, kind: PolicyKind) -> Arc<Loaded> {
        self.slot(kind).current.load_full()
    }

    /// Calls the policy serving kind `K` (the operator settings replace the input's `config`), falling back to the
    /// last good policy, then the embedded default, when it fails.
    pub fn call<K: Kind>(&self, mut input: K::Input) -> Result<Outcome<K>, PolicyError> {
        K::set_config(&mut input, self.settings.clone());
        let slot = self.slot(K::KIND);
        slot.call::<K>(input, |l, input| slot.engine.run::<K>(l, input))
    }

    /// Runs kind `K`'s shadow candidate, if one is configured, on `input` (the active call's input, as recorded in
    /// its [`Outcome`]) and compares its decision with `active`. Nothing the candidate does reaches the policies in
    /// use: its decision, failure and logs are only returned and counted.
    pub fn shadow<K: Kind>(&self, input: &K::Input, active: &K::Output) -> Option<Shadow<K>> {
        let slot = self.slot(K::KIND);
        let candidate = slot.shadow.as_ref()?;
        let c = &slot.shadow_counters;
        c.calls.fetch_add(1, Ordering::Relaxed);
        let mut shadow = Shadow {
            component: candidate.id(),
            decision: None,
            error: None,
            fuel_used: 0,
            logs: vec![],
            comparison: None,
        };
        match slot.engine.run::<K>(candidate, input) {
            Ok(called) => {
                let comparison = K::compare(active, &called.value);
                if !comparison.same() {
                    c.differed.fetch_add(1, Ordering::Relaxed);
                }
                shadow.comparison = Some(comparison);
                shadow.decision = Some(called.value);
                shadow.fuel_used = called.fuel_used;
                shadow.logs = called.logs;
            }
            Err(e) => {
                c.failures.fetch_add(1, Ordering::Relaxed);
                shadow.error = Some(e);
            }
        }
        Some(shadow)
    }

    /// The shadow candidate configured for `kind`, if it loaded.
    pub fn shadow_candidate(&self, kind: PolicyKind) -> Option<Arc<Loaded>> {
        self.slot(kind).shadow.clone()
    }

    /// Why configured shadow candidates were refused at load, one line each.
    pub fn shadow_refusals(&self) -> Vec<String> {
        self.slots.iter().filter_map(|s| s.shadow_refused.clone()).collect()
    }

    /// Counters of each kind's shadow candidate (kinds without one are left out).
    pub fn shadow_stats(&self) -> Vec<(PolicyKind, ShadowStats)> {
        self.slots
            .iter()
            .filter(|s| s.shadow.is_some() || s.shadow_refused.is_some())
            .map(|s| {
                let c = &s.shadow_counters;
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                (
                    s.kind,
                    ShadowStats {
                        calls: get(&c.calls),
                        failures: get(&c.failures),
                        differed: get(&c.differed),
                        refused: s.shadow_refused.is_some(),
                    },
                )
            })
            .collect()
    }

    /// The limits the components serving `kind` run under.
    pub fn limits(&self, kind: PolicyKind) -> PolicyLimits {
        self.slot(kind).engine.limits()
    }

    /// Selects the peers for a window ([`Policies::call`] for `peer-selection`). When every policy fails with a
    /// non-empty saved `state` (one a new policy version does not recognise, say), the call is made once more with
    /// an empty state, so that a bad state cannot fail every window; the outcome then names the refusal in
    /// `state_reset`.
    pub fn select_peers(&self, input: SelectionInput) -> Result<Outcome<PeerSelection>, PolicyError> {
        let has_state = !input.state.is_empty();
        self.call_resetting_state::<PeerSelection>(input, has_state, |i| SelectionInput { state: vec![], ..i })
    }

    /// Computes a window's upload time bounds ([`Policies::call`] for `time-bounds`).
    pub fn time_bounds(&self, input: BoundsInput) -> Result<Outcome<TimeBounds>, PolicyError> {
        self.call::<TimeBounds>(input)
    }

    /// Judges a catch-up comparison ([`Policies::call`] for `catchup-verification`).
    pub fn verify(&self, input: VerifyInput) -> Result<Outcome<CatchupVerification>, PolicyError> {
        self.call::<CatchupVerification>(input)
    }

    /// Weighs a window's gathered peers ([`Policies::call`] for `contribution-weighting`). As with
    /// [`Policies::select_peers`], a saved `state` that every policy refuses is dropped and the call made again.
    pub fn weigh(&self, input: WeightingInput) -> Result<Outcome<ContributionWeighting>, PolicyError> {
        let has_state = !input.state.is_empty();
        self.call_resetting_state::<ContributionWeighting>(input, has_state, |i| WeightingInput { state: vec![], ..i })
    }

    /// [`Policies::call`]; when every policy fails and the input carries a saved state (`has_state`), once more
    /// with `fresh(input)` (the state emptied), the outcome naming the refusal in `state_reset`.
    fn call_resetting_state<K: Kind>(
        &self,
        input: K::Input,
        has_state: bool,
        fresh: impl FnOnce(K::Input) -> K::Input,
    ) -> Result<Outcome<K>, PolicyError> {
        match self.call::<K>(input.clone()) {
            Err(refused) if has_state => match self.call::<K>(fresh(input)) {
                Ok(mut outcome) => {
                    outcome.state_reset = Some(refused);
                    Ok(outcome)
                }
                Err(_) => Err(refused),
            },
            other => other,
        }
    }

    /// Looks at every configured file; a changed one is checked and staged, or rejected.
    pub fn check_for_updates(&self) -> Vec<SwapEvent> {
        let mut events = Vec::new();
        for slot in &self.slots {
            let Some(path) = &slot.source else { continue };
            let Ok(wasm) = std::fs::read(path) else { continue };
            let hash = hex(&Sha256::digest(&wasm));
            if lock(&slot.seen_hash).as_deref() == Some(hash.as_str()) {
                continue;
            }
            *lock(&slot.seen_hash) = Some(hash);
            let result = load_bytes_for(&slot.engine, &wasm, path, slot.kind, &self.settings);
            match result {
                Ok(loaded) => {
                    events.push(SwapEvent::Staged {
                        kind: slot.kind,
                        policy: loaded.label(),
                    });
                    *lock(&slot.pending) = Some(loaded);
                }
                Err(e) => {
                    slot.counters.rejections.fetch_add(1, Ordering::Relaxed);
                    events.push(SwapEvent::Rejected {
                        kind: slot.kind,
                        reason: e.to_string(),
                    });
                }
            }
        }
        events
    }

    /// Called at a window boundary: staged candidates become current (the replaced policy becomes the last good one).
    pub fn begin_window(&self) -> Vec<SwapEvent> {
        let mut events = Vec::new();
        for slot in &self.slots {
            if let Some(next) = lock(&slot.pending).take() {
                let policy = next.label();
                let old = slot.current.swap(next);
                slot.last_good.store(Some(old));
                slot.counters.swaps.fetch_add(1, Ordering::Relaxed);
                events.push(SwapEvent::Swapped {
                    kind: slot.kind,
                    policy,
                });
            }
        }
        events
    }

    /// Counters per policy kind.
    pub fn stats(&self) -> Vec<(PolicyKind, SlotStats)> {
        self.slots
            .iter()
            .map(|s| {
                let c = &s.counters;
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                (
                    s.kind,
                    SlotStats {
                        calls: get(&c.calls),
                        failures: get(&c.failures),
                        fallbacks: get(&c.fallbacks),
                        swaps: get(&c.swaps),
                        rejections: get(&c.rejections),
                    },
                )
            })
            .collect()
    }

    /// Polls the configured files every `interval` on a background thread (ends when `self` is dropped). `on_event`
    /// receives staged and rejected candidates; swapping still waits for [`Policies::begin_window`].
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: Duration,
        on_event: impl Fn(SwapEvent) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        std::thread::spawn(move || {
            while let Some(p) = weak.upgrade() {
                for e in p.check_for_updates() {
                    on_event(e);
                }
                drop(p);
                std::thread::sleep(interval);
            }
        })
    }
}

/// Loads the component at `path` for `kind` with `engine`: it must export the kind and accept the settings.
fn load_for(
    engine: &PolicyEngine,
    path: &PathBuf,
    kind: PolicyKind,
    settings: &[(String, String)],
) -> Result<Arc<Loaded>, PolicyError> {
    load_bytes_for(engine, &read(path)?, path, kind, settings)
}

fn load_bytes_for(
    engine: &PolicyEngine,
    wasm: &[u8],
    path: &std::path::Path,
    kind: PolicyKind,
    settings: &[(String, String)],
) -> Result<Arc<Loaded>, PolicyError> {
    let l = engine.load(wasm, &path.display().to_string())?;
    if !l.provides(kind) {
        return Err(PolicyError::NotProvided {
            policy: l.label(),
            interface: kind.interface(),
        });
    }
    engine.check_settings(&l, kind, settings)?;
    Ok(l)
}

fn read(path: &PathBuf) -> Result<Vec<u8>, PolicyError> {
    std::fs::read(path).map_err(|e| PolicyError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}
