//! Per-peer evidence for the `contribution-weighting` policy: what each valid gradient looks like beside the others
//! (norms, index overlap, cosine and sign agreement with the leave-one-out mean, near-copies). The statistics are
//! defined in `wit/policy.wit` (interface `contribution-weighting`); this module computes them exactly so.
//!
//! One pass over every peer's entries, block by block (the walk of the aggregation's scatter, without the DCT),
//! compares every pair of peers at each slot both sent (near-copies) and computes the statistics against the others;
//! when some peers turn out to be copies, a second pass computes the statistics again with each group of copies
//! counting as one peer. The work per slot is quadratic in the peers
//! that sent it, so at most `peers × entries` in all. Memory: per block, scratch of the block's size; per chunk of
//! blocks, a few numbers per peer and a counter pair per pair of peers that shared a slot.
//!
//! **Copies count once.** Peers whose uploads are identical, or whose coefficient overlap is at least
//! [`DUPLICATE_OVERLAP`], form a group (transitively). In every statistic against "the others", each member of a
//! group weighs its selection weight divided by the group's size, and a peer's others never include its own group:
//! a copy is not a second opinion, and four colluders sending one vector are one voice, not four.
//!
//! Determinism: work is cut into chunks of blocks whose bounds depend only on the model and the number of peers
//! (never on the thread count); each chunk's sums are made in a fixed order (slots in first-touch order, peers in
//! input order) and the chunks are added in model order, so the result has the same bits on any number of threads.

use std::collections::BTreeMap;

use std::ops::Range;

use aggregator_codec::{Gradient, SparseParam};
use aggregator_kernels::{ParamLayout, l2_norm};
use aggregator_model::ModelSpec;
use rayon::prelude::*;

/// Similarity threshold for [`Similar`] entries (coefficient overlap).
pub const SIMILAR_OVERLAP: f64 = 0.5;
/// Coefficient overlap from which two uploads are copies of each other (grouped; see the module docs).
pub const DUPLICATE_OVERLAP: f64 = 0.9;
/// Most [`Similar`] entries listed per peer.
pub const MAX_SIMILAR: usize = 16;
/// Two coefficients `a`, `b` match when `|a - b| <= MATCH_TOLERANCE * max(|a|, |b|)`.
pub const MATCH_TOLERANCE: f64 = 1.0 / 1024.0;
/// Entries per chunk of work (a chunk holds whole blocks; at least one).
const CHUNK_ENTRIES: usize = 1 << 16;
/// Chunks run in parallel before their partial sums are added (in order).
const BATCH_CHUNKS: usize = 64;

/// One valid peer, as the evidence needs it.
#[derive(Debug, Clone, Copy)]
pub struct EvidencePeer<'a> {
    /// Its uid.
    pub uid: u16,
    /// The gradient (validated against the model).
    pub gradient: &'a Gradient,
    /// Its selection weight (0, or in `[MIN_WEIGHT, MAX_WEIGHT]`).
    pub weight: f32,
    /// Its upload's `LastModified`, ms.
    pub last_modified_ms: u64,
    /// SHA-256 of its file's bytes (hex), when known: two equal digests make the peers identical.
    pub sha256: Option<&'a str>,
}

/// Another peer whose upload is (nearly) the same.
#[derive(Debug, Clone, PartialEq)]
pub struct Similar {
    /// Its uid.
    pub uid: u16,
    /// Coefficient overlap (see the WIT).
    pub overlap: f64,
    /// Same SHA-256, or the same slots with the same coefficients bit for bit.
    pub identical: bool,
    /// Its `LastModified`, ms.
    pub last_modified_ms: u64,
}

