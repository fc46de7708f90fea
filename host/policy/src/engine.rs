//! The wasmtime engine for policies: compile (with a cache), audit imports, load, and call in a fresh sandbox.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Instance, InstancePre, Linker};
use wasmtime::{Config, Engine, Store, Trap};

use crate::PolicyError;
use crate::bindings::Bundle;
use crate::bindings::exports::templar::policy::{catchup_verification, describe, peer_selection, time_bounds};
use crate::host::{HostState, PolicyLog};

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

/// The policy interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `peer-selection`.
    PeerSelection,
    /// `time-bounds`.
    TimeBounds,
    /// `catchup-verification`.
    CatchupVerification,
}

impl PolicyKind {
    /// All kinds.
    pub const ALL: [PolicyKind; 3] = [
        PolicyKind::PeerSelection,
        PolicyKind::TimeBounds,
        PolicyKind::CatchupVerification,
    ];
    /// The WIT interface name.
    pub fn interface(self) -> &'static str {
        match self {
            PolicyKind::PeerSelection => "peer-selection",
            PolicyKind::TimeBounds => "time-bounds",
            PolicyKind::CatchupVerification => "catchup-verification",
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
    pre: InstancePre<HostState>,
    describe: describe::GuestIndices,
    peer_selection: Option<peer_selection::GuestIndices>,
    time_bounds: Option<time_bounds::GuestIndices>,
    catchup_verification: Option<catchup_verification::GuestIndices>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({}, {:?})", self.name, self.version, self.origin, self.kinds)
    }
}

