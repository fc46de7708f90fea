//! The shadow aggregate (`shadow_aggregate`): the aggregate the peer-selection shadow candidate's selection would
//! have produced, from the files already gathered (moved, not copied, after the stored aggregate is made) plus its
//! extra peers' files (fetched within the same bounds, time limit and concurrency), compared sign bit by sign bit
//! with the stored aggregate. It is never written, and nothing here can fail the window: a failure is recorded.

use std::collections::HashMap;

use aggregator_chain::Chain;
use aggregator_codec::Aggregate;
use aggregator_receipt::ShadowAggregate;
use aggregator_store::SkipReason;
use aggregator_window::{PeerInput, aggregate_window};

use super::decide::Decision;
use super::observe::Observed;
use crate::daemon::Daemon;

impl<C: Chain + 'static> Daemon<C> {
    /// The shadow aggregate's record. `inputs` are the active window's gathered inputs, no longer needed by it.
    pub(crate) async fn shadow_aggregate(
        &self,
        w: u64,
        o: &Observed,
        d: &Decision,
        inputs: Vec<(u16, PeerInput<SkipReason>)>,
        stored: &Aggregate,
    ) -> ShadowAggregate {
        let mut record = ShadowAggregate {
            aggregated: vec![],
            fetched: vec![],
            bits_compared: 0,
            bits_agreeing: 0,
            sign_agreement: None,
            error: None,
        };
        let Some(selection) = d.shadow.peer_selection.as_ref().and_then(|c| c.decision.clone()) else {
            record.error = Some("the peer-selection shadow candidate made no decision".into());
            return record;
        };
        let mut have: HashMap<u16, PeerInput<SkipReason>> = inputs.into_iter().collect();
        record.fetched = selection
            .peers
            .iter()
            .copied()
            .filter(|u| !have.contains_key(u))
            .collect();
        if !record.fetched.is_empty() {
            let extra = self.fetch(w, o, d.bounds, &record.fetched, false).await;
            for g in extra {
                let input = match g.outcome {
                    Ok(gradient) => PeerInput::Valid {
                        gradient: *gradient,
                        weight: 1.0,
                    },
                    Err(reason) => PeerInput::Skipped(reason),
                };
                have.insert(g.uid, input);
            }
        }
        let mut shadow_inputs = Vec::with_capacity(selection.peers.len());
        for (i, uid) in selection.peers.iter().enumerate() {
            let weight = selection.weights.as_ref().map_or(1.0, |ws| ws[i]);
            // A uid listed twice (which the policy runtime refuses anyway) is aggregated once.
            let Some(input) = have.remove(uid) else { continue };
            shadow_inputs.push((
                *uid,
                match input {
                    PeerInput::Valid { gradient, .. } => PeerInput::Valid { gradient, weight },
                    skipped => skipped,
                },
            ));
        }
        drop(have);
        let (model, backend, version) = (self.model.clone(), self.backend.clone(), self.config.version.clone());
        let timestamp = stored.timestamp.clone();
        let result = tokio::task::spawn_blocking(move || {
            aggregate_window(&model, backend.as_ref(), w as i64, &version, &shadow_inputs, timestamp)
        })
        .await;
        let shadow = match result {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                record.error = Some(format!("aggregate: {e}"));
                return record;
            }
            Err(e) => {
                record.error = Some(format!("aggregate task: {e}"));
                return record;
            }
        };
        record.aggregated = shadow.valid_uids;
        let Some(file) = shadow.file else {
            record.error = Some("no peer of the candidate's selection had a valid gradient".into());
            return record;
        };
        let (compared, agreeing) = aggregator_window::sign_agreement(&self.model, stored, &file);
        record.bits_compared = compared;
        record.bits_agreeing = agreeing;
        record.sign_agreement = Some(if compared == 0 {
            1.0
        } else {
            agreeing as f64 / compared as f64
        });
        record
    }
}
