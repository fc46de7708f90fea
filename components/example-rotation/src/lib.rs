//! An example peer-selection policy, written as a third party would: it ignores the leader's posted lists and
//! selects from the metagraph itself.
//!
//! * Candidates: neurons with a bucket, not blacklisted.
//! * Core: the `core` candidates with the highest `incentive * sqrt(stake)` (ties to the lower uid), weight 1.0.
//! * Exploration: the remaining `max_peers - core` slots rotate through the other candidates, window by window, so
//!   that every miner is tried regularly; weight `explore_weight`.
//!
//! Why weights: an exploring miner has no track record yet, so its gradient counts for half as much as a proven
//! one's in the mean (the host's scatter-mean is weighted: each coefficient slot is `sum(w * v) / sum(w)`); a
//! miner that turns out badly costs the aggregate less while it is being tried. Weight 0 would select a miner (its
//! file is fetched and checked, and it counts in `success_rate`) without letting it move the aggregate.
//!
//! Configuration: `max_peers` (15), `core` (10), `explore_weight` (0.5), `blacklist` (comma-separated uids).
//! Stateless: the rotation is a function of the window number, so every node selects the same peers.

use templar_policy_sdk::{ChainView, Config, Neuron, Neurons, SelfCheck, log};
use world::{PeerSelection, Selection, SelectionInput};

struct Rotation;

impl PeerSelection for Rotation {
    fn select(input: SelectionInput) -> Result<Selection, String> {
        let config = Config::new(&input.config);
        let max_peers: usize = config.get("max_peers", 15)?;
        let core: usize = config.get::<usize>("core", 10)?.min(max_peers);
        // The host refuses any other weight (and would fall back to the default policy).
        let explore_weight = config.weight("explore_weight", 0.5)?;
        let blacklist: Vec<u16> = config.list("blacklist")?;
        // Ranked: highest incentive * sqrt(stake) first, ties to the lower uid.
        let ranked = Neurons::new(&input.neurons).top_by(usize::MAX, |n: &Neuron| {
            (n.has_bucket && !blacklist.contains(&n.uid)).then(|| n.incentive * n.stake.max(0.0).sqrt())
        });
        let (top, rest) = ranked.split_at(core.min(ranked.len()));
        let mut peers: Vec<u16> = top.to_vec();
        let mut weights = vec![1.0f32; peers.len()];
        let explore = (max_peers - peers.len()).min(rest.len());
        if explore > 0 {
            let offset = (input.chain.window as usize).wrapping_mul(explore) % rest.len();
            for i in 0..explore {
                peers.push(rest[(offset + i) % rest.len()]);
                weights.push(explore_weight);
            }
        }
        log::info(format!(
            "window {}: {} core + {explore} exploring",
            input.chain.window,
            top.len()
        ));
        Ok(Selection {
            note: format!("{} core peers by incentive*sqrt(stake), {explore} rotating", top.len()),
            peers,
            weights: Some(weights),
            state: Vec::new(),
        })
    }
}

impl SelfCheck for Rotation {
    fn self_check() -> Result<(), String> {
        let neurons = (0..6u16)
            .map(|uid| Neuron {
                uid,
                stake: 100.0,
                incentive: uid as f64 / 10.0,
                has_bucket: uid != 3,
            })
            .collect();
        let input = |window| SelectionInput {
            chain: ChainView {
                block: window * 7,
                window,
                blocks_per_window: 7,
                netuid: 3,
            },
            neurons,
            current: vec![],
            latest: None,
            previous: None,
            state: vec![],
            config: vec![("max_peers".into(), "3".into()), ("core".into(), "2".into())],
        };
        let s = Self::select(input(0))?;
        // Core: uids 5 and 4 (highest incentive); uid 3 has no bucket; one exploring slot among 0, 1, 2.
        if s.peers[..2] != [5, 4] || s.peers.len() != 3 || s.peers[2] > 2 {
            return Err(format!("unexpected selection {:?}", s.peers));
        }
        Ok(())
    }
}

templar_policy_sdk::export!(peer_selector: Rotation);