/// What the host measured about one peer (field meanings: the WIT's `peer-evidence`).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    /// The uid.
    pub uid: u16,
    /// The selection weight.
    pub selection_weight: f32,
    /// `LastModified`, ms.
    pub last_modified_ms: u64,
    /// Pre-normalisation L2 norm per parameter, f64 (0 for a parameter the peer did not send).
    pub param_norms: Vec<f64>,
    /// sqrt of the sum of squared `param_norms`.
    pub total_norm: f64,
    /// Distinct slots it sent.
    pub slots: u64,
    /// Its copy group's size (1: no copies).
    pub copies: u32,
    /// Fraction of its slots some other (outside its group, weighted) also sent.
    pub index_overlap: f64,
    /// Cosine with the leave-one-out mean.
    pub cosine: Option<f64>,
    /// Sign agreement with the leave-one-out mean.
    pub sign_agreement: Option<f64>,
    /// Slots compared for `sign_agreement`.
    pub compared: u64,
    /// Agreement with the others' majority sign.
    pub majority_agreement: Option<f64>,
    /// Slots compared for `majority_agreement`.
    pub voted: u64,
    /// Near-copies, identical ones first, then by overlap, then by uid.
    pub similar: Vec<Similar>,
}

/// Per-peer sums of one chunk (or of everything, once merged).
#[derive(Debug, Clone, Default)]
struct PeerSums {
    /// sum c_p * m_p.
    dot: f64,
    /// sum c_p^2.
    cc: f64,
    slots: u64,
    overlapped: u64,
    agree: u64,
    compared: u64,
    majority_agree: u64,
    voted: u64,
}

/// Per copy-group sums: over the slots some member sent, the full mean's square and the group-out mean's square.
#[derive(Debug, Clone, Default)]
struct GroupSums {
    full_sq_at: f64,
    out_sq: f64,
}

/// Counts per pair of peers `(p < q)`: slots where the coefficients match, and where they are bit-for-bit equal.
type Pairs = BTreeMap<(u32, u32), (u64, u64)>;

/// The first pass's result for one chunk: slots per peer and the pairs.
#[derive(Debug, Default)]
struct PairPartial {
    slots: Vec<u64>,
    pairs: Pairs,
}

/// The second pass's result for one chunk.
#[derive(Debug, Default, Clone)]
struct StatPartial {
    peers: Vec<PeerSums>,
    groups: Vec<GroupSums>,
    /// sum over slots of m^2 (the full mean, where some weighted peer sent the slot).
    full_sq: f64,
}

/// A peer's cell at one slot: the sum and count of its entries there.
#[derive(Clone, Copy)]
struct Cell {
    peer: u32,
    sum: f64,
    count: u32,
    next: u32,
}

const NONE: u32 = u32::MAX;

/// One slot's cells as the passes see them: peer, coefficient (mean of its entries), sum of its entries, count.
#[derive(Clone, Copy)]
struct Here {
    peer: usize,
    c: f64,
    sum: f64,
    count: u32,
}

/// Computes every peer's evidence for `model`. Peers are in selection order; each gradient must have been validated
/// against `model` (indices in range, values finite), as `Gradient::read` does.
pub fn compute(model: &ModelSpec, peers: &[EvidencePeer<'_>]) -> Vec<PeerStats> {
    let mut e = Evidence::new(model, peers.iter().map(PeerInfo::of).collect());
    let all = 0..model.params.len();
    let data: Vec<&[Option<SparseParam>]> = peers.iter().map(|p| &p.gradient.params[..]).collect();
    e.first_pass(all.clone(), &data);
    if e.copies() {
        e.second_pass(all, &data);
    }
    e.finish()
}

/// A valid peer as the evidence describes it (everything of [`EvidencePeer`] but the gradient).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Its uid.
    pub uid: u16,
    /// Its selection weight (0, or in `[MIN_WEIGHT, MAX_WEIGHT]`).
    pub weight: f32,
    /// Its upload's `LastModified`, ms.
    pub last_modified_ms: u64,
    /// SHA-256 of its file's bytes (hex), when known.
    pub sha256: Option<String>,
}

impl PeerInfo {
    /// The description of `p`.
    pub fn of(p: &EvidencePeer<'_>) -> Self {
        Self {
            uid: p.uid,
            weight: p.weight,
            last_modified_ms: p.last_modified_ms,
            sha256: p.sha256.map(str::to_string),
        }
    }
}

