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
        let (compared, agreeing) = sign_agreement(&self.model, stored, &file);
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

/// Sign bits compared and agreeing between two aggregates, over the parameters present in both (by name). Packed
/// signs are padded with zero bits in both, so XOR over whole bytes counts only real disagreements.
fn sign_agreement(model: &aggregator_model::ModelSpec, a: &Aggregate, b: &Aggregate) -> (u64, u64) {
    let theirs: HashMap<&str, &[u8]> = b.params.iter().map(|(n, p)| (n.as_str(), p.as_slice())).collect();
    let numel: HashMap<&str, usize> = model
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.layout.numel()))
        .collect();
    let (mut compared, mut differing) = (0u64, 0u64);
    for (name, ours) in &a.params {
        let (Some(other), Some(n)) = (theirs.get(name.as_str()), numel.get(name.as_str())) else {
            continue;
        };
        if other.len() != ours.len() {
            continue;
        }
        compared += *n as u64;
        differing += ours
            .iter()
            .zip(other.iter())
            .map(|(x, y)| u64::from((x ^ y).count_ones()))
            .sum::<u64>();
    }
    (compared, compared.saturating_sub(differing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_counts_bits_of_common_parameters() {
        let model = aggregator_model::ModelSpec::preset("tiny").unwrap();
        let p = &model.params[0];
        let bytes = p.layout.numel().div_ceil(8);
        let agg = |fill: u8| Aggregate {
            params: vec![(p.name.clone(), vec![fill; bytes])],
            timestamp: String::new(),
            window: 1,
            version: "v".into(),
            skipped_uids: vec![],
            success_rate: 1.0,
            global_step: 0,
        };
        assert_eq!(
            sign_agreement(&model, &agg(0), &agg(0)),
            (p.layout.numel() as u64, p.layout.numel() as u64)
        );
        let mut b = agg(0);
        b.params[0].1[0] = 0b0000_0101;
        let (c, a) = sign_agreement(&model, &agg(0), &b);
        assert_eq!((c, a), (p.layout.numel() as u64, p.layout.numel() as u64 - 2));
    }
}
