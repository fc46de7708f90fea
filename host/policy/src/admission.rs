//! Admission: what may become a policy. A component is compiled, its imports audited, its exports type-checked
//! against each [`Kind`], its `describe` and `self-check` run, and every kind it exports answers the host's golden
//! input under the production limits, all before anything may use it. Built on the sandboxed call
//! ([`crate::engine`]), which knows nothing of these rules.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::PolicyError;
use crate::bindings::exports::templar::policy::describe;
use crate::engine::{Loaded, PolicyEngine, hex};
use crate::kinds::{Kind, KindVisitor, PolicyKind};

/// Whether a policy may import `name` (`package:namespace/interface@version`).
///
/// Besides the policy interfaces, the WASI 0.2 interfaces that language runtimes import whether or not a policy uses
/// them (Rust's std: cli, io, clocks, random; CPython via componentize-py: also filesystem and sockets). The host
/// serves them all *empty*: no preopened directories (no file can be opened), no environment or arguments, sockets
/// that may not be created (TCP, UDP and name lookup are all refused), clocks frozen at the Unix epoch and fixed
/// randomness ([`crate::host`]). Anything else (HTTP, custom imports) is refused at load time.
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
        | "wasi:random/insecure-seed"
        | "wasi:filesystem/types"
        | "wasi:filesystem/preopens"
        | "wasi:sockets/network"
        | "wasi:sockets/instance-network"
        | "wasi:sockets/tcp"
        | "wasi:sockets/tcp-create-socket"
        | "wasi:sockets/udp"
        | "wasi:sockets/udp-create-socket"
        | "wasi:sockets/ip-name-lookup" => version.starts_with("0.2."),
        _ => false,
    }
}

impl PolicyEngine {
    /// Compiles, audits and type-checks a component, then runs its `self-check` and the host's golden inputs under
    /// the call limits. Never touches any policy in use.
    pub fn load(&self, wasm: &[u8], origin: &str) -> Result<Arc<Loaded>, PolicyError> {
        let component = self.compile(wasm, origin)?;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(self.wasmtime()).map(|(n, _)| n.to_string()).collect();
        let exports: Vec<String> = ty.exports(self.wasmtime()).map(|(n, _)| n.to_string()).collect();
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
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| wrong(format!("{e:#}")))?;
        let describe = describe::GuestIndices::new(&pre)
            .map_err(|e| wrong(format!("no usable describe export ({e:#}); exports: {exports:?}")))?;
        struct Find<'a>(&'a wasmtime::component::InstancePre<crate::host::HostState>);
        impl KindVisitor for Find<'_> {
            type Out = Option<Box<dyn std::any::Any + Send + Sync>>;
            fn visit<K: Kind>(self) -> Self::Out {
                K::indices(self.0).map(|i| Box::new(i) as _)
            }
        }
        let indices: BTreeMap<_, _> = PolicyKind::ALL
            .into_iter()
            .filter_map(|k| Some((k, k.visit(Find(&pre))?)))
            .collect();
        if indices.is_empty() {
            let names: Vec<_> = PolicyKind::ALL.iter().map(|k| k.interface()).collect();
            return Err(wrong(format!(
                "exports none of {} @1.x; exports: {exports:?}",
                names.join(", ")
            )));
        }
        let mut loaded = Loaded {
            name: String::new(),
            version: String::new(),
            origin: origin.into(),
            sha256: hex(&Sha256::digest(wasm)),
            kinds: indices.keys().copied().collect(),
            exports,
            imports,
            pre,
            describe,
            indices,
        };
        let self_check = |e: PolicyError| PolicyError::SelfCheck {
            origin: origin.into(),
            reason: e.to_string(),
        };
        let info = self
            .call(&loaded, origin, |store, instance, l| {
                l.describe.load(&mut *store, instance)?.call_describe(&mut *store)
            })
            .map_err(self_check)?
            .value;
        (loaded.name, loaded.version) = (info.name, info.version);
        let checked = self
            .call(&loaded, origin, |store, instance, l| {
                l.describe.load(&mut *store, instance)?.call_self_check(&mut *store)
            })
            .map_err(self_check)?;
        checked.value.map_err(|reason| PolicyError::SelfCheck {
            origin: origin.into(),
            reason,
        })?;
        for &kind in &loaded.kinds {
            kind.visit(Golden {
                engine: self,
                loaded: &loaded,
                settings: None,
            })?;
        }
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

    /// Runs `kind`'s golden input with the operator's `settings` as its config: a policy that refuses them (a value
    /// it cannot parse) would fail every call, so it is refused at load time, naming the policy and its reason.
    pub(crate) fn check_settings(
        &self,
        loaded: &Loaded,
        kind: PolicyKind,
        settings: &[(String, String)],
    ) -> Result<(), PolicyError> {
        if settings.is_empty() {
            return Ok(());
        }
        kind.visit(Golden {
            engine: self,
            loaded,
            settings: Some(settings),
        })
    }

    /// Runs `kind`'s golden input on `loaded` and returns the decision's one-line summary (for `plugin check`).
    pub fn golden(&self, loaded: &Loaded, kind: PolicyKind) -> Result<crate::Called<String>, PolicyError> {
        struct Summary<'a>(&'a PolicyEngine, &'a Loaded);
        impl KindVisitor for Summary<'_> {
            type Out = Result<crate::Called<String>, PolicyError>;
            fn visit<K: Kind>(self) -> Self::Out {
                let (_, input) = K::golden();
                let c = self.0.run::<K>(self.1, &input)?;
                Ok(crate::Called {
                    value: K::summary(&c.value),
                    logs: c.logs,
                    fuel_used: c.fuel_used,
                })
            }
        }
        kind.visit(Summary(self, loaded))
    }
}

/// The golden-input check of one kind; with `settings`, the operator's settings are its config and a failure is a
/// [`PolicyError::Settings`].
struct Golden<'a> {
    engine: &'a PolicyEngine,
    loaded: &'a Loaded,
    settings: Option<&'a [(String, String)]>,
}

impl KindVisitor for Golden<'_> {
    type Out = Result<(), PolicyError>;
    fn visit<K: Kind>(self) -> Self::Out {
        let (case, mut input) = K::golden();
        if let Some(settings) = self.settings {
            K::set_config(&mut input, settings.to_vec());
        }
        let result = self.engine.run::<K>(self.loaded, &input).map(drop);
        result.map_err(|e| match self.settings {
            None => PolicyError::Golden {
                origin: self.loaded.origin.clone(),
                case,
                reason: e.to_string(),
            },
            Some(_) => PolicyError::Settings {
                policy: self.loaded.label(),
                interface: K::INTERFACE,
                reason: e.to_string(),
            },
        })
    }
}