/// The evidence of a window made a group of parameters at a time, for a reader that holds one group of every peer's
/// file at a time: [`Evidence::first_pass`] over every group in model order, then, only when [`Evidence::copies`]
/// finds copies, [`Evidence::second_pass`] over every group again, then [`Evidence::finish`]. [`compute`] is this
/// with one group holding everything. The chunks of work and the order their sums are added in depend only on the
/// model and the number of peers, so any grouping gives the same bits.
pub struct Evidence<'m> {
    model: &'m ModelSpec,
    peers: Vec<PeerInfo>,
    /// Per peer and parameter: the aggregation's f32 norm and the f64 one (0 where not sent).
    norms: Vec<Vec<f32>>,
    norms64: Vec<Vec<f64>>,
    slots: Vec<u64>,
    pairs: Pairs,
    total: StatPartial,
    /// After [`Evidence::copies`]: each peer's copy group, the groups' sizes, the peers' shared weights, the links.
    group: Vec<usize>,
    size: Vec<u32>,
    vote: Vec<f64>,
    links: Vec<(usize, usize, f64, bool)>,
    /// The second pass's sums, when there is one.
    second: Option<StatPartial>,
}

impl<'m> Evidence<'m> {
    /// Evidence about `peers` (selection order) for `model`, before any parameter is seen.
    pub fn new(model: &'m ModelSpec, peers: Vec<PeerInfo>) -> Self {
        let n = peers.len();
        let params = model.params.len();
        Self {
            model,
            norms: vec![vec![0.0; params]; n],
            norms64: vec![vec![0.0; params]; n],
            slots: vec![0; n],
            pairs: Pairs::new(),
            total: StatPartial::new(n),
            group: (0..n).collect(),
            size: vec![1; n],
            vote: peers.iter().map(|p| p.weight as f64).collect(),
            links: Vec::new(),
            second: None,
            peers,
        }
    }

    /// The chunks of work of parameters `params`: whole blocks, bounds from the model and the peer count only.
    fn work(&self, params: Range<usize>) -> Vec<(usize, usize, usize)> {
        let n = self.peers.len();
        let mut work = Vec::new();
        for pi in params {
            let l = &self.model.params[pi].layout;
            let blocks = (CHUNK_ENTRIES / (l.k() * n).max(1)).max(1);
            let mut b = 0;
            while b < l.n_blocks() {
                let e = (b + blocks).min(l.n_blocks());
                work.push((pi, b, e));
                b = e;
            }
        }
        work
    }

    /// The first pass over parameters `params` (the next group in model order): `data[i]` is peer `i`'s parameters
    /// of the range (`None` where it sent nothing). Norms, slot counts, pairs, and the statistics as if no peer had
    /// a copy (final in the usual window).
    pub fn first_pass(&mut self, params: Range<usize>, data: &[&[Option<SparseParam>]]) {
        let n = self.peers.len();
        for (i, d) in data.iter().enumerate() {
            for (j, sp) in d.iter().enumerate() {
                if let Some(s) = sp {
                    self.norms[i][params.start + j] = l2_norm(&s.vals);
                    self.norms64[i][params.start + j] = norm_f64(&s.vals);
                }
            }
        }
        let alone: Vec<usize> = (0..n).collect();
        let weights: Vec<f64> = self.peers.iter().map(|p| p.weight as f64).collect();
        let work = self.work(params.clone());
        let (model, norms) = (self.model, &self.norms);
        for batch in work.chunks(BATCH_CHUNKS) {
            let parts: Vec<(PairPartial, StatPartial)> = batch
                .par_iter()
                .map(|&(pi, b0, b1)| {
                    let mut pp = PairPartial {
                        slots: vec![0; n],
                        ..PairPartial::default()
                    };
                    let mut sp = StatPartial::new(n);
                    let mut seen = Vec::new();
                    walk_slots(&model.params[pi].layout, pi, b0, b1, &params, data, norms, |here| {
                        pair_slot(here, &mut pp);
                        stat_slot(here, &alone, &weights, &mut seen, &mut sp);
                    });
                    (pp, sp)
                })
                .collect();
            for (pp, sp) in parts {
                for (t, x) in self.slots.iter_mut().zip(&pp.slots) {
                    *t += x;
                }
                for (k, (m, e)) in pp.pairs {
                    let t = self.pairs.entry(k).or_default();
                    t.0 += m;
                    t.1 += e;
                }
                self.total.add(&sp);
            }
        }
    }

