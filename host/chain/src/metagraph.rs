//! The metagraph as the aggregation server needs it (spec §5.1): uids, hotkeys, stake, incentive; and the
//! commitments that map uids to buckets (spec §5.3).

use std::collections::BTreeMap;

use crate::commitment::Registration;

/// One registered neuron.
#[derive(Debug, Clone, PartialEq)]
pub struct Neuron {
    /// Uid on the subnet.
    pub uid: u16,
    /// Hotkey, 32 bytes.
    pub hotkey: [u8; 32],
    /// Hotkey in SS58 (prefix 42), as Templar and bittensor print it.
    pub hotkey_ss58: String,
    /// Stake S in rao (1e-9 TAO): alpha on the subnet plus `TaoWeight` × root stake.
    pub stake: u64,
    /// Incentive in `0..=1` (0 where the chain has no incentive vector).
    pub incentive: f64,
}

impl Neuron {
    /// Stake in TAO units (Templar compares S with thresholds such as 20000).
    pub fn stake_tao(&self) -> f64 {
        self.stake as f64 / 1e9
    }
}

/// The subnet's neurons at one block.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metagraph {
    /// The subnet.
    pub netuid: u16,
    /// The block read.
    pub block: u64,
    /// Neurons by ascending uid.
    pub neurons: Vec<Neuron>,
    /// Chain values that were present but unreadable and were taken as their neutral value (already logged by the
    /// client; the daemon counts them). A failed read is an error instead, never an entry here.
    pub defaulted: Vec<DefaultedField>,
}

/// A chain value that could not be decoded and was taken as its neutral value (0), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultedField {
    /// The storage item (`TaoWeight`).
    pub field: &'static str,
    /// The decode error.
    pub reason: String,
}

impl Metagraph {
    /// The neuron with this hotkey.
    pub fn by_hotkey(&self, hotkey: &[u8; 32]) -> Option<&Neuron> {
        self.neurons.iter().find(|n| &n.hotkey == hotkey)
    }

    /// The neuron with this uid.
    pub fn by_uid(&self, uid: u16) -> Option<&Neuron> {
        self.neurons.iter().find(|n| n.uid == uid)
    }

    /// The leader: the highest stake (Templar's `argmax(S)`); ties go to the lowest uid, as `torch.argmax` returns
    /// the first maximum. `None` on an empty subnet.
    pub fn leader(&self) -> Option<&Neuron> {
        self.neurons.iter().fold(None::<&Neuron>, |best, n| match best {
            Some(b) if b.stake >= n.stake => Some(b),
            _ => Some(n),
        })
    }
}

/// A commitment kept under Templar's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The committing hotkey, 32 bytes.
    pub hotkey: [u8; 32],
    /// The 128-character string: bucket account id, read key id, read secret.
    pub text: String,
    /// The block the commitment was made at.
    pub block: u32,
}

/// A commitment that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedCommitment {
    /// The hotkey in SS58, or hex if the key could not be read.
    pub hotkey: String,
    /// Why.
    pub reason: String,
}

/// The subnet's commitments: uid → commitment, and what was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commitments {
    /// Kept commitments by uid.
    pub by_uid: BTreeMap<u16, Committed>,
    /// Skipped ones, in chain order.
    pub skipped: Vec<SkippedCommitment>,
}

impl Commitments {
    /// Applies Templar's rules to one raw `CommitmentOf` entry (spec §5.3): the hotkey must be in the metagraph and
    /// the first field must be exactly 128 UTF-8 characters. A skip is logged with the hotkey and the reason.
    pub fn consider(&mut self, metagraph: &Metagraph, hotkey: [u8; 32], hotkey_ss58: String, value: &[u8]) {
        let skip = |this: &mut Self, reason: String| {
            tracing::warn!(hotkey = %hotkey_ss58, %reason, "commitment skipped");
            this.skipped.push(SkippedCommitment {
                hotkey: hotkey_ss58.clone(),
                reason,
            });
        };
        let Some(neuron) = metagraph.by_hotkey(&hotkey) else {
            return skip(self, format!("hotkey not registered on subnet {}", metagraph.netuid));
        };
        let registration = match Registration::decode(value) {
            Ok(r) => r,
            Err(e) => return skip(self, e.to_string()),
        };
        match registration.bucket_string() {
            Ok(text) => {
                self.by_uid.insert(
                    neuron.uid,
                    Committed {
                        hotkey,
                        text,
                        block: registration.block,
                    },
                );
            }
            Err(e) => skip(self, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neuron(uid: u16, stake: u64) -> Neuron {
        Neuron {
            uid,
            hotkey: [uid as u8; 32],
            hotkey_ss58: format!("hk{uid}"),
            stake,
            incentive: 0.0,
        }
    }

    #[test]
    fn leader_is_the_first_highest_stake() {
        let m = Metagraph {
            netuid: 3,
            block: 1,
            neurons: vec![neuron(0, 5), neuron(1, 9), neuron(2, 9)],
            defaulted: vec![],
        };
        assert_eq!(m.leader().map(|n| n.uid), Some(1));
        assert!(Metagraph::default().leader().is_none());
    }
}
