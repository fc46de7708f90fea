//! Templar 0.2.73's policies as one component (world `bundle`):
//! * peer selection: `update_peers` (spec §4.4), following the leader's posted lists;
//! * time bounds: `[T, T + time_window_delta_seconds]` from `Timestamp::Now` at the sync block, with the aggregator's
//!   `now ± 30 min` fallback when the timestamp is unavailable (spec §2.3; configurable, or disabled);
//! * catch-up verification: the debug-dict metrics and `avg_steps_behind <= sync_max_steps_behind` (spec §7.4);
//! * contribution weighting (WIT 1.1.0): every peer keeps its selection weight, so the aggregate is the selection's
//!   (Templar averages whatever the selected peers upload; robust rules are plugins, e.g. `example-robust`).
//!
//! Configuration keys (all optional): `peer_replacement_frequency` (5), `peer_list_window_margin` (2),
//! `time_window_delta_seconds` (10), `timestamp_fallback_seconds` (1800; `none` disables the fallback),
//! `sync_max_steps_behind` (3).

use templar_policy_sdk::{ChainView, Config, PostedList, SelfCheck, log};
use world::{
    Bounds, BoundsInput, CatchupVerification, ContributionWeighting, PeerSelection, Selection, SelectionInput,
    TimeBounds, Verdict, VerifyInput, Weighting, WeightingInput,
};

struct Policy;

/// `update_peers` state: `next_peers` and `peers_update_window` (spec §4.4), as bytes:
/// version 1, `peers_update_window` (i64 LE), has-next (u8), count (u16 LE), uids (u16 LE each).
///
/// Kept as this compact hand-written layout rather than the SDK's JSON [`templar_policy_sdk::state`]: hosts running
/// 1.0.0 have persisted state in this layout, and a changed format would make the first call after an upgrade
/// refuse it.
#[derive(Debug, Clone, PartialEq)]
struct UpdateState {
    next_peers: Option<Vec<u16>>,
    peers_update_window: i64,
}