    /// After the first pass over every parameter: finds the near-copies and the copy groups; whether some peers are
    /// copies (then [`Evidence::second_pass`] must run over every parameter before [`Evidence::finish`]).
    pub fn copies(&mut self) -> bool {
        let n = self.peers.len();
        let peers = &self.peers;
        let same_sha =
            |p: usize, q: usize| matches!((&peers[p].sha256, &peers[q].sha256), (Some(a), Some(b)) if a == b);
        // Every pair that is similar or identical: (p, q, overlap, identical).
        let mut links: Vec<(usize, usize, f64, bool)> = Vec::new();
        for p in 0..n {
            for q in p + 1..n {
                let (matched, equal) = self.pairs.get(&(p as u32, q as u32)).copied().unwrap_or_default();
                let (sp, sq) = (self.slots[p], self.slots[q]);
                let overlap = matched as f64 / sp.max(sq).max(1) as f64;
                let identical = same_sha(p, q) || (sp == sq && equal == sp && sp > 0);
                if overlap >= SIMILAR_OVERLAP || identical {
                    links.push((p, q, overlap, identical));
                }
            }
        }
        // Copy groups (union-find; the smallest index is each group's id).
        let mut group: Vec<usize> = (0..n).collect();
        fn find(g: &mut [usize], x: usize) -> usize {
            let mut r = x;
            while g[r] != r {
                r = g[r];
            }
            g[x] = r;
            r
        }
        for &(p, q, overlap, identical) in &links {
            if identical || overlap >= DUPLICATE_OVERLAP {
                let (a, b) = (find(&mut group, p), find(&mut group, q));
                group[a.max(b)] = a.min(b);
            }
        }
        let group: Vec<usize> = (0..n).map(|i| find(&mut group, i)).collect();
        let mut size = vec![0u32; n];
        for &g in &group {
            size[g] += 1;
        }
        // Each peer's weight among the others: its selection weight shared with its copies.
        self.vote = (0..n).map(|i| peers[i].weight as f64 / size[group[i]] as f64).collect();
        self.group = group;
        self.links = links;
        let copies = size.iter().any(|s| *s > 1);
        self.size = size;
        if copies {
            self.second = Some(StatPartial::new(n));
        }
        copies
    }

    /// The second pass over parameters `params` (the next group in model order; same `data` as the first): the
    /// statistics again, each copy group one voice.
    pub fn second_pass(&mut self, params: Range<usize>, data: &[&[Option<SparseParam>]]) {
        let n = self.peers.len();
        let work = self.work(params.clone());
        let (model, norms, group, vote) = (self.model, &self.norms, &self.group, &self.vote);
        let Some(total) = self.second.as_mut() else {
            return;
        };
        for batch in work.chunks(BATCH_CHUNKS) {
            let parts: Vec<StatPartial> = batch
                .par_iter()
                .map(|&(pi, b0, b1)| {
                    let mut part = StatPartial::new(n);
                    let mut seen = Vec::new();
                    walk_slots(&model.params[pi].layout, pi, b0, b1, &params, data, norms, |here| {
                        stat_slot(here, group, vote, &mut seen, &mut part)
                    });
                    part
                })
                .collect();
            for part in &parts {
                total.add(part);
            }
        }
    }

