//! `time-bounds`: the interval of upload times (`LastModified`) a window accepts.

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use super::{Kind, PolicyKind, sealed};
use crate::bindings::exports::templar::policy::time_bounds as wit;
use crate::host::HostState;
use crate::types::ChainView;
pub use wit::{Bounds, BoundsInput};

/// The `time-bounds` kind.
#[derive(Debug, Clone, Copy)]
pub struct TimeBounds;

impl Kind for TimeBounds {
    const KIND: PolicyKind = PolicyKind::TimeBounds;
    const INTERFACE: &'static str = "time-bounds";
    const WORLD: &'static str = "time-bounder";
    type Input = BoundsInput;
    type Output = Bounds;

    fn golden() -> (&'static str, BoundsInput) {
        ("time-bounds (chain timestamp present)", golden_input())
    }

    fn set_config(input: &mut BoundsInput, config: Vec<(String, String)>) {
        input.config = config;
    }

    fn summary(b: &Bounds) -> String {
        format!("[{}, {}] ms; {}", b.not_before_ms, b.not_after_ms, b.note)
    }

    fn compare(a: &Bounds, b: &Bounds) -> super::Comparison {
        let moved = |x: u64, y: u64| i64::try_from(y as i128 - x as i128).unwrap_or(i64::MAX);
        super::Comparison {
            differences: Self::diff(a, b),
            not_before_moved_ms: Some(moved(a.not_before_ms, b.not_before_ms)),
            not_after_moved_ms: Some(moved(a.not_after_ms, b.not_after_ms)),
            ..super::Comparison::default()
        }
    }

    fn diff(a: &Bounds, b: &Bounds) -> Vec<String> {
        let moved = |name: &str, x: u64, y: u64| {
            (x != y).then(|| format!("{name}: {x} -> {y} ms ({:+} ms)", y as i128 - x as i128))
        };
        [
            moved("not-before", a.not_before_ms, b.not_before_ms),
            moved("not-after", a.not_after_ms, b.not_after_ms),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl sealed::Dispatch for TimeBounds {
    type Indices = wit::GuestIndices;

    fn indices(pre: &InstancePre<HostState>) -> Option<Self::Indices> {
        wit::GuestIndices::new(pre).ok()
    }

    fn invoke(
        idx: &Self::Indices,
        store: &mut Store<HostState>,
        instance: &Instance,
        input: &BoundsInput,
    ) -> wasmtime::Result<Result<Bounds, String>> {
        idx.load(&mut *store, instance)?.call_compute(&mut *store, input)
    }

    fn check(_: &BoundsInput, b: &Bounds) -> Result<(), String> {
        if b.not_before_ms > b.not_after_ms {
            return Err(format!(
                "not-before {} is after not-after {}",
                b.not_before_ms, b.not_after_ms
            ));
        }
        Ok(())
    }
}

/// Bounds for window 1000 with a chain timestamp.
pub fn golden_input() -> BoundsInput {
    BoundsInput {
        chain: ChainView {
            block: 7007,
            window: 1000,
            blocks_per_window: 7,
            netuid: 3,
        },
        sync_block: 7007,
        sync_timestamp_ms: Some(1_745_000_000_000),
        now_ms: 1_745_000_005_000,
        config: vec![],
    }
}
