//! `plugin check` and `bench policy`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aggregator_policy::golden::{bounds_input, selection_input, verify_input};
use aggregator_policy::{EMBEDDED_DEFAULT, EXAMPLE_ROTATION, Loaded, PolicyEngine, PolicyKind, PolicyLimits};
use clap::ValueEnum;

/// A world of `templar:policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum World {
    /// `peer-selector`: exports peer-selection.
    PeerSelector,
    /// `time-bounder`: exports time-bounds.
    TimeBounder,
    /// `catchup-verifier`: exports catchup-verification.
    CatchupVerifier,
    /// `bundle`: exports all three.
    Bundle,
}

impl World {
    fn kinds(self) -> &'static [PolicyKind] {
        match self {
            World::PeerSelector => &[PolicyKind::PeerSelection],
            World::TimeBounder => &[PolicyKind::TimeBounds],
            World::CatchupVerifier => &[PolicyKind::CatchupVerification],
            World::Bundle => &PolicyKind::ALL,
        }
    }
}

fn world_of(l: &Loaded) -> String {
    let found = [
        World::Bundle,
        World::PeerSelector,
        World::TimeBounder,
        World::CatchupVerifier,
    ]
    .into_iter()
    .find(|w| w.kinds() == l.kinds.as_slice());
    match found {
        Some(w) => w
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string()),
        None => format!(
            "custom ({})",
            l.kinds.iter().map(|k| k.interface()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Arguments of `plugin check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The component (`.wasm`).
    file: PathBuf,
    /// Require this world.
    #[arg(long, value_enum)]
    world: Option<World>,
}

/// Runs `plugin check`.
pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let engine = PolicyEngine::new(PolicyLimits::default(), None)?;
    let limits = engine.limits();
    let wasm = std::fs::read(&args.file)?;
    println!("file: {} ({} bytes)", args.file.display(), wasm.len());
    println!(
        "limits: {} fuel, {} ms deadline, {} MiB memory per call",
        limits.fuel,
        limits.deadline.as_millis(),
        limits.memory_bytes >> 20
    );
    let t = Instant::now();
    let loaded = match engine.load(&wasm, &args.file.display().to_string()) {
        Ok(l) => l,
        Err(e) => {
            println!("verdict: refused: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let package = loaded
        .exports
        .iter()
        .find_map(|e| e.strip_prefix("templar:policy/describe@"))
        .unwrap_or("?");
    println!(
        "component: {} {} (sha256 {})",
        loaded.name, loaded.version, loaded.sha256
    );
    println!("implements: world {} of templar:policy@{package}", world_of(&loaded));
    println!("imports: {} (all allowed)", loaded.imports.join(", "));
    println!(
        "loaded, self-checked and run on the golden inputs in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    for kind in &loaded.kinds {
        let t = Instant::now();
        let (fuel, summary) = match kind {
            PolicyKind::PeerSelection => engine
                .select(&loaded, &selection_input(256))
                .map(|c| (c.fuel_used, format!("{} peers; {}", c.value.peers.len(), c.value.note))),
            PolicyKind::TimeBounds => engine.bounds(&loaded, &bounds_input()).map(|c| {
                (
                    c.fuel_used,
                    format!(
                        "[{}, {}] ms; {}",
                        c.value.not_before_ms, c.value.not_after_ms, c.value.note
                    ),
                )
            }),
            PolicyKind::CatchupVerification => engine
                .verify(&loaded, &verify_input())
                .map(|c| (c.fuel_used, format!("in sync: {}; {}", c.value.in_sync, c.value.note))),
        }?;
        println!(
            "  {}: {summary} ({fuel} fuel, {:.2} ms)",
            kind.interface(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    if let Some(w) = args.world
        && let Some(missing) = w.kinds().iter().find(|k| !loaded.provides(**k))
    {
        println!(
            "verdict: refused: world {w:?} requires {} which the component does not export",
            missing.interface()
        );
        return Ok(ExitCode::from(1));
    }
    println!("verdict: ok");
    Ok(ExitCode::SUCCESS)
}

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