impl UpdateState {
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Self {
                next_peers: None,
                peers_update_window: -1,
            });
        }
        let bad = || format!("state of {} bytes is not templar-default's", bytes.len());
        if bytes.len() < 12 || bytes[0] != 1 {
            return Err(bad());
        }
        let peers_update_window = i64::from_le_bytes(bytes[1..9].try_into().map_err(|_| bad())?);
        let n = u16::from_le_bytes([bytes[10], bytes[11]]) as usize;
        if bytes.len() != 12 + 2 * n {
            return Err(bad());
        }
        let uids = bytes[12..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Ok(Self {
            next_peers: (bytes[9] == 1).then_some(uids),
            peers_update_window,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![1];
        out.extend_from_slice(&self.peers_update_window.to_le_bytes());
        out.push(self.next_peers.is_some() as u8);
        let uids = self.next_peers.as_deref().unwrap_or(&[]);
        out.extend_from_slice(&(uids.len() as u16).to_le_bytes());
        for u in uids {
            out.extend_from_slice(&u.to_le_bytes());
        }
        out
    }
}

impl PeerSelection for Policy {
    fn select(input: SelectionInput) -> Result<Selection, String> {
        let config = Config::new(&input.config);
        let freq: i64 = config.get("peer_replacement_frequency", 5)?;
        let margin: i64 = config.get("peer_list_window_margin", 2)?;
        let window = i64::try_from(input.chain.window).map_err(|_| "window out of range".to_string())?;
        let mut state = UpdateState::decode(&input.state)?;
        let mut peers = input.current.clone();
        let mut notes = Vec::new();
        // 1. No peers yet (start-up): take the previous posted list; next_peers is left alone.
        if peers.is_empty()
            && let Some(prev) = &input.previous
        {
            peers = prev.peers.clone();
            notes.push(format!(
                "start-up: took the previous list (sync window {})",
                prev.sync_window
            ));
        }
        // 2. Time to look for the next list: fetch the newest and keep it if it is newer than the one we follow.
        if state.next_peers.is_none()
            && state.peers_update_window + freq - window < margin
            && let Some(latest) = &input.latest
        {
            let effective = latest.first_effective_window as i64;
            if effective > state.peers_update_window {
                state.next_peers = Some(latest.peers.clone());
                state.peers_update_window = effective;
                notes.push(format!("next list staged, effective from window {effective}"));
            }
        }
        // 3. Its window has come: switch.
        if state.next_peers.is_some() && window >= state.peers_update_window {
            peers = state.next_peers.take().unwrap_or_default();
            notes.push(format!(
                "switched to the list effective from window {}",
                state.peers_update_window
            ));
        }
        if notes.is_empty() {
            notes.push("kept the current peers".into());
        }
        log::debug(format!("window {window}: {} peers; {}", peers.len(), notes.join("; ")));
        Ok(Selection {
            peers,
            weights: None,
            state: state.encode(),
            note: notes.join("; "),
        })
    }
}

impl TimeBounds for Policy {
    fn compute(input: BoundsInput) -> Result<Bounds, String> {
        let config = Config::new(&input.config);
        let delta_s: u64 = config.get("time_window_delta_seconds", 10)?;
        if let Some(ts) = input.sync_timestamp_ms {
            return Ok(Bounds {
                not_before_ms: ts,
                not_after_ms: ts.saturating_add(delta_s.saturating_mul(1000)),
                note: format!("chain timestamp of block {} + {delta_s} s", input.sync_block),
            });
        }
        let seconds: u64 = match config.raw("timestamp_fallback_seconds") {
            Some("none") => {
                return Err(format!(
                    "no timestamp for sync block {} and the fallback is disabled",
                    input.sync_block
                ));
            }
            Some(v) => v
                .parse()
                .map_err(|_| format!("config timestamp_fallback_seconds: {v:?} is not a number or none"))?,
            None => 1800,
        };
        log::warn(format!(
            "no timestamp for sync block {}: using now ± {seconds} s",
            input.sync_block
        ));
        let span = seconds.saturating_mul(1000);
        Ok(Bounds {
            not_before_ms: input.now_ms.saturating_sub(span),
            not_after_ms: input.now_ms.saturating_add(span),
            note: format!("fallback: timestamp unavailable, now ± {seconds} s"),
        })
    }
}

impl CatchupVerification for Policy {
    fn verify(input: VerifyInput) -> Result<Verdict, String> {
        let config = Config::new(&input.config);
        let max_behind: f64 = config.get("sync_max_steps_behind", 3.0)?;
        // Optional, not in Templar: a bound on the largest single difference, in steps. An exact replay (this
        // project's catch-up) differs by 0 steps; one flipped sign in one window is 2 steps.
        let max_single: f64 = config.get("sync_max_single_steps_behind", f64::INFINITY)?;
        let (mut sq, mut abs, mut max, mut count) = (0f64, 0f64, 0f64, 0u32);
        for s in &input.samples {
            if s.local.len() != s.reference.len() {
                return Err(format!(
                    "parameter #{}: {} local values but {} reference values",
                    s.index,
                    s.local.len(),
                    s.reference.len()
                ));
            }
            for (l, r) in s.local.iter().zip(&s.reference) {
                let d = l - r;
                sq += d * d;
                abs += d.abs();
                max = max.max(d.abs());
                count += 1;
            }
        }
        let lr = input.learning_rate;
        let verdict = if count == 0 || lr <= 0.0 || lr.is_nan() {
            let inf = f64::INFINITY;
            Verdict {
                l2_norm: inf,
                avg_l2_norm: inf,
                avg_abs_diff: inf,
                max_diff: inf,
                avg_steps_behind: inf,
                max_steps_behind: inf,
                count,
                in_sync: false,
                note: format!("cannot judge: {count} values, learning rate {lr}"),
            }
        } else {
            let l2 = sq.sqrt();
            let avg_abs = abs / count as f64;
            let behind = avg_abs / lr;
            Verdict {
                l2_norm: l2,
                avg_l2_norm: l2 / count as f64,
                avg_abs_diff: avg_abs,
                max_diff: max,
                avg_steps_behind: behind,
                max_steps_behind: max / lr,
                count,
                in_sync: behind <= max_behind && max / lr <= max_single,
                note: format!(
                    "{behind:.3} steps behind on average (limit {max_behind}), {:.3} at most (limit {max_single})",
                    max / lr
                ),
            }
        };
        Ok(verdict)
    }
}

impl ContributionWeighting for Policy {
    /// Templar: every gathered peer counts at its selection weight; the evidence is not used.
    fn weigh(input: WeightingInput) -> Result<Weighting, String> {
        Ok(Weighting {
            weights: input.peers.iter().map(|p| p.selection_weight).collect(),
            state: vec![],
            note: "selection weights unchanged (Templar)".into(),
        })
    }
}

impl SelfCheck for Policy {
    fn self_check() -> Result<(), String> {
        let chain = |window| ChainView {
            block: window * 7,
            window,
            blocks_per_window: 7,
            netuid: 3,
        };
        let list = |peers: Vec<u16>, eff| PostedList {
            peers,
            first_effective_window: eff,
            sync_window: eff - 2,
        };
        // Start-up with two posted lists: take the previous one, stage the newest, switch when it is effective.
        let first = Self::select(SelectionInput {
            chain: chain(100),
            neurons: vec![],
            current: vec![],
            latest: Some(list(vec![4, 5], 101)),
            previous: Some(list(vec![1, 2], 99)),
            state: vec![],
            config: vec![],
        })?;
        if first.peers != [1, 2] {
            return Err(format!("start-up selection {:?}, expected [1, 2]", first.peers));
        }
        let second = Self::select(SelectionInput {
            chain: chain(101),
            neurons: vec![],
            current: first.peers,
            latest: Some(list(vec![4, 5], 101)),
            previous: Some(list(vec![1, 2], 99)),
            state: first.state,
            config: vec![],
        })?;
        if second.peers != [4, 5] {
            return Err(format!(
                "selection at the effective window {:?}, expected [4, 5]",
                second.peers
            ));
        }
        let b = Self::compute(BoundsInput {
            chain: chain(10),
            sync_block: 77,
            sync_timestamp_ms: Some(1_000),
            now_ms: 0,
            config: vec![],
        })?;
        if (b.not_before_ms, b.not_after_ms) != (1_000, 11_000) {
            return Err(format!("bounds {b:?}"));
        }
        Ok(())
    }
}

templar_policy_sdk::export!(bundle: Policy);
