//! Catch-up end to end: a simulated run with a live validator; a checkpoint from an early window is caught up and
//! must equal the validator's live model bit for bit, with every verdict "in sync", a lost window reported missing
//! (the schedule still advancing), and a tampered aggregate detected by the verification policy.

use std::path::PathBuf;

use aggregator_catchup::{Applied, CatchupConfig, CatchupError, Checkpoint, OnOutOfSync, Schedule, catch_up};
use aggregator_codec::{Aggregate, Limits};
use aggregator_model::ModelSpec;
use aggregator_policy::{Policies, PolicyConfig, PolicyEngine, PolicyLimits};
use aggregator_sim::{self as sim, SimOptions};
use aggregator_store::{Bucket, ClientSettings, Clients};

fn policies() -> Policies {
    let engine = PolicyEngine::new(PolicyLimits::default(), None).unwrap();
    Policies::new(
        engine,
        PolicyConfig {
            settings: vec![("sync_max_single_steps_behind".into(), "0.5".into())],
            ..Default::default()
        },
    )
    .unwrap()
}

fn bits(c: &Checkpoint) -> Vec<Vec<u32>> {
    c.params
        .iter()
        .map(|(_, v)| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_equals_the_live_validator_and_detects_tampering() {
    let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sim-catchup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let outcome = sim::run(SimOptions {
        windows: 5,
        peers: 3,
        data_dir: Some(data.clone()),
        verbose: false,
        lose: vec![2],
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let model = ModelSpec::preset("tiny").unwrap();
    let first = outcome.first_window;
    let (a, b) = (first, first + 4);
    let lost = first + 2;
    let clients = Clients::new(ClientSettings::default());
    let aggregates = clients.get(&outcome.output).unwrap();
    let debug = clients
        .get(&Bucket::local(
            outcome.data_dir.join("store"),
            &sim::bucket_name(sim::LEADER_UID),
        ))
        .unwrap();
    let policies = policies();
    let config = CatchupConfig {
        last_window_tries: 1,
        ..CatchupConfig::default()
    };
    let ckpt_path = |w: u64| outcome.validator_dir.join(format!("checkpoint-{w}.safetensors"));
    // Loads the checkpoint of window a and catches it up to b.
    let replay = async |config: &CatchupConfig| {
        let mut ckpt = Checkpoint::load(&ckpt_path(a), &model, None, None).unwrap();
        let report = catch_up(
            &mut ckpt,
            b,
            &model,
            aggregates.as_ref(),
            Some(debug.as_ref()),
            Some(&policies),
            config,
        )
        .await;
        (ckpt, report)
    };

    let start = Checkpoint::load(&ckpt_path(a), &model, None, None).unwrap();
    assert_eq!((start.window, start.start_window), (a, first - 1));
    let (ckpt, report) = replay(&config).await;
    let report = report.unwrap();
    let live = Checkpoint::load(&ckpt_path(b), &model, None, None).unwrap();
    assert_eq!(ckpt.window, b);
    assert!(
        bits(&ckpt) == bits(&live),
        "caught up = the validator's live model at window {b}, bit for bit"
    );
    assert_eq!(
        report.iter().map(|r| r.window).collect::<Vec<_>>(),
        (a + 1..=b).collect::<Vec<_>>()
    );
    for r in &report {
        assert_eq!(
            r.lr,
            Schedule::default().lr_at(Schedule::step_of(r.window, first - 1)),
            "schedule steps every window"
        );
        if r.window == lost {
            assert_eq!(r.applied, Applied::Missing, "the lost window is reported");
            assert!(r.verdict.is_none());
        } else {
            assert_eq!(r.applied, Applied::Applied(model.params.len()));
            let v = r.verdict.as_ref().expect("the leader's debug dict is there");
            assert!(v.in_sync && v.max_diff == 0.0, "window {}: {v:?}", r.window);
        }
    }

    // Tamper: flip the bits of one parameter's first byte in window a+1's aggregate.
    let tampered = a + 1;
    let path = outcome
        .data_dir
        .join("store")
        .join(sim::OUTPUT_BUCKET)
        .join(aggregator_store::keys::aggregate(tampered, "0.2.73"));
    let mut agg = Aggregate::read(&std::fs::read(&path).unwrap(), Some(&model), &Limits::default()).unwrap();
    agg.params[0].1[0] ^= 0xff;
    std::fs::write(&path, agg.to_bytes().unwrap()).unwrap();

    let report = replay(&config).await.1.unwrap();
    let v = report[0].verdict.as_ref().unwrap();
    assert!(!v.in_sync, "the tampered window is out of sync: {v:?}");
    assert!(
        (v.max_steps_behind - 2.0).abs() < 1e-3,
        "one flipped sign is two steps (f32 rounding aside): {v:?}"
    );
    assert!(
        v.avg_steps_behind < 3.0,
        "Templar's average rule alone would not see it: {v:?}"
    );

    let stop = CatchupConfig {
        on_out_of_sync: OnOutOfSync::Stop,
        ..config.clone()
    };
    let err = replay(&stop).await.1.unwrap_err();
    assert!(
        matches!(err, CatchupError::OutOfSync { window, .. } if window == tampered),
        "{err}"
    );
    std::fs::remove_dir_all(&data).ok();
}
