//! `catchup-verification`: whether a node that replayed the aggregates is in sync with the leader.

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use super::{Kind, PolicyKind, sealed};
use crate::bindings::exports::templar::policy::catchup_verification as wit;
use crate::host::HostState;
pub use wit::{ParamSample, Verdict, VerifyInput};

/// The `catchup-verification` kind.
#[derive(Debug, Clone, Copy)]
pub struct CatchupVerification;

impl Kind for CatchupVerification {
    const KIND: PolicyKind = PolicyKind::CatchupVerification;
    const INTERFACE: &'static str = "catchup-verification";
    const WORLD: &'static str = "catchup-verifier";
    type Input = VerifyInput;
    type Output = Verdict;

    fn golden() -> (&'static str, VerifyInput) {
        ("catchup-verification (three parameters)", golden_input())
    }

    fn set_config(input: &mut VerifyInput, config: Vec<(String, String)>) {
        input.config = config;
    }

    fn summary(v: &Verdict) -> String {
        format!("in sync: {}; {}", v.in_sync, v.note)
    }

    fn diff(a: &Verdict, b: &Verdict) -> Vec<String> {
        let mut out = Vec::new();
        if a.in_sync != b.in_sync {
            out.push(format!("in sync: {} -> {}", a.in_sync, b.in_sync));
        }
        for (name, x, y) in [
            ("l2-norm", a.l2_norm, b.l2_norm),
            ("avg-l2-norm", a.avg_l2_norm, b.avg_l2_norm),
            ("avg-abs-diff", a.avg_abs_diff, b.avg_abs_diff),
            ("max-diff", a.max_diff, b.max_diff),
            ("avg-steps-behind", a.avg_steps_behind, b.avg_steps_behind),
            ("max-steps-behind", a.max_steps_behind, b.max_steps_behind),
        ] {
            if x.to_bits() != y.to_bits() {
                out.push(format!("{name}: {x} -> {y}"));
            }
        }
        if a.count != b.count {
            out.push(format!("count: {} -> {}", a.count, b.count));
        }
        out
    }
}

impl sealed::Dispatch for CatchupVerification {
    type Indices = wit::GuestIndices;

    fn indices(pre: &InstancePre<HostState>) -> Option<Self::Indices> {
        wit::GuestIndices::new(pre).ok()
    }

    fn invoke(
        idx: &Self::Indices,
        store: &mut Store<HostState>,
        instance: &Instance,
        input: &VerifyInput,
    ) -> wasmtime::Result<Result<Verdict, String>> {
        idx.load(&mut *store, instance)?.call_verify(&mut *store, input)
    }

    fn check(_: &VerifyInput, v: &Verdict) -> Result<(), String> {
        let metrics = [
            v.l2_norm,
            v.avg_l2_norm,
            v.avg_abs_diff,
            v.max_diff,
            v.avg_steps_behind,
            v.max_steps_behind,
        ];
        if metrics.iter().any(|x| x.is_nan()) {
            return Err("a metric is NaN".into());
        }
        Ok(())
    }
}

/// A catch-up comparison of three parameters, slightly out of sync.
pub fn golden_input() -> VerifyInput {
    let sample = |index, d: f64| ParamSample {
        index,
        local: vec![0.5 + d, -0.25],
        reference: vec![0.5, -0.25 - d],
    };
    VerifyInput {
        window: 1000,
        learning_rate: 4e-4,
        samples: vec![sample(0, 4e-4), sample(1, 0.0), sample(2, 8e-4)],
        config: vec![],
    }
}
