//! The sandbox: the wasmtime engine with its limits, compilation (with a cache), and one call on a fresh instance in
//! a fresh, limited store. What may be loaded is decided a layer above ([`crate::admission`]).

use std::any::Any;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Instance, InstancePre, Linker};
use wasmtime::{Config, Engine, Store, Trap};

use crate::PolicyError;
use crate::bindings::Bundle;
use crate::bindings::exports::templar::policy::describe;
use crate::host::{HostState, PolicyLog};
use crate::kinds::catchup_verification::{CatchupVerification, Verdict, VerifyInput};
use crate::kinds::contribution_weighting::{ContributionWeighting, Weighting, WeightingInput};
use crate::kinds::peer_selection::{PeerSelection, Selection, SelectionInput};
use crate::kinds::sealed::Dispatch;
use crate::kinds::time_bounds::{Bounds, BoundsInput, TimeBounds};
use crate::kinds::{Kind, PolicyKind};

/// How often the epoch ticks (the granularity of call deadlines).
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Resource limits of every policy call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Fuel per call: a deterministic instruction budget (the same on every node).
    pub fuel: u64,
    /// Wall-clock deadline per call (a backstop; rounded up to 10 ms ticks).
    pub deadline: Duration,
    /// Largest linear memory of a call, in bytes.
    pub memory_bytes: usize,
    /// Log lines kept per call.
    pub log_lines: usize,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            fuel: 100_000_000,
            deadline: Duration::from_millis(200),
            memory_bytes: 64 << 20,
            log_lines: 100,
        }
    }
}

/// A compiled, audited, self-checked component, ready to instantiate.
pub struct Loaded {
    /// Name from `describe`.
    pub name: String,
    /// Version from `describe`.
    pub version: String,
    /// Where it came from (file path or `embedded:…`).
    pub origin: String,
    /// SHA-256 of the wasm bytes (hex).
    pub sha256: String,
    /// The policies it exports.
    pub kinds: Vec<PolicyKind>,
    /// Export names (with versions), for reports.
    pub exports: Vec<String>,
    /// Import names (with versions), for reports.
    pub imports: Vec<String>,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) describe: describe::GuestIndices,
    /// Each exported kind's indices (`<K as Dispatch>::Indices`), found once at admission.
    pub(crate) indices: BTreeMap<PolicyKind, Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({}, {:?})", self.name, self.version, self.origin, self.kinds)
    }
}

/// Which component made a decision: what a window receipt records, and what `replay` looks for (by `sha256`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentId {
    /// Name from `describe`.
    pub name: String,
    /// Version from `describe`.
    pub version: String,
    /// SHA-256 of the wasm bytes (hex): the identity that counts (name and version are the author's claims).
    pub sha256: String,
    /// Where the host loaded it from (a path on the server, or `embedded:templar-default`).
    pub origin: String,
}

impl Loaded {
    /// Its identity.
    pub fn id(&self) -> ComponentId {
        ComponentId {
            name: self.name.clone(),
            version: self.version.clone(),
            sha256: self.sha256.clone(),
            origin: self.origin.clone(),
        }
    }

    /// `name version`.
    pub fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
    /// Whether it exports `kind`.
    pub fn provides(&self, kind: PolicyKind) -> bool {
        self.kinds.contains(&kind)
    }

    fn indices<K: Kind>(&self) -> Option<&<K as Dispatch>::Indices> {
        self.indices.get(&K::KIND)?.downcast_ref()
    }
}

/// A call's result with what the policy logged and the fuel it used.
#[derive(Debug, Clone)]
pub struct Called<R> {
    /// The value.
    pub value: R,
    /// Lines the policy logged.
    pub logs: Vec<PolicyLog>,
    /// Fuel consumed.
    pub fuel_used: u64,
}

impl<T> Called<Result<T, String>> {
    /// The policy's own `Ok` value, or its `Err` message as [`PolicyError::Rejected`]; logs and fuel are kept.
    pub(crate) fn accepted(self, l: &Loaded) -> Result<Called<T>, PolicyError> {
        let value = self.value.map_err(|message| PolicyError::Rejected {
            policy: l.label(),
            message,
        })?;
        Ok(Called {
            value,
            logs: self.logs,
            fuel_used: self.fuel_used,
        })
    }
}

/// The engine, linker and limits shared by all policies.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    limits: PolicyLimits,
    cache_dir: Option<PathBuf>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PolicyEngine({:?}, cache {:?})", self.limits, self.cache_dir)
    }
}

fn engine_err(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Engine(e.to_string())
}

