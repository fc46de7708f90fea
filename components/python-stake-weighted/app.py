"""A peer-selection policy written in Python: Templar's own ``update_peers`` (spec §4.4), weighted by stake.

Peers: exactly Templar's rule, as ``templar-default`` applies it: follow the leader validator's posted peer lists,
staging the newest list once ``peers_update_window + peer_replacement_frequency - window < peer_list_window_margin``
and switching to it at its first effective window; at start-up take the previous posted list.

Weights (``weighting = "stake"``, the default): each selected peer counts in the scatter-mean in proportion to its
stake, relative to the selected peers' mean stake and clamped to [1/64, 64], so that a well-staked miner moves the
aggregate more than a new one while none dominates or vanishes. A peer that is not in the metagraph gets 1/64. When
no selected peer has stake, or with ``weighting = "none"``, the selection has no weights (all 1.0: Templar's bits).

Configuration: ``peer_replacement_frequency`` (5), ``peer_list_window_margin`` (2), ``weighting`` (stake | none).
State: one version byte (1) and JSON ``{"next": [uids] | null, "window": int}``, the layout of the Rust SDK's
``templar_policy_sdk::state``.

Built with componentize-py against the host's WIT (``wit/policy.wit``, world ``peer-selector``); see README.md.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.exports import describe, peer_selection
from wit_world.imports import log, types

NAME = "python-stake-weighted"
VERSION = "0.1.0"
STATE_VERSION = 1
MIN_W, MAX_W = 1.0 / 64.0, 64.0


def setting(config, key, default, parse):
    """The first value of ``key`` parsed with ``parse``, or ``default``; an error names the key and the value."""
    for k, v in config:
        if k == key:
            try:
                return parse(v.strip())
            except ValueError:
                raise Err(f"config {key}: {v!r} is not a valid {parse.__name__}")
    return default


def load_state(raw):
    if not raw:
        return {"next": None, "window": -1}
    if raw[0] != STATE_VERSION:
        raise Err(f"state of {len(raw)} bytes has version {raw[0]}, this policy reads version {STATE_VERSION}")
    try:
        state = json.loads(bytes(raw[1:]).decode())
        next_peers, window = state["next"], int(state["window"])
    except (ValueError, KeyError, TypeError) as e:
        raise Err(f"state does not parse: {e}")
    return {"next": None if next_peers is None else [int(u) for u in next_peers], "window": window}


def save_state(state):
    return bytes([STATE_VERSION]) + json.dumps(state, separators=(",", ":")).encode()


def stake_weights(peers, neurons):
    stake = {n.uid: max(n.stake, 0.0) for n in neurons}
    stakes = [stake.get(uid, 0.0) for uid in peers]
    total = sum(stakes)
    if not peers or not total > 0.0:
        return None
    mean = total / len(peers)
    return [min(max(s / mean, MIN_W), MAX_W) for s in stakes]


class Describe(wit_world.exports.Describe):
    def describe(self):
        return describe.Info(name=NAME, version=VERSION, policies=["peer-selection"])

    def self_check(self):
        chain = lambda w: types.ChainView(block=w * 7, window=w, blocks_per_window=7, netuid=3)
        posted = lambda peers, eff: types.PostedList(peers=peers, first_effective_window=eff, sync_window=eff - 2)
        neurons = [types.Neuron(uid=u, stake=s, incentive=0.0, has_bucket=True) for u, s in [(1, 10.0), (2, 30.0)]]
        sel = PeerSelection()
        first = sel.select(peer_selection.SelectionInput(
            chain=chain(100), neurons=neurons, current=[], latest=posted([4, 5], 101),
            previous=posted([1, 2], 99), state=b"", config=[]))
        if list(first.peers) != [1, 2] or first.weights != [0.5, 1.5]:
            raise Err(f"start-up selection {first.peers} {first.weights}, expected [1, 2] [0.5, 1.5]")
        second = sel.select(peer_selection.SelectionInput(
            chain=chain(101), neurons=neurons, current=first.peers, latest=posted([4, 5], 101),
            previous=posted([1, 2], 99), state=first.state, config=[]))
        if list(second.peers) != [4, 5]:
            raise Err(f"selection at the effective window {second.peers}, expected [4, 5]")


class PeerSelection(wit_world.exports.PeerSelection):
    def select(self, input):
        config = input.config
        freq = setting(config, "peer_replacement_frequency", 5, int)
        margin = setting(config, "peer_list_window_margin", 2, int)
        weighting = setting(config, "weighting", "stake", str)
        if weighting not in ("stake", "none"):
            raise Err(f"config weighting: {weighting!r} is not stake or none")
        window = input.chain.window
        state = load_state(input.state)
        peers = list(input.current)
        notes = []
        # 1. No peers yet (start-up): take the previous posted list; the staged list is left alone.
        if not peers and input.previous is not None:
            peers = list(input.previous.peers)
            notes.append(f"start-up: took the previous list (sync window {input.previous.sync_window})")
        # 2. Time to look for the next list: keep the newest if it is newer than the one followed.
        if state["next"] is None and state["window"] + freq - window < margin and input.latest is not None:
            effective = input.latest.first_effective_window
            if effective > state["window"]:
                state = {"next": list(input.latest.peers), "window": effective}
                notes.append(f"next list staged, effective from window {effective}")
        # 3. Its window has come: switch.
        if state["next"] is not None and window >= state["window"]:
            peers, state = state["next"], {"next": None, "window": state["window"]}
            notes.append(f"switched to the list effective from window {state['window']}")
        if not notes:
            notes.append("kept the current peers")
        weights = stake_weights(peers, input.neurons) if weighting == "stake" else None
        if weights is not None:
            notes.append(f"stake weights {min(weights):.3f}..{max(weights):.3f}")
        log.log(log.Level.DEBUG, f"window {window}: {len(peers)} peers; {'; '.join(notes)}")
        return peer_selection.Selection(peers=peers, weights=weights, state=save_state(state), note="; ".join(notes))
