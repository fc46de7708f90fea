//! `aggregator aggregate`: gradient files aggregated offline, exactly as the server does for one window.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use aggregator_codec::{Gradient, Limits};
use aggregator_model::ModelSpec;
use aggregator_window::{OutputBuffers, PeerInput, aggregate_window_into, python_utc_now};
use anyhow::{Context, bail};

use aggregator_kernels::Device;

/// Arguments of `aggregate`.
#[derive(clap::Args)]
pub struct AggregateArgs {
    /// Model preset (tiny, small, templar-1b) or model JSON file.
    #[arg(long)]
    model: String,
    /// The window being aggregated.
    #[arg(long)]
    window: i64,
    /// Templar version string of the files.
    #[arg(long, default_value = "0.2.73")]
    version: String,
    /// Where to write `aggregator-{w}-v{V}.pt` (written to a temporary name, then renamed).
    #[arg(long)]
    out: PathBuf,
    /// The selected peers in aggregation order, comma-separated; a peer without a file counts as missing.
    /// Default: the files' uids in the order given.
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<u16>>,
    /// Print the wall time of each phase (read and check, aggregate, write) on stderr, for side-by-side comparisons
    /// (`scripts/bench-compare`).
    #[arg(long)]
    timings: bool,
    /// Gradient files named `gradient-{w}-{uid}-v{V}.pt`.
    #[arg(required = true)]
    gradients: Vec<PathBuf>,
}

/// `(window, uid, version)` from a file named as a gradient object.
fn parse_name(path: &Path) -> Option<(i64, u16, String)> {
    let (w, uid, v) = aggregator_store::keys::parse_gradient(path.file_name()?.to_str()?)?;
    Some((i64::try_from(w).ok()?, uid, v.to_string()))
}

fn read_gradient(
    path: &Path,
    window: i64,
    version: &str,
    model: &ModelSpec,
    limits: &Limits,
) -> Result<Gradient, String> {
    let (w, _, v) = parse_name(path).ok_or("file name is not gradient-{w}-{uid}-v{V}.pt")?;
    if w != window || v != version {
        return Err(format!(
            "file is for window {w} version {v}, not window {window} version {version}"
        ));
    }
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > limits.max_archive_bytes {
        return Err(format!(
            "too large: {size} bytes, the limit for this model is {}",
            limits.max_archive_bytes
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    Gradient::read(&bytes, model, limits).map_err(|e| e.to_string())
}

/// Runs `aggregate`.
pub fn aggregate(args: AggregateArgs, device: Device) -> anyhow::Result<ExitCode> {
    let model = ModelSpec::load(&args.model)?;
    let limits = Limits::for_gradient(model.sparse_bytes() as u64);
    let mut files: Vec<(u16, &PathBuf)> = Vec::new();
    for path in &args.gradients {
        let (_, uid, _) = parse_name(path).with_context(|| {
            format!(
                "{}: cannot take a uid from the name (expected gradient-{{w}}-{{uid}}-v{{V}}.pt)",
                path.display()
            )
        })?;
        if files.iter().any(|(u, _)| *u == uid) {
            bail!("two files for uid {uid}");
        }
        files.push((uid, path));
    }
    let order = args
        .peers
        .clone()
        .unwrap_or_else(|| files.iter().map(|(u, _)| *u).collect());
    if let Some((uid, path)) = files.iter().find(|(u, _)| !order.contains(u)) {
        bail!("{}: uid {uid} is not in --peers", path.display());
    }
    let started = Instant::now();
    // The output's memory is mapped on a second thread while the files are read on this one (see `OutputBuffers`).
    let prefault = std::thread::spawn({
        let model = model.clone();
        move || OutputBuffers::prefaulted(&model)
    });
    let mut peers = Vec::with_capacity(order.len());
    for uid in order {
        let input = match files.iter().find(|(u, _)| *u == uid) {
            None => PeerInput::Skipped("missing: no gradient file".into()),
            Some((_, path)) => match read_gradient(path, args.window, &args.version, &model, &limits) {
                Ok(g) => PeerInput::valid(g),
                Err(reason) => PeerInput::Skipped(format!("{}: {reason}", path.display())),
            },
        };
        match &input {
            PeerInput::Valid { .. } => eprintln!("uid {uid}: ok"),
            PeerInput::Skipped(reason) => eprintln!("uid {uid}: skipped: {reason}"),
        }
        peers.push((uid, input));
    }
    let numeric = crate::open_device(device)?;
    // Should that thread have panicked, only the head start is lost: the aggregate allocates as it goes.
    let buffers = prefault.join().unwrap_or_default();
    let read = started.elapsed();
    let started = Instant::now();
    let result = match aggregate_window_into(
        &model,
        numeric.backend.as_ref(),
        args.window,
        &args.version,
        &peers,
        python_utc_now(),
        buffers,
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}; no file written");
            return Ok(ExitCode::from(1));
        }
    };
    let Some(file) = &result.file else {
        eprintln!(
            "error: window {}: none of the {} selected peers has a valid gradient; no file written",
            args.window,
            peers.len()
        );
        return Ok(ExitCode::from(1));
    };
    let process = started.elapsed();
    let started = Instant::now();
    let bytes = file.to_bytes()?;
    let tmp = args.out.with_extension("pt.partial");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("renaming to {}", args.out.display()))?;
    if args.timings {
        eprintln!(
            "timings: read and check {:.3} s, aggregate {:.3} s (normalise, scatter-mean, inverse DCT, sign, pack), \
             write {:.3} s",
            read.as_secs_f64(),
            process.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    println!(
        "wrote {} ({} bytes): window {}, {} parameters, valid uids {:?}, skipped uids {:?}, success rate {}",
        args.out.display(),
        bytes.len(),
        args.window,
        file.params.len(),
        result.valid_uids,
        file.skipped_uids,
        file.success_rate
    );
    Ok(ExitCode::SUCCESS)
}
