//! Whole `.pt` files (zip container included) through every reader.
#![no_main]

use std::sync::LazyLock;

use aggregator_codec::{Aggregate, DebugDict, Gradient, Limits, PtFile};
use aggregator_model::ModelSpec;
use libfuzzer_sys::fuzz_target;

static MODEL: LazyLock<ModelSpec> = LazyLock::new(|| ModelSpec::preset("tiny").expect("tiny preset"));

fuzz_target!(|data: &[u8]| {
    let limits = Limits::for_gradient(MODEL.sparse_bytes() as u64);
    if let Ok(f) = PtFile::parse(data, &limits) {
        let _ = f.describe();
    }
    let _ = Gradient::read(data, &MODEL, &limits);
    let _ = Aggregate::read(data, Some(&MODEL), &limits);
    let _ = DebugDict::read(data, &limits);
});
