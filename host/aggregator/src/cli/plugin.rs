//! `aggregator plugin check`: loads a policy component as the daemon would and prints a verdict.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use aggregator_policy::{Loaded, PolicyEngine, PolicyLimits, World};

fn world_of(l: &Loaded) -> String {
    match World::of(&l.kinds) {
        Some(w) => w.to_string(),
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
    #[arg(long)]
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
        let golden = engine.golden(&loaded, *kind)?;
        let (fuel, summary) = (golden.fuel_used, golden.value);
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
            "verdict: refused: world {w} requires {} which the component does not export",
            missing.interface()
        );
        return Ok(ExitCode::from(1));
    }
    println!("verdict: ok");
    Ok(ExitCode::SUCCESS)
}
