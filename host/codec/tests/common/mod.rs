//! The reference files of Templar 0.2.73 (`../shared/fixtures/templar-0.2.73`), by role, for this crate's tests.
//! Their names come from `aggregator_store::keys`, the one place that formats Templar's object names.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::PathBuf;

use aggregator_codec::Limits;
use aggregator_model::ModelSpec;
use aggregator_store::keys;

/// The window of every fixture.
pub const WINDOW: u64 = 100203;
/// The Templar version in their names.
pub const VERSION: &str = "0.2.73";

/// The fixture directory.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/templar-0.2.73")
}

/// A fixture's bytes.
pub fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `gradient-100203-{uid}-v0.2.73.pt`.
pub fn gradient_name(uid: u16) -> String {
    keys::gradient(WINDOW, uid, VERSION)
}

/// `debug-100203-{uid}-v0.2.73.pt`.
pub fn debug_name(uid: u16) -> String {
    keys::debug(WINDOW, uid, VERSION)
}

/// `aggregator-100203-v0.2.73.pt`.
pub fn aggregate_name() -> String {
    keys::aggregate(WINDOW, VERSION)
}

/// The fixtures' model (`model.json`).
pub fn model() -> ModelSpec {
    ModelSpec::load(dir().join("model.json").to_str().unwrap()).unwrap()
}

/// The gradient limits of that model.
pub fn gradient_limits() -> Limits {
    Limits::for_gradient(model().sparse_bytes() as u64)
}
