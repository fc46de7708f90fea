//! Gather: the selected peers' files inside the bounds, each checked against the model. It has no error of its
//! own: a peer whose file is missing, early, late, too large, malformed or unreadable is that peer's outcome (a
//! typed [`SkipReason`]), and the window goes on with the others.

use aggregator_chain::Chain;
use aggregator_store::{Bounds, FileRecord, GatherOptions, PeerRequest, SkipReason, gather};
use aggregator_window::PeerInput;
use bytes::Bytes;

use super::decide::Decision;
use super::observe::Observed;
use crate::daemon::Daemon;

/// What the gather found, per selected peer in selection order.
pub(crate) struct Gathered {
    /// Each peer's gradient (at its selection weight) or skip reason.
    pub inputs: Vec<(u16, PeerInput<SkipReason>)>,
    /// The object each peer's outcome is about, if one was found (for the receipt).
    pub files: Vec<Option<FileRecord>>,
    /// The bytes of each valid peer's file, with `archive_inputs`.
    pub bodies: Vec<Option<Bytes>>,
}

impl<C: Chain + 'static> Daemon<C> {
    /// Each selected peer's gradient or skip reason, in selection order.
    pub(crate) async fn gather(&self, w: u64, o: &Observed, d: &Decision) -> Gathered {
        let gathered = self.fetch(w, o, d.bounds, d.peers(), self.config.archive_inputs).await;
        let mut out = Gathered {
            inputs: Vec::with_capacity(gathered.len()),
            files: Vec::with_capacity(gathered.len()),
            bodies: Vec::with_capacity(gathered.len()),
        };
        for (g, weight) in gathered.into_iter().zip(d.weights()) {
            let input = match g.outcome {
                Ok(gradient) => PeerInput::Valid {
                    gradient: *gradient,
                    weight,
                },
                Err(reason) => PeerInput::Skipped(reason),
            };
            out.inputs.push((g.uid, input));
            out.files.push(g.file);
            out.bodies.push(g.body);
        }
        out
    }

    /// `uids`' files for window `w` inside `bounds` (from their committed buckets), with the configured time limit
    /// and concurrency; `keep_bytes` keeps each valid file's bytes.
    pub(crate) async fn fetch(
        &self,
        w: u64,
        o: &Observed,
        bounds: Bounds,
        uids: &[u16],
        keep_bytes: bool,
    ) -> Vec<aggregator_store::Gathered> {
        let cfg = &self.config;
        let requests: Vec<PeerRequest> = uids
            .iter()
            .map(|uid| PeerRequest {
                uid: *uid,
                bucket: o.buckets.get(uid).cloned(),
            })
            .collect();
        let options = GatherOptions {
            timeout: cfg.gather_timeout(),
            concurrency: cfg.gather.concurrency,
            keep_bytes,
            ..GatherOptions::default()
        };
        gather(
            &self.clients,
            w,
            &cfg.version,
            &requests,
            bounds,
            self.model.clone(),
            &options,
        )
        .await
    }
}
