//! An example contribution-weighting policy (WIT 1.1.0): it reads the evidence the host computed about each
//! gathered gradient and leaves out the ones that look poisoned. The rule, in order, for each peer with a selection
//! weight above 0:
//!
//! 1. **Copies.** When another peer's upload is a copy of this one's (`identical`, or a coefficient overlap of at
//!    least `copy_overlap`) and was uploaded *earlier*, this peer is the copier: weight 0. The earlier upload (the
//!    victim) keeps its weight. Copies uploaded in the same second (S3 `LastModified` has one-second resolution, so
//!    the host cannot tell who copied) share the weight: each gets its selection weight divided by the number of
//!    them, so that together they count once.
//! 2. **Disagreement.** When its agreement with the others' majority sign (`majority-agreement`) is below
//!    `min_sign_agreement`, measured over at least `min_compared` coefficients: weight 0. Sign-flipped, random and
//!    crafted gradients agree with the honest majority about as often as a coin, or less; honest ones, which share
//!    a direction, well above it. The majority and not the leave-one-out mean: a few colluders sending one
//!    large-coefficient vector can drag the mean (and so make honest peers look like the dissenters), but each of
//!    them has one vote.
//! 3. Everyone else keeps the selection weight unchanged, so a window without suspects gives exactly the default's
//!    aggregate (the same bits).
//!
//! Never everyone: when the rule would leave out every weighted peer (two peers that disagree, say), it leaves out
//! no one and says so in the note.
//!
//! Configuration: `min_sign_agreement` (0.6), `min_compared` (64), `copy_overlap` (0.9). Stateless.

use templar_policy_sdk::{SelfCheck, log};
use world::{ContributionWeighting, PeerEvidence, Weighting, WeightingInput};

struct Robust;

/// The rule's settings.
struct Rule {
    min_sign_agreement: f64,
    min_compared: u64,
    copy_overlap: f64,
}

impl Rule {
    fn from(input: &WeightingInput) -> Result<Self, String> {
        let config = templar_policy_sdk::Config::new(&input.config);
        Ok(Self {
            min_sign_agreement: config.get("min_sign_agreement", 0.6)?,
            min_compared: config.get("min_compared", 64)?,
            copy_overlap: config.get("copy_overlap", 0.9)?,
        })
    }

    /// Why `p` is left out, if it is.
    fn exclude(&self, p: &PeerEvidence) -> Option<String> {
        let copy = |s: &&world::SimilarPeer| s.identical || s.overlap >= self.copy_overlap;
        if let Some(s) = p
            .similar
            .iter()
            .filter(copy)
            .find(|s| s.last_modified_ms < p.last_modified_ms)
        {
            return Some(format!(
                "uid {} copies uid {} (overlap {:.3}, {} ms later)",
                p.uid,
                s.uid,
                s.overlap,
                p.last_modified_ms - s.last_modified_ms
            ));
        }
        match p.majority_agreement {
            Some(a) if p.voted >= self.min_compared && a < self.min_sign_agreement => Some(format!(
                "uid {} agrees with the others' majority on {:.3} of {} signs (< {})",
                p.uid, a, p.voted, self.min_sign_agreement
            )),
            _ => None,
        }
    }

    /// The weight of a kept peer: its selection weight, shared with copies uploaded at the same time.
    fn kept_weight(&self, p: &PeerEvidence) -> f32 {
        let ties = p
            .similar
            .iter()
            .filter(|s| (s.identical || s.overlap >= self.copy_overlap) && s.last_modified_ms == p.last_modified_ms)
            .count();
        let w = p.selection_weight / (ties + 1) as f32;
        // The host's smallest non-zero weight is 2^-20.
        if templar_policy_sdk::weight_ok(w) {
            w
        } else {
            templar_policy_sdk::MIN_WEIGHT
        }
    }
}

impl ContributionWeighting for Robust {
    fn weigh(input: WeightingInput) -> Result<Weighting, String> {
        let rule = Rule::from(&input)?;
        let mut weights = Vec::with_capacity(input.peers.len());
        let mut reasons = Vec::new();
        for p in &input.peers {
            if p.selection_weight == 0.0 {
                weights.push(0.0);
                continue;
            }
            match rule.exclude(p) {
                Some(why) => {
                    reasons.push(why);
                    weights.push(0.0);
                }
                None => weights.push(rule.kept_weight(p)),
            }
        }
        let weighted = input.peers.iter().filter(|p| p.selection_weight > 0.0).count();
        if weighted > 0 && weights.iter().all(|w| *w == 0.0) {
            log::warn(format!("every weighted peer would be left out: {}", reasons.join("; ")));
            return Ok(Weighting {
                weights: input.peers.iter().map(|p| p.selection_weight).collect(),
                state: vec![],
                note: format!("no one left out: the rule would leave out all {weighted} weighted peers"),
            });
        }
        let note = if reasons.is_empty() {
            "no one left out".to_string()
        } else {
            format!("{} left out: {}", reasons.len(), reasons.join("; "))
        };
        Ok(Weighting {
            weights,
            state: vec![],
            note,
        })
    }
}

impl SelfCheck for Robust {
    /// A copy and its victim, a sign flip, and a window without suspects.
    fn self_check() -> Result<(), String> {
        let peer = |uid: u16, agreement: f64, at: u64, similar: Vec<world::SimilarPeer>| PeerEvidence {
            uid,
            selection_weight: 1.0,
            last_modified_ms: at,
            param_norms: vec![1.0],
            total_norm: 1.0,
            slots: 1000,
            copies: 1,
            index_overlap: 0.7,
            cosine: Some(2.0 * agreement - 1.0),
            sign_agreement: Some(agreement),
            compared: 700,
            majority_agreement: Some(agreement),
            voted: 600,
            similar,
        };
        let copy = |uid: u16, at: u64| world::SimilarPeer {
            uid,
            overlap: 1.0,
            identical: true,
            last_modified_ms: at,
        };
        let input = |peers| WeightingInput {
            chain: templar_policy_sdk::ChainView {
                block: 70,
                window: 10,
                blocks_per_window: 7,
                netuid: 3,
            },
            peers,
            params: 1,
            state: vec![],
            config: vec![],
        };
        let w = Self::weigh(input(vec![
            peer(1, 0.85, 1000, vec![copy(3, 3000)]),
            peer(2, 0.2, 1000, vec![]),
            peer(3, 0.85, 3000, vec![copy(1, 1000)]),
            peer(4, 0.8, 2000, vec![]),
        ]))?;
        if w.weights != [1.0, 0.0, 0.0, 1.0] {
            return Err(format!(
                "copy and sign flip: weights {:?}, expected [1, 0, 0, 1]",
                w.weights
            ));
        }
        let honest = Self::weigh(input(vec![peer(1, 0.8, 1000, vec![]), peer(2, 0.9, 2000, vec![])]))?;
        if honest.weights != [1.0, 1.0] {
            return Err(format!("no suspects: weights {:?}, expected [1, 1]", honest.weights));
        }
        Ok(())
    }
}

templar_policy_sdk::export!(contribution_weigher: Robust);
