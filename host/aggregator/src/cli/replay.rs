//! `aggregator replay`: checks a stored window against its receipt (inputs by SHA-256, policies re-run, the aggregate
//! recomputed bit for bit), and the receipt source it shares with `plugin run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aggregator_daemon::parse_endpoint;
use aggregator_kernels::Device;
use aggregator_model::ModelSpec;
use aggregator_policy::{PolicyEngine, PolicyLimits};
use aggregator_receipt::record::MAX_RECEIPT_BYTES;
use aggregator_receipt::{Receipt, ReplayOptions, Verdict, replay};
use aggregator_store::{Bucket, ClientSettings, Clients, keys};
use anyhow::Context;
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::device::open_device;
use crate::runtime;

/// Where a receipt (and the bucket beside it) comes from: `--receipt FILE|URL`, or `--window W` in the bucket given
/// by `--store` and `--bucket`.
#[derive(clap::Args, Debug)]
pub struct ReceiptSource {
    /// The window: its receipt `receipt-{W}-v{V}.json` is read from the bucket (`--store`, `--bucket`).
    #[arg(long, required_unless_present = "receipt")]
    window: Option<u64>,
    /// A receipt file, or its `http(s)://` URL (the aggregate and archived inputs are then read beside it).
    #[arg(long)]
    receipt: Option<String>,
    /// The aggregator's bucket endpoint: `r2:ACCOUNT`, an S3 URL or a directory.
    #[arg(long, requires = "bucket")]
    store: Option<String>,
    /// The aggregator's bucket name.
    #[arg(long, requires = "store")]
    bucket: Option<String>,
    /// Read credentials of the aggregator's bucket.
    #[command(flatten)]
    read: super::ReadCredentials,
    /// The run's version `V` in object names.
    #[arg(long, default_value = "0.2.73")]
    version: String,
}

/// Bound on each storage call of a replay.
const TIMEOUT: Duration = Duration::from_secs(120);

impl ReceiptSource {
    /// The aggregator's bucket, when one is named (or the folder of a receipt URL).
    pub fn output(&self, clients: &Clients) -> anyhow::Result<Option<Arc<dyn ObjectStore>>> {
        if let (Some(store), Some(bucket)) = (&self.store, &self.bucket) {
            let endpoint = parse_endpoint(store).map_err(|e| anyhow::anyhow!("--store {e}"))?;
            return Ok(Some(clients.get(&Bucket {
                endpoint,
                name: bucket.clone(),
                access_key_id: self.read.access_key_id(),
                secret: self.read.secret(),
            })?));
        }
        match self.url() {
            Some((base, _)) => Ok(Some(http(base)?)),
            None => Ok(None),
        }
    }

    /// `(folder URL, file name)` of an `http(s)://` receipt.
    fn url(&self) -> Option<(&str, &str)> {
        let r = self.receipt.as_deref()?;
        if !(r.starts_with("http://") || r.starts_with("https://")) {
            return None;
        }
        r.rsplit_once('/')
    }

    /// Reads and parses the receipt; returns it with a name for messages.
    pub async fn load(&self, output: Option<&dyn ObjectStore>) -> anyhow::Result<(Receipt, String)> {
        let (bytes, name) = match (&self.receipt, self.url()) {
            (Some(_), Some((base, file))) => (read(http(base)?.as_ref(), file).await?, format!("{base}/{file}")),
            (Some(file), None) => {
                let meta = std::fs::metadata(file).with_context(|| format!("--receipt {file}"))?;
                if meta.len() > MAX_RECEIPT_BYTES as u64 {
                    anyhow::bail!("--receipt {file}: {} bytes, over {MAX_RECEIPT_BYTES}", meta.len());
                }
                (
                    Bytes::from(std::fs::read(file).with_context(|| format!("--receipt {file}"))?),
                    file.clone(),
                )
            }
            (None, _) => {
                let w = self.window.context("--window or --receipt")?;
                let store = output.context("--window needs --store and --bucket (or give --receipt)")?;
                let key = keys::receipt(w, &self.version);
                (read(store, &key).await?, key)
            }
        };
        let receipt = Receipt::from_json(&bytes, &name)?;
        if let Some(w) = self.window
            && w != receipt.window
        {
            anyhow::bail!("{name} is the receipt of window {}, not {w}", receipt.window);
        }
        Ok((receipt, name))
    }
}

