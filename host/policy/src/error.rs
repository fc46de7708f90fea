//! Errors of the policy runtime: each names the component and what it did.

use thiserror::Error;

/// Why a policy could not be loaded or a call failed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PolicyError {
    /// Not a valid WebAssembly component.
    #[error("{origin}: not a valid component: {reason}")]
    Compile {
        /// Where the component came from.
        origin: String,
        /// The compiler's message.
        reason: String,
    },
    /// The component imports something policies may not use.
    #[error(
        "{origin}: imports {import}, which a policy may not use (allowed: templar:policy/{{log,types}}@1.x and wasi:{{cli,io,clocks,random}}@0.2.x)"
    )]
    ImportNotAllowed {
        /// Where the component came from.
        origin: String,
        /// The import.
        import: String,
    },
    /// The component does not implement the policy interfaces.
    #[error("{origin}: does not implement templar:policy 1.x: {reason}")]
    WrongInterface {
        /// Where the component came from.
        origin: String,
        /// What is missing or mismatched.
        reason: String,
    },
    /// The component's own self-check failed.
    #[error("{origin}: self-check failed: {reason}")]
    SelfCheck {
        /// Where the component came from.
        origin: String,
        /// The failure.
        reason: String,
    },
    /// The component refuses the operator's policy settings (its golden input fails with them as its config).
    #[error("policy {policy} ({interface}) refuses the [policy.settings]: {reason}")]
    Settings {
        /// `name version`.
        policy: String,
        /// The policy interface.
        interface: &'static str,
        /// Its error, which names the setting.
        reason: String,
    },
    /// The component failed on one of the host's golden inputs.
    #[error("{origin}: golden input {case}: {reason}")]
    Golden {
        /// Where the component came from.
        origin: String,
        /// Which input.
        case: &'static str,
        /// The failure.
        reason: String,
    },
    /// The call used up its fuel (a deterministic instruction budget).
    #[error("policy {policy}: ran out of fuel ({fuel} units)")]
    OutOfFuel {
        /// Policy name.
        policy: String,
        /// The budget.
        fuel: u64,
    },
    /// The call ran past its wall-clock deadline.
    #[error("policy {policy}: stopped at its {millis} ms deadline")]
    Timeout {
        /// Policy name.
        policy: String,
        /// The deadline.
        millis: u64,
    },
    /// The call tried to grow memory past its limit.
    #[error("policy {policy}: memory limit of {limit} bytes exceeded")]
    MemoryLimit {
        /// Policy name.
        policy: String,
        /// The limit.
        limit: usize,
    },
    /// The call trapped (e.g. a panic; the guest's message is included).
    #[error("policy {policy} trapped: {message}")]
    Trap {
        /// Policy name.
        policy: String,
        /// Trap and captured guest stderr.
        message: String,
    },
    /// The policy returned an error for this input.
    #[error("policy {policy} returned an error: {message}")]
    Rejected {
        /// Policy name.
        policy: String,
        /// Its message.
        message: String,
    },
    /// The policy returned something the host cannot use.
    #[error("policy {policy} returned an invalid result: {reason}")]
    InvalidOutput {
        /// Policy name.
        policy: String,
        /// What is wrong.
        reason: String,
    },
    /// The component does not export this policy.
    #[error("policy {policy} does not provide {interface}")]
    NotProvided {
        /// Policy name.
        policy: String,
        /// The interface.
        interface: &'static str,
    },
    /// A file could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        reason: String,
    },
    /// The engine itself failed (should not happen).
    #[error("policy engine: {0}")]
    Engine(String),
}