impl PolicyEngine {
    /// An engine with fuel, epoch deadlines and memory limits; compiled code is cached in `cache_dir` if given.
    pub fn new(limits: PolicyLimits, cache_dir: Option<PathBuf>) -> Result<Self, PolicyError> {
        let mut cfg = Config::new();
        cfg.consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(512 << 10);
        let engine = Engine::new(&cfg).map_err(engine_err)?;
        // The ticker ends when the engine is dropped.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while let Some(e) = weak.upgrade() {
                    e.increment_epoch();
                    drop(e);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(engine_err)?;
        let mut linker = Linker::new(&engine);
        // WASI for the interfaces a Rust guest imports; the context itself is empty and deterministic.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
        Bundle::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(engine_err)?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            limits,
            cache_dir,
        })
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> PolicyLimits {
        self.limits
    }

    /// The same engine (compiled code, cache, linker) with other call limits: what a policy kind configured with its
    /// own limits (`[policy.limits.<kind>]`, e.g. for a Python component) runs under, without loosening them for
    /// the other kinds. Components loaded by either engine run on both.
    pub fn with_limits(&self, limits: PolicyLimits) -> Self {
        Self { limits, ..self.clone() }
    }

    pub(crate) fn wasmtime(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.linker
    }

    fn store(&self) -> Result<Store<HostState>, PolicyError> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(self.limits.memory_bytes, self.limits.log_lines),
        );
        store.limiter(|s| &mut s.limits);
        store.set_fuel(self.limits.fuel).map_err(engine_err)?;
        let ticks = self.limits.deadline.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        Ok(store)
    }

    /// Compiles `wasm`, through the on-disk cache when there is one. The cache key is the wasm's SHA-256 plus the
    /// engine's compatibility hash, and only this process writes the cache, so a third party can never supply
    /// native code. The cache also keeps each component's own bytes as `{sha256}.wasm`, so that
    /// `aggregator replay --components <cache>` finds the exact component a receipt names after its file changed.
    pub(crate) fn compile(&self, wasm: &[u8], origin: &str) -> Result<Component, PolicyError> {
        let compile_err = |e: wasmtime::Error| PolicyError::Compile {
            origin: origin.into(),
            reason: format!("{e:#}"),
        };
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, wasm).map_err(compile_err);
        };
        let sha = hex(&Sha256::digest(wasm));
        let original = dir.join(format!("{sha}.wasm"));
        if !original.is_file() && std::fs::create_dir_all(dir).is_ok() {
            let tmp = original.with_extension("wasm.tmp");
            if std::fs::write(&tmp, wasm).is_ok() {
                let _ = std::fs::rename(&tmp, &original);
            }
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let path = dir.join(format!("{sha}-{:016x}.cwasm", h.finish()));
        if path.is_file() {
            // SAFETY: files in the cache directory are written only by `precompile_component` below, from wasm this
            // engine compiled itself, under a key that includes the engine's compatibility hash.
            if let Ok(c) = unsafe { Component::deserialize_file(&self.engine, &path) } {
                return Ok(c);
            }
        }
        let bytes = self.engine.precompile_component(wasm).map_err(compile_err)?;
        if std::fs::create_dir_all(dir).is_ok() {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, &bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        // SAFETY: `bytes` was produced just now by this engine's `precompile_component`.
        unsafe { Component::deserialize(&self.engine, &bytes) }.map_err(compile_err)
    }

    /// Runs `f` on a fresh instance in a fresh, limited store; traps and limits become typed errors.
    pub(crate) fn call<R>(
        &self,
        loaded: &Loaded,
        label: &str,
        f: impl FnOnce(&mut Store<HostState>, &Instance, &Loaded) -> wasmtime::Result<R>,
    ) -> Result<Called<R>, PolicyError> {
        let mut store = self.store()?;
        let result = loaded
            .pre
            .instantiate(&mut store)
            .and_then(|instance| f(&mut store, &instance, loaded));
        match result {
            Ok(value) => {
                let fuel_used = self.limits.fuel - store.get_fuel().unwrap_or(0);
                let logs = std::mem::take(&mut store.data_mut().logs);
                Ok(Called { value, logs, fuel_used })
            }
            Err(e) => Err(self.classify(label, &e, store.data())),
        }
    }

    fn classify(&self, policy: &str, e: &wasmtime::Error, state: &HostState) -> PolicyError {
        let policy = policy.to_string();
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => {
                return PolicyError::OutOfFuel {
                    policy,
                    fuel: self.limits.fuel,
                };
            }
            Some(Trap::Interrupt) => {
                return PolicyError::Timeout {
                    policy,
                    millis: self.limits.deadline.as_millis() as u64,
                };
            }
            _ => {}
        }
        let text = format!("{e:#}");
        if text.contains("growing memory") {
            return PolicyError::MemoryLimit {
                policy,
                limit: self.limits.memory_bytes,
            };
        }
        let first = text.lines().next().unwrap_or("").to_string();
        let stderr = state.stderr_text();
        let message = if stderr.is_empty() {
            first
        } else {
            format!("{first}; guest stderr: {stderr}")
        };
        PolicyError::Trap { policy, message }
    }

    /// Calls kind `K`'s export on a fresh instance of `l`, then checks the decision ([`Kind`]'s validation): the
    /// policy's own `Err`, a trap, a limit or an invalid output is a [`PolicyError`] naming the policy.
    pub fn run<K: Kind>(&self, l: &Loaded, input: &K::Input) -> Result<Called<K::Output>, PolicyError> {
        let idx = l.indices::<K>().ok_or_else(|| PolicyError::NotProvided {
            policy: l.label(),
            interface: K::INTERFACE,
        })?;
        let called = self.call(l, &l.label(), |s, i, _| K::invoke(idx, s, i, input))?;
        let called = called.accepted(l)?;
        K::check(input, &called.value).map_err(|reason| PolicyError::InvalidOutput {
            policy: l.label(),
            reason,
        })?;
        Ok(called)
    }

    /// [`PolicyEngine::run`] for `peer-selection`.
    pub fn select(&self, l: &Loaded, input: &SelectionInput) -> Result<Called<Selection>, PolicyError> {
        self.run::<PeerSelection>(l, input)
    }

    /// [`PolicyEngine::run`] for `time-bounds`.
    pub fn bounds(&self, l: &Loaded, input: &BoundsInput) -> Result<Called<Bounds>, PolicyError> {
        self.run::<TimeBounds>(l, input)
    }

    /// [`PolicyEngine::run`] for `contribution-weighting`.
    pub fn weigh(&self, l: &Loaded, input: &WeightingInput) -> Result<Called<Weighting>, PolicyError> {
        self.run::<ContributionWeighting>(l, input)
    }

    /// [`PolicyEngine::run`] for `catchup-verification`.
    pub fn verify(&self, l: &Loaded, input: &VerifyInput) -> Result<Called<Verdict>, PolicyError> {
        self.run::<CatchupVerification>(l, input)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
