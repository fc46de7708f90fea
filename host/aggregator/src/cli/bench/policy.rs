//! `bench policy`: the Rust default and a Python plugin side by side (component size, loading cold and from the
//! `.cwasm` cache, per-call time with a fresh sandboxed instance, fuel), then the other calls of the Rust components.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregator_policy::golden::{bounds_input, selection_input, verify_input};
use aggregator_policy::{EMBEDDED_DEFAULT, EXAMPLE_ROTATION, Loaded, PolicyEngine, PolicyLimits};

/// Arguments of `bench policy`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Neurons in the peer-selection input.
    #[arg(long, default_value_t = 256)]
    neurons: u16,
    /// Calls per row.
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// The Python component for the second column (`.wasm`); default: `components/python-stake-weighted` of this
    /// binary's checkout, built with componentize-py (`$COMPONENTIZE_PY`, else installed from PyPI).
    #[arg(long, value_name = "FILE")]
    python: Option<PathBuf>,
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

fn time(f: impl Fn()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// The Python component's bytes: `--python`, or the checkout's example built with componentize-py.
fn python_wasm(file: Option<&Path>) -> Result<Vec<u8>, String> {
    if let Some(f) = file {
        return std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let app = root.join("components/python-stake-weighted");
    if !app.is_dir() {
        return Err("no checkout beside this binary; pass --python FILE".into());
    }
    let scratch = std::env::temp_dir().join("aggregator-bench-python");
    aggregator_testkit::python::build(&scratch, &app, "app", &root.join("wit/policy.wit"), "peer-selector")
}

/// One column's figures.
struct Column {
    name: String,
    size: usize,
    cold: Duration,
    cached: Duration,
    select: (Duration, Duration, Duration),
    fuel: u64,
}

fn measure(
    label: &str,
    wasm: &[u8],
    limits: PolicyLimits,
    neurons: u16,
    n: usize,
) -> anyhow::Result<(Column, Arc<Loaded>, PolicyEngine)> {
    let cache = std::env::temp_dir().join(format!("policy-bench-cache-{}-{label}", std::process::id()));
    let plain = PolicyEngine::new(limits, None)?;
    let engine = PolicyEngine::new(limits, Some(cache.clone()))?;
    let cold = stats(
        (0..3)
            .map(|_| time(|| drop(plain.load(wasm, label).expect("the component loads"))))
            .collect(),
    )
    .0;
    engine.load(wasm, label)?;
    let cached = stats(
        (0..5)
            .map(|_| time(|| drop(engine.load(wasm, label).expect("the component loads"))))
            .collect(),
    )
    .0;
    let loaded = engine.load(wasm, label)?;
    let input = selection_input(neurons);
    let fuel = engine.select(&loaded, &input)?.fuel_used;
    let select = stats(
        (0..n)
            .map(|_| time(|| drop(engine.select(&loaded, &input).expect("select"))))
            .collect(),
    );
    std::fs::remove_dir_all(&cache).ok();
    let column = Column {
        name: loaded.label(),
        size: wasm.len(),
        cold,
        cached,
        select,
        fuel,
    };
    Ok((column, loaded, engine))
}

/// Runs `bench policy`.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let n = args.iterations.max(1);
    let (rust, default, engine) = measure("rust", EMBEDDED_DEFAULT, PolicyLimits::default(), args.neurons, n)?;
    let python = python_wasm(args.python.as_deref()).and_then(|wasm| {
        // Fewer calls: each is much slower, and the median is what is compared.
        measure("python", &wasm, PolicyLimits::default(), args.neurons, n.min(50))
            .map(|(c, ..)| c)
            .map_err(|e| e.to_string())
    });
    let cell = |f: &dyn Fn(&Column) -> String| match &python {
        Ok(c) => f(c),
        Err(_) => "-".to_string(),
    };
    let line = |label: &str, f: &dyn Fn(&Column) -> String| {
        println!("{label:<44} {:>24} {:>28}", f(&rust), cell(f));
    };
    println!(
        "{:<44} {:>24} {:>28}",
        "peer-selection policy", "Rust", "Python (componentize-py)"
    );
    println!("{}", "-".repeat(98));
    line("component", &|c| c.name.clone());
    line("wasm size", &|c| format!("{:.1} KiB", c.size as f64 / 1024.0));
    line("load cold: compile + audit + checks", &|c| ms(c.cold));
    line("load from the .cwasm cache + checks", &|c| ms(c.cached));
    line(
        &format!("select({} neurons), fresh instance: median", args.neurons),
        &|c| us(c.select.0),
    );
    line("  min", &|c| us(c.select.1));
    line("  p99", &|c| us(c.select.2));
    line("fuel per select", &|c| c.fuel.to_string());
    if let Err(e) = &python {
        println!("python column unavailable: {e}");
    } else {
        let l = PolicyLimits::default();
        println!(
            "(both under the default limits: {} fuel, {} ms, {} MiB per call)",
            l.fuel,
            l.deadline.as_millis(),
            l.memory_bytes >> 20
        );
    }

    println!();
    println!(
        "{:<58} {:>10} {:>10} {:>10}",
        "other calls (Rust)", "median µs", "min µs", "p99 µs"
    );
    println!("{}", "-".repeat(91));
    let row = |label: &str, samples: Vec<Duration>| {
        let (med, min, p99) = stats(samples);
        let f = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
        println!("{label:<58} {:>10} {:>10} {:>10}", f(med), f(min), f(p99));
    };
    let example = engine.load(EXAMPLE_ROTATION, "e")?;
    let input = selection_input(args.neurons);
    row(
        &format!("example-rotation select({} neurons), fresh instance", args.neurons),
        (0..n)
            .map(|_| time(|| drop(engine.select(&example, &input).unwrap())))
            .collect(),
    );
    row(
        "templar-default time bounds, fresh instance",
        (0..n)
            .map(|_| time(|| drop(engine.bounds(&default, &bounds_input()).unwrap())))
            .collect(),
    );
    row(
        "templar-default verify (3 parameters), fresh instance",
        (0..n)
            .map(|_| time(|| drop(engine.verify(&default, &verify_input()).unwrap())))
            .collect(),
    );
    println!();
    println!(
        "per-call overhead of the Rust default with {} neurons including a fresh instance: {} median (target < 1000 \
         µs: {})",
        args.neurons,
        us(rust.select.0),
        if rust.select.0 < Duration::from_millis(1) {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