    /// Every peer's evidence.
    pub fn finish(mut self) -> Vec<PeerStats> {
        let n = self.peers.len();
        let total = self.second.take().unwrap_or(std::mem::take(&mut self.total));
        let mut similar: Vec<Vec<Similar>> = vec![Vec::new(); n];
        for &(p, q, overlap, identical) in &self.links {
            for (a, b) in [(p, q), (q, p)] {
                similar[a].push(Similar {
                    uid: self.peers[b].uid,
                    overlap,
                    identical,
                    last_modified_ms: self.peers[b].last_modified_ms,
                });
            }
        }
        let (group, size) = (&self.group, &self.size);
        self.peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let s = &total.peers[i];
                let g = &total.groups[group[i]];
                let param_norms = std::mem::take(&mut self.norms64[i]);
                let total_norm = param_norms.iter().map(|x| x * x).sum::<f64>().sqrt();
                // |m_p|^2: the full mean's, except over the group's slots, where the group-out mean's.
                let out_norm_sq = (total.full_sq - g.full_sq_at).max(0.0) + g.out_sq;
                let cosine = (s.cc > 0.0 && out_norm_sq > 0.0).then(|| s.dot / (s.cc.sqrt() * out_norm_sq.sqrt()));
                let mut sim = std::mem::take(&mut similar[i]);
                sim.sort_by(|a, b| {
                    b.identical
                        .cmp(&a.identical)
                        .then(b.overlap.total_cmp(&a.overlap))
                        .then(a.uid.cmp(&b.uid))
                });
                sim.truncate(MAX_SIMILAR);
                PeerStats {
                    uid: p.uid,
                    selection_weight: p.weight,
                    last_modified_ms: p.last_modified_ms,
                    param_norms,
                    total_norm,
                    slots: s.slots,
                    copies: size[group[i]],
                    index_overlap: if s.slots == 0 {
                        0.0
                    } else {
                        s.overlapped as f64 / s.slots as f64
                    },
                    cosine,
                    sign_agreement: (s.compared > 0).then(|| s.agree as f64 / s.compared as f64),
                    compared: s.compared,
                    majority_agreement: (s.voted > 0).then(|| s.majority_agree as f64 / s.voted as f64),
                    voted: s.voted,
                    similar: sim,
                }
            })
            .collect()
    }
}

impl StatPartial {
    fn new(n: usize) -> Self {
        Self {
            peers: vec![PeerSums::default(); n],
            groups: vec![GroupSums::default(); n],
            full_sq: 0.0,
        }
    }

    /// Adds `part`'s sums (in the caller's fixed order: floats).
    fn add(&mut self, part: &StatPartial) {
        self.full_sq += part.full_sq;
        for (t, s) in self.peers.iter_mut().zip(&part.peers) {
            t.dot += s.dot;
            t.cc += s.cc;
            t.slots += s.slots;
            t.overlapped += s.overlapped;
            t.agree += s.agree;
            t.compared += s.compared;
            t.majority_agree += s.majority_agree;
            t.voted += s.voted;
        }
        for (t, s) in self.groups.iter_mut().zip(&part.groups) {
            t.full_sq_at += s.full_sq_at;
            t.out_sq += s.out_sq;
        }
    }
}

/// The L2 norm in f64: squares summed over 8 lanes in a fixed order, as `l2_norm` does, without its rounding to
/// f32 (a finite value for any finite input).
fn norm_f64(vals: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    for (i, &v) in vals.iter().enumerate() {
        lanes[i % 8] += v as f64 * v as f64;
    }
    (((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))).sqrt()
}

/// Calls `visit` for every slot of blocks `b0..b1` of parameter `pi` that some peer sent, with the peers' cells
/// there in peer order (slots in the order the blocks first touch them).
#[allow(clippy::too_many_arguments)]
fn walk_slots(
    layout: &ParamLayout,
    pi: usize,
    b0: usize,
    b1: usize,
    params: &Range<usize>,
    data: &[&[Option<SparseParam>]],
    norms: &[Vec<f32>],
    mut visit: impl FnMut(&[Here]),
) {
    let n = data.len();
    let local = pi - params.start;
    let k = layout.k();
    // Per-slot list heads (reset as each slot is visited) and the cells.
    let mut head = vec![NONE; layout.totalk()];
    let mut touched: Vec<u32> = Vec::new();
    let mut cells: Vec<Cell> = Vec::with_capacity(n * k);
    let mut here: Vec<Here> = Vec::with_capacity(n);
    // The aggregation's normaliser: the f32 norm + 1e-8, so that the values are the ones it scatters.
    let denoms: Vec<Option<f32>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| d[local].as_ref().map(|_| norms[i][pi] + 1e-8f32))
        .collect();
    for b in b0..b1 {
        touched.clear();
        cells.clear();
        // Peers in reverse, each cell put at the front of its slot's list: lists end up in peer order. A peer's
        // repeated index lands on its own cell, at the front.
        for i in (0..n).rev() {
            let (Some(sp), Some(denom)) = (data[i][local].as_ref(), denoms[i]) else {
                continue;
            };
            let range = b * k..(b + 1) * k;
            for (&ix, &v) in sp.idxs[range.clone()].iter().zip(&sp.vals[range]) {
                let slot = ix as usize;
                let v = (v / denom) as f64;
                let h = head[slot];
                if h != NONE && cells[h as usize].peer == i as u32 {
                    let c = &mut cells[h as usize];
                    c.sum += v;
                    c.count += 1;
                    continue;
                }
                if h == NONE {
                    touched.push(slot as u32);
                }
                cells.push(Cell {
                    peer: i as u32,
                    sum: v,
                    count: 1,
                    next: h,
                });
                head[slot] = (cells.len() - 1) as u32;
            }
        }
        for &slot in &touched {
            here.clear();
            let mut c = head[slot as usize];
            head[slot as usize] = NONE;
            while c != NONE {
                let cell = cells[c as usize];
                here.push(Here {
                    peer: cell.peer as usize,
                    c: cell.sum / cell.count as f64,
                    sum: cell.sum,
                    count: cell.count,
                });
                c = cell.next;
            }
            visit(&here);
        }
    }
}