impl Loaded {
    /// `name version`.
    pub fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
    /// Whether it exports `kind`.
    pub fn provides(&self, kind: PolicyKind) -> bool {
        self.kinds.contains(&kind)
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
    fn accepted(self, l: &Loaded) -> Result<Called<T>, PolicyError> {
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

/// Whether a policy may import `name` (`package:namespace/interface@version`).
pub fn import_allowed(name: &str) -> bool {
    let (iface, version) = name.split_once('@').unwrap_or((name, ""));
    match iface {
        "templar:policy/log" | "templar:policy/types" => version.starts_with("1."),
        "wasi:io/poll"
        | "wasi:io/error"
        | "wasi:io/streams"
        | "wasi:cli/environment"
        | "wasi:cli/exit"
        | "wasi:cli/stdin"
        | "wasi:cli/stdout"
        | "wasi:cli/stderr"
        | "wasi:cli/terminal-input"
        | "wasi:cli/terminal-output"
        | "wasi:cli/terminal-stdin"
        | "wasi:cli/terminal-stdout"
        | "wasi:cli/terminal-stderr"
        | "wasi:clocks/wall-clock"
        | "wasi:clocks/monotonic-clock"
        | "wasi:random/random"
        | "wasi:random/insecure"
        | "wasi:random/insecure-seed" => version.starts_with("0.2."),
        _ => false,
    }
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
    /// native code.
    fn compile(&self, wasm: &[u8], origin: &str) -> Result<Component, PolicyError> {
        let compile_err = |e: wasmtime::Error| PolicyError::Compile {
            origin: origin.into(),
            reason: format!("{e:#}"),
        };
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, wasm).map_err(compile_err);
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let path = dir.join(format!("{}-{:016x}.cwasm", hex(&Sha256::digest(wasm)), h.finish()));
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

    /// Compiles, audits and type-checks a component, then runs its `self-check` and the host's golden inputs under
    /// the call limits. Never touches any policy in use.
    pub fn load(&self, wasm: &[u8], origin: &str) -> Result<Arc<Loaded>, PolicyError> {
        let component = self.compile(wasm, origin)?;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&self.engine).map(|(n, _)| n.to_string()).collect();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(n, _)| n.to_string()).collect();
        if let Some(bad) = imports.iter().find(|i| !import_allowed(i)) {
            return Err(PolicyError::ImportNotAllowed {
                origin: origin.into(),
                import: bad.clone(),
            });
        }
        let wrong = |reason: String| PolicyError::WrongInterface {
            origin: origin.into(),
            reason,
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| wrong(format!("{e:#}")))?;
        let describe = describe::GuestIndices::new(&pre)
            .map_err(|e| wrong(format!("no usable describe export ({e:#}); exports: {exports:?}")))?;
        let peer_selection = peer_selection::GuestIndices::new(&pre).ok();
        let time_bounds = time_bounds::GuestIndices::new(&pre).ok();
        let catchup_verification = catchup_verification::GuestIndices::new(&pre).ok();
        let mut kinds = Vec::new();
        for (kind, present) in PolicyKind::ALL.into_iter().zip([
            peer_selection.is_some(),
            time_bounds.is_some(),
            catchup_verification.is_some(),
        ]) {
            if present {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err(wrong(format!(
                "exports none of peer-selection, time-bounds, catchup-verification @1.x; exports: {exports:?}"
            )));
        }
        let mut loaded = Loaded {
            name: String::new(),
            version: String::new(),
            origin: origin.into(),
            sha256: hex(&Sha256::digest(wasm)),
            kinds,
            exports,
            imports,
            pre,
            describe,
            peer_selection,
            time_bounds,
            catchup_verification,
        };
        let info = self
            .call(&loaded, origin, |store, instance, l| {
                l.describe.load(&mut *store, instance)?.call_describe(&mut *store)
            })
            .map_err(|e| PolicyError::SelfCheck {
                origin: origin.into(),
                reason: e.to_string(),
            })?
            .value;
        (loaded.name, loaded.version) = (info.name, info.version);
        let checked = self
            .call(&loaded, origin, |store, instance, l| {
                l.describe.load(&mut *store, instance)?.call_self_check(&mut *store)
            })
            .map_err(|e| PolicyError::SelfCheck {
                origin: origin.into(),
                reason: e.to_string(),
            })?;
        checked.value.map_err(|reason| PolicyError::SelfCheck {
            origin: origin.into(),
            reason,
        })?;
        crate::golden::check(self, &loaded)?;
        Ok(Arc::new(loaded))
    }

    /// Reads and loads a component file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<Loaded>, PolicyError> {
        let wasm = std::fs::read(path).map_err(|e| PolicyError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.load(&wasm, &path.display().to_string())
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

    /// Calls `peer-selection.select`.
    pub fn select(
        &self,
        l: &Loaded,
        input: &peer_selection::SelectionInput,
    ) -> Result<Called<peer_selection::Selection>, PolicyError> {
        let idx = l
            .peer_selection
            .as_ref()
            .ok_or_else(|| not_provided(l, PolicyKind::PeerSelection))?;
        let called = self.call(l, &l.label(), |s, i, _| {
            idx.load(&mut *s, i)?.call_select(&mut *s, input)
        })?;
        let called = called.accepted(l)?;
        let value = &called.value;
        check_selection(l, value)?;
        Ok(called)
    }

    /// Calls `time-bounds.compute`.
    pub fn bounds(
        &self,
        l: &Loaded,
        input: &time_bounds::BoundsInput,
    ) -> Result<Called<time_bounds::Bounds>, PolicyError> {
        let idx = l
            .time_bounds
            .as_ref()
            .ok_or_else(|| not_provided(l, PolicyKind::TimeBounds))?;
        let called = self.call(l, &l.label(), |s, i, _| {
            idx.load(&mut *s, i)?.call_compute(&mut *s, input)
        })?;
        let called = called.accepted(l)?;
        let value = &called.value;
        if value.not_before_ms > value.not_after_ms {
            return Err(PolicyError::InvalidOutput {
                policy: l.label(),
                reason: format!(
                    "not-before {} is after not-after {}",
                    value.not_before_ms, value.not_after_ms
                ),
            });
        }
        Ok(called)
    }

    /// Calls `catchup-verification.verify`.
    pub fn verify(
        &self,
        l: &Loaded,
        input: &catchup_verification::VerifyInput,
    ) -> Result<Called<catchup_verification::Verdict>, PolicyError> {
        let idx = l
            .catchup_verification
            .as_ref()
            .ok_or_else(|| not_provided(l, PolicyKind::CatchupVerification))?;
        let called = self.call(l, &l.label(), |s, i, _| {
            idx.load(&mut *s, i)?.call_verify(&mut *s, input)
        })?;
        let called = called.accepted(l)?;
        let v = &called.value;
        if [
            v.l2_norm,
            v.avg_l2_norm,
            v.avg_abs_diff,
            v.max_diff,
            v.avg_steps_behind,
            v.max_steps_behind,
        ]
        .iter()
        .any(|x| x.is_nan())
        {
            return Err(PolicyError::InvalidOutput {
                policy: l.label(),
                reason: "a metric is NaN".into(),
            });
        }
        Ok(called)
    }
}

fn not_provided(l: &Loaded, kind: PolicyKind) -> PolicyError {
    PolicyError::NotProvided {
        policy: l.label(),
        interface: kind.interface(),
    }
}

/// Largest selection accepted from a policy.
pub const MAX_PEERS: usize = 4096;
/// Largest state a policy may keep.
pub const MAX_STATE_BYTES: usize = 1 << 20;

fn check_selection(l: &Loaded, s: &peer_selection::Selection) -> Result<(), PolicyError> {
    let invalid = |reason: String| PolicyError::InvalidOutput {
        policy: l.label(),
        reason,
    };
    if s.peers.len() > MAX_PEERS {
        return Err(invalid(format!("{} peers (limit {MAX_PEERS})", s.peers.len())));
    }
    if s.state.len() > MAX_STATE_BYTES {
        return Err(invalid(format!(
            "{} bytes of state (limit {MAX_STATE_BYTES})",
            s.state.len()
        )));
    }
    if let Some(w) = &s.weights {
        if w.len() != s.peers.len() {
            return Err(invalid(format!("{} weights for {} peers", w.len(), s.peers.len())));
        }
        if let Some(bad) = w.iter().find(|x| !x.is_finite() || **x < 0.0) {
            return Err(invalid(format!("weight {bad} is not finite and >= 0")));
        }
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
