//! `bench policy`: per-call overhead of a sandboxed policy (fresh instance per call) and component loading.

use std::time::{Duration, Instant};

use aggregator_policy::golden::{bounds_input, selection_input, verify_input};
use aggregator_policy::{EMBEDDED_DEFAULT, EXAMPLE_ROTATION, PolicyEngine, PolicyLimits};

/// Arguments of `bench policy`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Neurons in the peer-selection input.
    #[arg(long, default_value_t = 256)]
    neurons: u16,
    /// Calls per row.
    #[arg(long, default_value_t = 300)]
    iterations: usize,
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

/// Runs `bench policy`.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let n = args.iterations.max(1);
    let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
    println!(
        "{:<58} {:>10} {:>10} {:>10}",
        "operation", "median µs", "min µs", "p99 µs"
    );
    println!("{}", "-".repeat(91));
    let row = |label: &str, samples: Vec<Duration>| {
        let (med, min, p99) = stats(samples);
        println!("{label:<58} {:>10} {:>10} {:>10}", us(med), us(min), us(p99));
        med
    };
    // Loading: cold compile, and from the .cwasm cache.
    let cache = std::env::temp_dir().join(format!("policy-bench-cache-{}", std::process::id()));
    let engine = PolicyEngine::new(PolicyLimits::default(), Some(cache.clone()))?;
    let plain = PolicyEngine::new(PolicyLimits::default(), None)?;
    let time = |f: &dyn Fn()| {
        let t = Instant::now();
        f();
        t.elapsed()
    };
    row(
        "load templar-default: compile + audit + checks (cold)",
        (0..3)
            .map(|_| time(&|| drop(plain.load(EMBEDDED_DEFAULT, "d").unwrap())))
            .collect(),
    );
    engine.load(EMBEDDED_DEFAULT, "d")?;
    row(
        "load templar-default from the .cwasm cache + checks",
        (0..10)
            .map(|_| time(&|| drop(engine.load(EMBEDDED_DEFAULT, "d").unwrap())))
            .collect(),
    );
    let default = engine.load(EMBEDDED_DEFAULT, "d")?;
    let example = engine.load(EXAMPLE_ROTATION, "e")?;
    let input = selection_input(args.neurons);
    let sel = row(
        &format!("templar-default select({} neurons), fresh instance", args.neurons),
        (0..n)
            .map(|_| time(&|| drop(engine.select(&default, &input).unwrap())))
            .collect(),
    );
    row(
        &format!("example-rotation select({} neurons), fresh instance", args.neurons),
        (0..n)
            .map(|_| time(&|| drop(engine.select(&example, &input).unwrap())))
            .collect(),
    );
    row(
        "templar-default time bounds, fresh instance",
        (0..n)
            .map(|_| time(&|| drop(engine.bounds(&default, &bounds_input()).unwrap())))
            .collect(),
    );
    row(
        "templar-default verify (3 parameters), fresh instance",
        (0..n)
            .map(|_| time(&|| drop(engine.verify(&default, &verify_input()).unwrap())))
            .collect(),
    );
    std::fs::remove_dir_all(&cache).ok();
    println!();
    println!(
        "per-call overhead with {} neurons including a fresh instance: {} µs median (target < 1000 µs: {})",
        args.neurons,
        us(sel),
        if sel < Duration::from_millis(1) {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