/// A read-only store for the folder at `base` (an `http(s)://` URL).
fn http(base: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    // Plain http too: a receipt's contents are checked by their hashes, not trusted for the transport.
    let store = object_store::http::HttpBuilder::new()
        .with_url(base)
        .with_client_options(object_store::ClientOptions::new().with_allow_http(true))
        .build()
        .with_context(|| format!("--receipt {base}"))?;
    Ok(Arc::new(store))
}

async fn read(store: &dyn ObjectStore, key: &str) -> anyhow::Result<Bytes> {
    let path = ObjectPath::from(key);
    let get = async {
        let r = store.get(&path).await?;
        if r.meta.size > MAX_RECEIPT_BYTES as u64 {
            anyhow::bail!("{} bytes, over {MAX_RECEIPT_BYTES}", r.meta.size);
        }
        Ok(r.bytes().await?)
    };
    tokio::time::timeout(TIMEOUT, get)
        .await
        .with_context(|| format!("{key}: no answer within {TIMEOUT:?}"))?
        .with_context(|| format!("{key} in {store}"))
}

/// Arguments of `aggregator replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    source: ReceiptSource,
    /// The stored aggregate as a file (default: the receipt's `output.key` in the bucket).
    #[arg(long)]
    aggregate: Option<PathBuf>,
    /// Model preset or JSON file (default: the receipt's `model`).
    #[arg(long)]
    model: Option<String>,
    /// A policy component (`.wasm`) or a directory of them, where recorded components are looked up by SHA-256
    /// (repeatable; the embedded ones and each recorded path are always tried). On the server, its policy cache
    /// (`STATE_DIR/policy-cache`) keeps every component it ran, by SHA-256.
    #[arg(long = "components", value_name = "PATH")]
    components: Vec<PathBuf>,
}

/// Runs `replay`: one line per check, then the verdict; exit 0 when everything matches, 1 naming the first thing
/// that differs.
pub fn replay_command(args: ReplayArgs, device: Device) -> anyhow::Result<ExitCode> {
    let numeric = open_device(device)?;
    let clients = Clients::new(ClientSettings::default());
    let output = args.source.output(&clients)?;
    let rt = runtime()?;
    let (receipt, name) = rt.block_on(args.source.load(output.as_deref()))?;
    let model_name = args.model.clone().unwrap_or_else(|| receipt.model.clone());
    let model = ModelSpec::load(&model_name).with_context(|| format!("model {model_name}"))?;
    let aggregate = args
        .aggregate
        .as_ref()
        .map(|f| std::fs::read(f).with_context(|| format!("--aggregate {}", f.display())))
        .transpose()?
        .map(Bytes::from);
    let options = ReplayOptions {
        output,
        aggregate,
        clients,
        model: Arc::new(model),
        backend: numeric.backend.clone(),
        engine: PolicyEngine::new(PolicyLimits::default(), None)?,
        components: args.components.clone(),
        timeout: TIMEOUT,
    };
    println!(
        "replay of window {} from {name} (written by {} {}, on {}; replayed on {})",
        receipt.window, receipt.host.version, receipt.host.git_sha, receipt.backend, numeric.description
    );
    let report = rt.block_on(replay(&receipt, &options));
    for step in &report.steps {
        let (tag, text) = match &step.verdict {
            Verdict::Match(t) => ("ok", t),
            Verdict::Differs(t) => ("DIFFERS", t),
            Verdict::Unavailable(t) => ("MISSING", t),
            Verdict::NotChecked(t) => ("skipped", t),
        };
        println!("  {tag:<8} {}: {text}", step.what);
    }
    match report.first_failure() {
        None => {
            println!(
                "verdict: window {} replays: {} identical to the recomputation (SHA-256 {})",
                receipt.window, receipt.output.key, receipt.output.sha256
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(step) => {
            let text = match &step.verdict {
                Verdict::Differs(t) | Verdict::Unavailable(t) => t.as_str(),
                _ => "",
            };
            println!(
                "verdict: window {} does not replay: {}: {text}",
                receipt.window, step.what
            );
            Ok(ExitCode::from(1))
        }
    }
}
