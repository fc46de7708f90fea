//! Lookups in the metagraph.

use crate::Neuron;

/// The metagraph a call received, with lookups whose order never depends on anything but the input (ties go to
/// the lower uid), so that every node selects the same peers.
#[derive(Debug, Clone, Copy)]
pub struct Neurons<'a>(&'a [Neuron]);

impl<'a> Neurons<'a> {
    /// Wraps a policy input's `neurons`.
    pub fn new(neurons: &'a [Neuron]) -> Self {
        Self(neurons)
    }

    /// The neuron with `uid`, if the metagraph has it.
    pub fn get(&self, uid: u16) -> Option<&'a Neuron> {
        self.0.iter().find(|n| n.uid == uid)
    }

    /// Its stake, or 0 when the uid is not in the metagraph.
    pub fn stake(&self, uid: u16) -> f64 {
        self.get(uid).map_or(0.0, |n| n.stake)
    }

    /// Neurons whose gradients can be fetched (a valid bucket commitment).
    pub fn with_bucket(&self) -> impl Iterator<Item = &'a Neuron> + 'a {
        self.0.iter().filter(|n| n.has_bucket)
    }

    /// Up to `k` uids with the highest score, highest first; `score` returns `None` to leave a neuron out. NaN scores
    /// are left out; ties go to the lower uid.
    pub fn top_by(&self, k: usize, score: impl Fn(&Neuron) -> Option<f64>) -> Vec<u16> {
        let mut scored: Vec<(f64, u16)> = self
            .0
            .iter()
            .filter_map(|n| score(n).filter(|s| !s.is_nan()).map(|s| (s, n.uid)))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.dedup_by_key(|s| s.1);
        scored.into_iter().take(k).map(|(_, uid)| uid).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(uid: u16, stake: f64, has_bucket: bool) -> Neuron {
        Neuron {
            uid,
            stake,
            incentive: 0.0,
            has_bucket,
        }
    }

    #[test]
    fn top_by_is_deterministic_and_skips_nan_and_none() {
        let all = [
            n(3, 5.0, true),
            n(1, 5.0, true),
            n(2, f64::NAN, true),
            n(4, 9.0, false),
            n(5, 1.0, true),
        ];
        let ns = Neurons::new(&all);
        assert_eq!(ns.top_by(3, |n| n.has_bucket.then_some(n.stake)), vec![1, 3, 5]);
        assert_eq!(ns.stake(4), 9.0);
        assert_eq!(ns.stake(99), 0.0);
        assert_eq!(ns.with_bucket().count(), 4);
    }
}
