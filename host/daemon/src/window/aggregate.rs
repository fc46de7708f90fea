//! Aggregate: the numeric step (scatter-mean, inverse DCT, sign, 1-bit packing) on the configured backend and the
//! encoding of `aggregator-{w}-v{V}.pt`, CPU-bound, off the async threads.

use aggregator_chain::Chain;
use aggregator_store::SkipReason;
use aggregator_window::{OutputBuffers, PeerInput, aggregate_window_into, python_utc_now};
use thiserror::Error;
use tokio::task::JoinHandle;

use crate::daemon::Daemon;

/// Why the numeric step or the encoding failed (a bug or a resource failure: peers' bad files are outcomes).
#[derive(Debug, Error)]
pub enum AggregateError {
    /// The window step refused its inputs or its backend failed.
    #[error("internal: aggregate: {0}")]
    Window(#[from] aggregator_window::WindowError),
    /// The aggregate could not be encoded.
    #[error("internal: encode: {0}")]
    Encode(#[from] aggregator_codec::CodecError),
    /// The blocking task panicked or was cancelled.
    #[error("internal: aggregate task: {0}")]
    Panicked(String),
}

/// The window step's result.
pub(crate) struct Aggregated {
    /// The encoded file; none when no peer had a valid gradient (nothing is written, as Templar).
    pub bytes: Option<Vec<u8>>,
    /// Uids aggregated.
    pub valid: Vec<u16>,
    /// Uids skipped with reasons, in selection order.
    pub skipped: Vec<(u16, SkipReason)>,
    /// The metadata timestamp written into the file.
    pub timestamp: String,
    /// SHA-256 (hex) of `bytes` (empty without them).
    pub sha256: String,
    /// The inputs, handed back only for the shadow aggregate (which moves the gradients it shares); otherwise empty,
    /// the gradients freed on the blocking thread as soon as the aggregate is made.
    pub inputs: Vec<(u16, PeerInput<SkipReason>)>,
    /// The aggregate before encoding, kept only for the shadow aggregate (which compares with it).
    pub file: Option<aggregator_codec::Aggregate>,
}

impl<C: Chain + 'static> Daemon<C> {
    /// Starts making the window's output memory on a blocking thread ([`OutputBuffers::prefaulted`]), to run while
    /// the gather waits on the network; [`Daemon::aggregate`] takes it. Dropped unawaited (a window that ends early),
    /// the buffers are freed when the task ends.
    pub(crate) fn prefault_output(&self) -> JoinHandle<OutputBuffers> {
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || OutputBuffers::prefaulted(&model))
    }

    /// Aggregates the gathered inputs and encodes the result; `for_shadow` keeps the inputs and the unencoded
    /// aggregate for the shadow aggregate.
    ///
    /// `buffers` is the output memory [`Daemon::prefault_output`] started making; if that task failed, the aggregate
    /// allocates as it goes.
    pub(crate) async fn aggregate(
        &self,
        w: u64,
        inputs: Vec<(u16, PeerInput<SkipReason>)>,
        for_shadow: bool,
        buffers: JoinHandle<OutputBuffers>,
    ) -> Result<Aggregated, AggregateError> {
        let (model, backend, version) = (self.model.clone(), self.backend.clone(), self.config.version.clone());
        let buffers = buffers.await.unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            let timestamp = python_utc_now();
            let a = aggregate_window_into(
                &model,
                backend.as_ref(),
                w as i64,
                &version,
                &inputs,
                timestamp.clone(),
                buffers,
            )?;
            let bytes = match &a.file {
                Some(file) => Some(file.to_bytes()?),
                None => None,
            };
            let sha256 = bytes.as_deref().map(aggregator_receipt::sha256_hex).unwrap_or_default();
            Ok(Aggregated {
                bytes,
                valid: a.valid_uids,
                skipped: a.skipped,
                timestamp,
                sha256,
                inputs: if for_shadow { inputs } else { Vec::new() },
                file: a.file.filter(|_| for_shadow),
            })
        })
        .await
        .map_err(|e| AggregateError::Panicked(e.to_string()))?
    }
}
