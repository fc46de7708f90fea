//! Templar's `update_peers` (spec §4.4) as tables of consecutive windows, shared by every component that follows
//! the leader's posted lists (the Rust default, the Python example): each table runs through `run`, which feeds
//! back `current` and `state` as the host does and checks the peers.

#![allow(dead_code)]

use aggregator_policy::kinds::peer_selection::{Selection, SelectionInput};
use aggregator_policy::types::{ChainView, Neuron, PostedList};
use aggregator_policy::{Loaded, PolicyEngine};

/// Runs `steps` as consecutive windows on `policy`, feeding back `current` and `state` as the host does, and checks
/// each window's peers; returns the selections.
pub fn run_on(
    engine: &PolicyEngine,
    policy: &Loaded,
    neurons: &[Neuron],
    config: &[(&str, &str)],
    steps: &[Step],
) -> Vec<Selection> {
    let (mut current, mut state) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    for s in steps {
        let input = SelectionInput {
            chain: chain(s.window),
            neurons: neurons.to_vec(),
            current: current.clone(),
            latest: s.latest.clone(),
            previous: s.previous.clone(),
            state: state.clone(),
            config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let sel = engine
            .select(policy, &input)
            .unwrap_or_else(|e| panic!("{}: window {}: {e}", policy.label(), s.window))
            .value;
        assert_eq!(
            sel.peers,
            s.expect,
            "{}: window {}: {}",
            policy.label(),
            s.window,
            sel.note
        );
        (current, state) = (sel.peers.clone(), sel.state.clone());
        out.push(sel);
    }
    out
}

pub fn chain(window: u64) -> ChainView {
    ChainView {
        block: window * 7 + 3,
        window,
        blocks_per_window: 7,
        netuid: 3,
    }
}

pub fn list(peers: &[u16], first_effective_window: u64) -> PostedList {
    PostedList {
        peers: peers.to_vec(),
        first_effective_window,
        sync_window: first_effective_window - 2,
    }
}

/// One window of the table: the posted lists visible then, and the peers Templar would gather.
pub struct Step {
    /// The window.
    pub window: u64,
    /// The newest posted list.
    pub latest: Option<PostedList>,
    /// The one before.
    pub previous: Option<PostedList>,
    /// The peers Templar gathers.
    pub expect: &'static [u16],
}

/// A table's runner: the policy under test on `(config, steps)`.
pub type Run<'a> = &'a dyn Fn(&[(&str, &str)], &[Step]);

/// A table: it runs its windows through the runner it is given.
pub type Table = fn(Run);

/// Every table, by name, for a policy that follows the posted lists.
pub const ALL: [(&str, Table); 4] = [
    (
        "start-up",
        start_up_takes_the_previous_list_then_switches_when_the_newest_is_effective,
    ),
    ("single list", a_single_posted_list_means_no_peers_until_it_is_effective),
    ("margin", the_next_list_is_fetched_only_past_the_margin),
    (
        "older list, frequency",
        an_older_or_equal_list_is_ignored_and_frequency_is_configurable,
    ),
];

pub fn start_up_takes_the_previous_list_then_switches_when_the_newest_is_effective(run: Run) {
    let (a, b) = (list(&[1, 2, 3], 98), list(&[4, 5, 6], 102));
    run(
        &[],
        &[
            // Empty peers: the previous list; the newest (effective 102) is staged at once (-1 + 5 - 100 < 2).
            Step {
                window: 100,
                latest: Some(b.clone()),
                previous: Some(a.clone()),
                expect: &[1, 2, 3],
            },
            Step {
                window: 101,
                latest: Some(b.clone()),
                previous: Some(a.clone()),
                expect: &[1, 2, 3],
            },
            Step {
                window: 102,
                latest: Some(b.clone()),
                previous: Some(a.clone()),
                expect: &[4, 5, 6],
            },
            Step {
                window: 103,
                latest: Some(b.clone()),
                previous: Some(a.clone()),
                expect: &[4, 5, 6],
            },
        ],
    );
}

pub fn a_single_posted_list_means_no_peers_until_it_is_effective(run: Run) {
    // Spec §9.17: with one list, fetch_previous gives nothing, so the first gather has no peers.
    let only = list(&[7, 8], 51);
    run(
        &[],
        &[
            Step {
                window: 50,
                latest: Some(only.clone()),
                previous: None,
                expect: &[],
            },
            Step {
                window: 51,
                latest: Some(only.clone()),
                previous: None,
                expect: &[7, 8],
            },
        ],
    );
}

pub fn the_next_list_is_fetched_only_past_the_margin(run: Run) {
    // Following a list effective from 100: the next is looked at once 100 + 5 - w < 2, i.e. from window 104.
    let (first, second) = (list(&[1, 2], 100), list(&[3, 4], 103));
    run(
        &[],
        &[
            Step {
                window: 100,
                latest: Some(first.clone()),
                previous: None,
                expect: &[1, 2],
            },
            Step {
                window: 101,
                latest: Some(second.clone()),
                previous: Some(first.clone()),
                expect: &[1, 2],
            },
            Step {
                window: 103,
                latest: Some(second.clone()),
                previous: Some(first.clone()),
                expect: &[1, 2],
            },
            // 104: staged (effective 103 <= 104) and switched in the same call.
            Step {
                window: 104,
                latest: Some(second.clone()),
                previous: Some(first.clone()),
                expect: &[3, 4],
            },
        ],
    );
}

pub fn an_older_or_equal_list_is_ignored_and_frequency_is_configurable(run: Run) {
    let (first, same) = (list(&[1, 2], 100), list(&[9, 9], 100));
    run(
        &[],
        &[
            Step {
                window: 100,
                latest: Some(first.clone()),
                previous: None,
                expect: &[1, 2],
            },
            Step {
                window: 110,
                latest: Some(same.clone()),
                previous: Some(first.clone()),
                expect: &[1, 2],
            },
        ],
    );
    // peer_replacement_frequency 10: a new list is not looked at before window 109.
    let next = list(&[5, 6], 104);
    run(
        &[("peer_replacement_frequency", "10")],
        &[
            Step {
                window: 100,
                latest: Some(first.clone()),
                previous: None,
                expect: &[1, 2],
            },
            Step {
                window: 108,
                latest: Some(next.clone()),
                previous: Some(first.clone()),
                expect: &[1, 2],
            },
            Step {
                window: 109,
                latest: Some(next.clone()),
                previous: Some(first.clone()),
                expect: &[5, 6],
            },
        ],
    );
}
