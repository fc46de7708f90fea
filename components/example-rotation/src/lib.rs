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

wit_bindgen::generate!({ path: "../../wit", world: "peer-selector" });

use exports::templar::policy::describe::{Guest as Describe, Info};
use exports::templar::policy::peer_selection::{Guest as PeerSelection, Selection, SelectionInput};
use templar::policy::log::{Level, log};
use templar::policy::types::{ChainView, Neuron};

struct Rotation;

fn get<T: std::str::FromStr>(config: &[(String, String)], key: &str, default: T) -> Result<T, String> {
    match config.iter().find(|(k, _)| k == key) {
        None => Ok(default),
        Some((_, v)) => v
            .trim()
            .parse()
            .map_err(|_| format!("config {key}: {v:?} is not valid")),
    }
}

impl PeerSelection for Rotation {
    fn select(input: SelectionInput) -> Result<Selection, String> {
        let max_peers: usize = get(&input.config, "max_peers", 15)?;
        let core: usize = get::<usize>(&input.config, "core", 10)?.min(max_peers);
        let explore_weight: f32 = get(&input.config, "explore_weight", 0.5)?;
        // The host refuses any other weight (and would fall back to the default policy).
        if !(explore_weight == 0.0 || (1.0 / 1_048_576.0..=1_048_576.0).contains(&explore_weight)) {
            return Err(format!(
                "config explore_weight: {explore_weight} must be 0 or in [2^-20, 2^20]"
            ));
        }
        let blacklist: Vec<u16> = match input.config.iter().find(|(k, _)| k == "blacklist") {
            None => Vec::new(),
            Some((_, v)) => v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().map_err(|_| format!("blacklist: {s:?} is not a uid")))
                .collect::<Result<_, _>>()?,
        };
        let mut candidates: Vec<&Neuron> = input
            .neurons
            .iter()
            .filter(|n| n.has_bucket && !blacklist.contains(&n.uid))
            .collect();
        let score = |n: &Neuron| n.incentive * n.stake.max(0.0).sqrt();
        candidates.sort_by(|a, b| score(b).total_cmp(&score(a)).then(a.uid.cmp(&b.uid)));
        let (top, rest) = candidates.split_at(core.min(candidates.len()));
        let mut peers: Vec<u16> = top.iter().map(|n| n.uid).collect();
        let mut weights = vec![1.0f32; peers.len()];
        let explore = (max_peers - peers.len()).min(rest.len());
        if explore > 0 {
            let offset = (input.chain.window as usize).wrapping_mul(explore) % rest.len();
            for i in 0..explore {
                peers.push(rest[(offset + i) % rest.len()].uid);
                weights.push(explore_weight);
            }
        }
        log(
            Level::Info,
            &format!(
                "window {}: {} core + {explore} exploring",
                input.chain.window,
                top.len()
            ),
        );
        Ok(Selection {
            note: format!("{} core peers by incentive*sqrt(stake), {explore} rotating", top.len()),
            peers,
            weights: Some(weights),
            state: Vec::new(),
        })
    }
}

impl Describe for Rotation {
    fn describe() -> Info {
        Info {
            name: "example-rotation".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            policies: vec!["peer-selection".into()],
        }
    }

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

export!(Rotation);