/// Pass 1 at one slot: slot counts and every pair's match.
fn pair_slot(here: &[Here], out: &mut PairPartial) {
    for (a, x) in here.iter().enumerate() {
        out.slots[x.peer] += 1;
        for y in &here[a + 1..] {
            let matched = (x.c - y.c).abs() <= MATCH_TOLERANCE * x.c.abs().max(y.c.abs());
            let equal = x.c.to_bits() == y.c.to_bits();
            if matched || equal {
                let e = out.pairs.entry((x.peer as u32, y.peer as u32)).or_default();
                e.0 += matched as u64;
                e.1 += equal as u64;
            }
        }
    }
}

/// Pass 2 at one slot: each peer against the others outside its copy group.
fn stat_slot(here: &[Here], group: &[usize], vote: &[f64], seen: &mut Vec<usize>, out: &mut StatPartial) {
    // Most slots have one peer: no others, so only its own sums and the full mean (the same operations as below).
    if let [x] = here {
        let v = vote[x.peer];
        if v > 0.0 {
            let m = (v * x.sum) / (v * x.count as f64);
            out.full_sq += m * m;
            out.groups[group[x.peer]].full_sq_at += m * m;
        }
        let st = &mut out.peers[x.peer];
        st.slots += 1;
        st.cc += x.c * x.c;
        return;
    }
    // The full mean, each peer at its shared weight.
    let (mut s_all, mut w_all) = (0f64, 0f64);
    for h in here {
        if vote[h.peer] > 0.0 {
            s_all += vote[h.peer] * h.sum;
            w_all += vote[h.peer] * h.count as f64;
        }
    }
    let full = (w_all > 0.0).then(|| s_all / w_all);
    if let Some(m) = full {
        out.full_sq += m * m;
    }
    seen.clear();
    for x in here {
        let g = group[x.peer];
        // The others' mean and votes, summed directly (so that a mean of exactly 0 is exactly 0).
        let (mut s, mut ws, mut pos, mut neg) = (0f64, 0f64, 0f64, 0f64);
        for y in here {
            let v = vote[y.peer];
            if group[y.peer] != g && v > 0.0 {
                s += v * y.sum;
                ws += v * y.count as f64;
                pos += if y.c > 0.0 { v } else { 0.0 };
                neg += if y.c < 0.0 { v } else { 0.0 };
            }
        }
        let others = (ws > 0.0).then(|| s / ws);
        if !seen.contains(&g) {
            seen.push(g);
            let gs = &mut out.groups[g];
            gs.full_sq_at += full.map_or(0.0, |m| m * m);
            gs.out_sq += others.map_or(0.0, |m| m * m);
        }
        let st = &mut out.peers[x.peer];
        st.slots += 1;
        st.cc += x.c * x.c;
        if let Some(m) = others {
            st.overlapped += 1;
            st.dot += x.c * m;
            if x.c != 0.0 && m != 0.0 {
                st.compared += 1;
                st.agree += ((x.c > 0.0) == (m > 0.0)) as u64;
            }
        }
        if x.c != 0.0 && pos != neg {
            st.voted += 1;
            st.majority_agree += ((x.c > 0.0) == (pos > neg)) as u64;
        }
    }
}
