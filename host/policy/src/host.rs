//! Per-call host state: an empty, deterministic WASI context and the `log` import.

use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::random::Deterministic;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::templar::policy::log::{Host as LogHost, Level};
use crate::bindings::templar::policy::types::Host as TypesHost;

/// Longest log message kept (bytes).
const MAX_LOG_LINE: usize = 1024;

/// One line a policy logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyLog {
    /// `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The message (truncated to 1 KiB).
    pub message: String,
}

/// A clock frozen at the Unix epoch: policies get time only through their inputs.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

/// State of one call's store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) stderr: MemoryOutputPipe,
    pub(crate) logs: Vec<PolicyLog>,
    log_budget: usize,
    pub(crate) dropped_logs: usize,
}

impl HostState {
    pub(crate) fn new(memory_bytes: usize, log_lines: usize) -> Self {
        let stderr = MemoryOutputPipe::new(16 << 10);
        // No preopened directories, environment, arguments or stdin; no sockets (TCP, UDP and name lookup refused,
        // and every address denied); clocks frozen and randomness fixed, so that a policy cannot observe anything
        // outside its input.
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(Deterministic::new(vec![0x5a; 64]))
            .insecure_random(Deterministic::new(vec![0xa5; 64]))
            .insecure_random_seed(0)
            .build();
        // Instance, table and memory counts: a Rust component has a few core instances, a componentize-py one
        // (CPython and its adapters) about 20; the bound that matters, bytes of memory, is `memory_bytes`.
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .instances(64)
            .tables(64)
            .memories(16)
            .table_elements(100_000)
            .trap_on_grow_failure(true)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            stderr,
            logs: Vec::new(),
            log_budget: log_lines,
            dropped_logs: 0,
        }
    }

    /// What the guest wrote to stderr (e.g. its panic message), trimmed.
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim().to_string()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl LogHost for HostState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_budget == 0 {
            self.dropped_logs += 1;
            return;
        }
        self.log_budget -= 1;
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            message.truncate(message.floor_char_boundary(MAX_LOG_LINE));
            message.push('…');
        }
        self.logs.push(PolicyLog { level, message });
    }
}

impl TypesHost for HostState {}
