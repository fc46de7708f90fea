//! `aggregator plugin check`: loads a policy component as the daemon would and prints a verdict. `aggregator plugin
//! run`: runs a candidate on a recorded window's policy inputs and prints its decisions beside the recorded ones.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use aggregator_policy::{Kind, Loaded, PolicyEngine, PolicyKind, PolicyLimits, World};
use aggregator_receipt::PolicyCall;
use aggregator_store::{ClientSettings, Clients};
use anyhow::Context;

use crate::cli::replay::ReceiptSource;
use crate::runtime;

/// The kinds a 1.0 `bundle` exports (1.1 added `contribution-weighting` to it).
const BUNDLE_1_0: [PolicyKind; 3] = [
    PolicyKind::PeerSelection,
    PolicyKind::TimeBounds,
    PolicyKind::CatchupVerification,
];

/// The kinds world `w` requires of a component built against package version `package`.
fn required(w: World, package: &str) -> Vec<PolicyKind> {
    if w == World::Bundle && package.starts_with("1.0.") {
        BUNDLE_1_0.to_vec()
    } else {
        w.kinds()
    }
}

fn world_of(l: &Loaded, package: &str) -> String {
    match World::of(&l.kinds) {
        Some(w) => w.to_string(),
        None if package.starts_with("1.0.") && l.kinds == BUNDLE_1_0 => "bundle".to_string(),
        None => format!(
            "custom ({})",
            l.kinds.iter().map(|k| k.interface()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Call limits for `plugin check` and `plugin run`, as an operator sets them for a kind (`[policy.limits.<kind>]`);
/// unset: the defaults every kind runs under.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct LimitArgs {
    /// Fuel per call.
    #[arg(long)]
    fuel: Option<u64>,
    /// Deadline per call, ms.
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Memory per call, MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
}

impl LimitArgs {
    /// The limits.
    pub fn limits(&self) -> PolicyLimits {
        aggregator_daemon::KindLimits {
            fuel: self.fuel,
            deadline_ms: self.deadline_ms,
            memory_mib: self.memory_mib,
        }
        .apply(PolicyLimits::default())
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
    /// The limits to check under.
    #[command(flatten)]
    limits: LimitArgs,
}

/// Runs `plugin check`.
pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let engine = PolicyEngine::new(args.limits.limits(), None)?;
    let limits = engine.limits();
    let wasm = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
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
    println!(
        "implements: world {} of templar:policy@{package}",
        world_of(&loaded, package)
    );
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
        && let Some(missing) = required(w, package).iter().find(|k| !loaded.provides(**k))
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

/// Arguments of `plugin run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The candidate component (`.wasm`).
    file: PathBuf,
    /// The recorded window.
    #[command(flatten)]
    source: ReceiptSource,
    /// The limits to run under.
    #[command(flatten)]
    limits: LimitArgs,
}

/// Runs `plugin run`: for each policy kind the receipt recorded and the candidate exports, the recorded decision,
/// the candidate's on the same input, and how they differ. Exit 0 when it ran (whatever it decided), 1 when the
/// candidate is refused or fails on a recorded input.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let engine = PolicyEngine::new(args.limits.limits(), None)?;
    let wasm = std::fs::read(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let clients = Clients::new(ClientSettings::default());
    let output = args.source.output(&clients)?;
    let (receipt, name) = runtime()?.block_on(args.source.load(output.as_deref()))?;
    let candidate = match engine.load(&wasm, &args.file.display().to_string()) {
        Ok(l) => l,
        Err(e) => {
            println!("candidate refused: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    println!(
        "candidate {} {} (sha256 {}) on window {} from {name}",
        candidate.name, candidate.version, candidate.sha256, receipt.window
    );
    let mut ran = 0;
    let mut ok = true;
    ok &= compare(&engine, &candidate, &receipt.policies.time_bounds, &mut ran);
    ok &= compare(&engine, &candidate, &receipt.policies.peer_selection, &mut ran);
    if let Some(call) = &receipt.policies.contribution_weighting {
        ok &= compare(&engine, &candidate, call, &mut ran);
    }
    if ran == 0 {
        println!("the candidate exports none of the recorded policy kinds");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Prints one recorded call beside the candidate's decision on its input; false when the candidate failed.
fn compare<K: Kind>(engine: &PolicyEngine, candidate: &Loaded, call: &PolicyCall<K>, ran: &mut usize) -> bool {
    if !candidate.provides(K::KIND) {
        return true;
    }
    *ran += 1;
    let c = &call.component;
    println!("{}:", K::INTERFACE);
    println!(
        "  recorded  {} {} ({}): {}",
        c.name,
        c.version,
        &c.sha256[..c.sha256.len().min(12)],
        K::summary(&call.decision)
    );
    let t = Instant::now();
    match engine.run::<K>(candidate, &call.input) {
        Err(e) => {
            println!("  candidate failed: {e}");
            false
        }
        Ok(out) => {
            println!(
                "  candidate {} {} ({}): {} ({} fuel, {:.2} ms)",
                candidate.name,
                candidate.version,
                &candidate.sha256[..12],
                K::summary(&out.value),
                out.fuel_used,
                t.elapsed().as_secs_f64() * 1e3
            );
            let diff = K::diff(&call.decision, &out.value);
            if diff.is_empty() {
                println!("  same decision as recorded");
            } else {
                for d in diff {
                    println!("  {d}");
                }
            }
            true
        }
    }
}
