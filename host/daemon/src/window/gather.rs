//! Gather: the selected peers' files inside the bounds, each checked against the model. It has no error of its
//! own: a peer whose file is missing, early, late, too large, malformed or unreadable is that peer's outcome (a
//! typed [`SkipReason`]), and the window goes on with the others.

use aggregator_chain::Chain;
use aggregator_store::{GatherOptions, PeerRequest, SkipReason, gather};
use aggregator_window::PeerInput;

use super::decide::Decision;
use super::observe::Observed;
use crate::daemon::Daemon;

impl<C: Chain + 'static> Daemon<C> {
    /// Each selected peer's gradient or skip reason, in selection order.
    pub(crate) async fn gather(&self, w: u64, o: &Observed, d: &Decision) -> Vec<(u16, PeerInput<SkipReason>)> {
        let cfg = &self.config;
        let requests: Vec<PeerRequest> = d
            .selection
            .peers
            .iter()
            .map(|uid| PeerRequest {
                uid: *uid,
                bucket: o.buckets.get(uid).cloned(),
            })
            .collect();
        let options = GatherOptions {
            timeout: cfg.gather_timeout(),
            concurrency: cfg.gather.concurrency,
            ..GatherOptions::default()
        };
        let gathered = gather(
            &self.clients,
            w,
            &cfg.version,
            &requests,
            d.bounds,
            self.model.clone(),
            &options,
        )
        .await;
        gathered
            .into_iter()
            .map(|g| {
                let input = match g.outcome {
                    Ok(gradient) => PeerInput::Valid(*gradient),
                    Err(reason) => PeerInput::Skipped(reason),
                };
                (g.uid, input)
            })
            .collect()
    }
}
