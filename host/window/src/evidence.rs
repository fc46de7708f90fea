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
//! input order), then added in an [`EvidenceOrder`]: each parameter's chunks, then the parameters in model order
//! (what this host does), or every chunk into one total (hosts before shards; kept to replay their receipts). The
//! result has the same bits on any number of threads, for any grouping of the parameters.
//!
//! **Across processes** (shards of one window, each judging a range of parameters): each shard runs the first pass
//! over its range and exports it ([`Evidence::first_part`], a [`FirstPass`]); a coordinator [`Evidence::absorb_first`]s
//! every shard's part, finds the copies, and, when there are some, hands the groups ([`Copies`]) to the shards, which
//! [`Evidence::adopt`] them, run the second pass over their ranges and export it ([`Evidence::second_part`]); the
//! coordinator absorbs those too and finishes. The result is bit for bit the one process's (by parameter): integer
//! counts add in any order, and each parameter's float sums are made whole by the shard that owns it.

use std::collections::BTreeMap;
use std::ops::Range;

use aggregator_codec::{Gradient, SparseParam};
use aggregator_kernels::{ParamLayout, l2_norm};
use aggregator_model::ModelSpec;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// The statistics' sums of one chunk, one parameter, or everything.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// Computes every peer's evidence for `model`, by parameter (see [`EvidenceOrder`]). Peers are in selection order;
/// each gradient must have been validated against `model` (indices in range, values finite), as `Gradient::read`
/// does.
pub fn compute(model: &ModelSpec, peers: &[EvidencePeer<'_>]) -> Vec<PeerStats> {
    compute_in(model, peers, EvidenceOrder::ByParameter)
}

/// [`compute`] with the sums added in `order` (`ByChunk` to replay the receipts of hosts before shards).
pub fn compute_in(model: &ModelSpec, peers: &[EvidencePeer<'_>], order: EvidenceOrder) -> Vec<PeerStats> {
    let mut e = Evidence::new(model, peers.iter().map(PeerInfo::of).collect());
    let all = 0..model.params.len();
    let data: Vec<&[Option<SparseParam>]> = peers.iter().map(|p| &p.gradient.params[..]).collect();
    e.first_pass(all.clone(), &data);
    if e.copies() {
        e.second_pass(all, &data);
    }
    // Every parameter was seen by this one process: nothing is missing, and chunk order is available.
    e.finish_with(order)
}

/// The order in which the evidence's floating-point sums are added: their last bits depend on it. Recorded in the
/// receipt, so that a replay adds them as the host did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvidenceOrder {
    /// Every chunk's sums added to one total in model order: hosts before shards (receipts without the field). One
    /// process only: a total over chunks cannot be made from shards' parts.
    ByChunk,
    /// Each parameter's chunks summed, then the parameters in model order: what this host does, in one process or
    /// across shards.
    ByParameter,
}

impl EvidenceOrder {
    /// The order of receipts that do not name one.
    pub fn legacy() -> Self {
        Self::ByChunk
    }
}

/// A valid peer as the evidence describes it (everything of [`EvidencePeer`] but the gradient).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerInfo {
    /// Its uid.
    pub uid: u16,
    /// Its selection weight (0, or in `[MIN_WEIGHT, MAX_WEIGHT]`); exact through JSON (written as the f64 it is).
    #[serde(with = "f32_exact")]
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

/// An f32 through JSON as the f64 it converts to exactly: serde_json writes an f32 as its shortest decimal, which
/// read back as f64 and rounded to f32 is not guaranteed to be the same number.
pub mod f32_exact {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v` as an f64.
    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(*v as f64)
    }

    /// Reads an f64 that is exactly an f32 (refuses any other).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        let v = f64::deserialize(d)?;
        let f = v as f32;
        if f as f64 == v || v.is_nan() {
            Ok(f)
        } else {
            Err(serde::de::Error::custom(format!("{v} is not exactly an f32")))
        }
    }
}

/// [`f32_exact`] for a list.
pub mod f32s_exact {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    /// Writes each value as an f64.
    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            seq.serialize_element(&(*x as f64))?;
        }
        seq.end()
    }

    /// Reads f64s that are each exactly an f32 (refuses any other).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        Vec::<f64>::deserialize(d)?
            .into_iter()
            .map(|v| {
                let f = v as f32;
                if f as f64 == v || v.is_nan() {
                    Ok(f)
                } else {
                    Err(serde::de::Error::custom(format!("{v} is not exactly an f32")))
                }
            })
            .collect()
    }
}

/// Why a shard's part of the evidence does not fit the evidence it is added to, or the evidence is not whole.
#[derive(Debug, Error, PartialEq)]
pub enum PartialError {
    /// It counts another number of peers.
    #[error("a part for {found} peers, the evidence has {expected}")]
    Peers {
        /// The evidence's.
        expected: usize,
        /// The part's.
        found: usize,
    },
    /// Its parameters are not all new, or not all in the model.
    #[error("parameters {params:?}: {why}")]
    Params {
        /// The part's range.
        params: Range<usize>,
        /// What is wrong.
        why: &'static str,
    },
    /// One of its lists has the wrong length, or a pair names no peers of the evidence.
    #[error("field `{field}`: {why}")]
    Shape {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A pass has no sums for a parameter.
    #[error("the {pass} pass has no sums for parameter {param}")]
    Missing {
        /// `first` or `second`.
        pass: &'static str,
        /// The parameter.
        param: usize,
    },
    /// Chunk order was asked of evidence made of parts (it has only the sums by parameter).
    #[error("chunk order is not available from parts")]
    ChunkOrder,
    /// A second pass was asked for, or added, without copy groups.
    #[error("no copy groups: the second pass does not run")]
    NoCopies,
}

/// One shard's first pass over its parameters: what [`Evidence::absorb_first`] adds. Its floats are exact through
/// JSON (serde_json with `float_roundtrip`, as this workspace builds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstPass {
    /// Peers counted (the evidence's, in its order).
    pub peers: usize,
    /// The parameters it covers.
    pub params: Range<usize>,
    /// Per peer, per parameter of the range: the f64 norm.
    norms: Vec<Vec<f64>>,
    /// Per peer: slots sent in the range.
    slots: Vec<u64>,
    /// `(p, q, matched, equal)` for the pairs that matched at some slot of the range.
    pairs: Vec<(u32, u32, u64, u64)>,
    /// Per parameter of the range: the statistics' sums with no copies.
    sums: Vec<StatPartial>,
}

/// One shard's second pass over its parameters: what [`Evidence::absorb_second`] adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondPass {
    /// Peers counted.
    pub peers: usize,
    /// The parameters it covers.
    pub params: Range<usize>,
    /// Per parameter of the range: the statistics' sums, each copy group one voice.
    sums: Vec<StatPartial>,
}

/// The copy groups the coordinator found: each peer's group (the smallest index in it), for [`Evidence::adopt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Copies {
    /// Per peer: its group's id, the group's smallest peer index.
    pub group: Vec<usize>,
}

/// One pass's sums: in chunk order and by parameter, as they were made here; by parameter only once a part was added.
#[derive(Debug, Clone)]
struct Sums {
    chunked: StatPartial,
    by_param: Vec<Option<StatPartial>>,
    absorbed: bool,
}

impl Sums {
    fn new(peers: usize, params: usize) -> Self {
        Self {
            chunked: StatPartial::new(peers),
            by_param: vec![None; params],
            absorbed: false,
        }
    }

    /// Adds chunk `part` of parameter `pi` (chunks in model order).
    fn add_chunk(&mut self, pi: usize, part: &StatPartial) {
        self.chunked.add(part);
        let n = part.peers.len();
        self.by_param[pi].get_or_insert_with(|| StatPartial::new(n)).add(part);
    }

    /// The sums of every parameter, in `order`.
    fn total(&self, order: EvidenceOrder, pass: &'static str) -> Result<StatPartial, PartialError> {
        if let Some(param) = self.by_param.iter().position(Option::is_none) {
            return Err(PartialError::Missing { pass, param });
        }
        match order {
            EvidenceOrder::ByChunk if self.absorbed => Err(PartialError::ChunkOrder),
            EvidenceOrder::ByChunk => Ok(self.chunked.clone()),
            EvidenceOrder::ByParameter => {
                let mut total = StatPartial::new(self.chunked.peers.len());
                for p in self.by_param.iter().flatten() {
                    total.add(p);
                }
                Ok(total)
            }
        }
    }

    /// The sums of `params`, which must all be made (the caller checked).
    fn export(&self, params: &Range<usize>, pass: &'static str) -> Result<Vec<StatPartial>, PartialError> {
        self.by_param[params.clone()]
            .iter()
            .enumerate()
            .map(|(j, p)| {
                p.clone().ok_or(PartialError::Missing {
                    pass,
                    param: params.start + j,
                })
            })
            .collect()
    }

    /// Places `sums` (per parameter of `params`, each of `peers` peers), which must all be new.
    fn absorb(&mut self, params: &Range<usize>, sums: Vec<StatPartial>, peers: usize) -> Result<(), PartialError> {
        if sums.len() != params.len() {
            return Err(PartialError::Shape {
                field: "sums",
                why: format!("{} entries for {} parameters", sums.len(), params.len()),
            });
        }
        if let Some(bad) = sums.iter().find(|s| s.peers.len() != peers || s.groups.len() != peers) {
            return Err(PartialError::Shape {
                field: "sums",
                why: format!("{} peers and {} groups, not {peers}", bad.peers.len(), bad.groups.len()),
            });
        }
        for (pi, s) in params.clone().zip(sums) {
            self.by_param[pi] = Some(s);
        }
        self.absorbed = true;
        Ok(())
    }
}

/// The evidence of a window made a group of parameters at a time, for a reader that holds one group of every peer's
/// file at a time: [`Evidence::first_pass`] over every group in model order, then, only when [`Evidence::copies`]
/// finds copies, [`Evidence::second_pass`] over every group again, then [`Evidence::finish`]. [`compute`] is this
/// with one group holding everything. The chunks of work and the order their sums are added in depend only on the
/// model and the number of peers, so any grouping gives the same bits. Across processes: the module docs.
pub struct Evidence<'m> {
    model: &'m ModelSpec,
    peers: Vec<PeerInfo>,
    /// Per peer and parameter: the aggregation's f32 norm and the f64 one (0 where not sent).
    norms: Vec<Vec<f32>>,
    norms64: Vec<Vec<f64>>,
    slots: Vec<u64>,
    pairs: Pairs,
    first: Sums,
    /// After [`Evidence::copies`]: each peer's copy group, the groups' sizes, the peers' shared weights, the links.
    group: Vec<usize>,
    size: Vec<u32>,
    vote: Vec<f64>,
    links: Vec<(usize, usize, f64, bool)>,
    /// The second pass's sums, when there is one.
    second: Option<Sums>,
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
            first: Sums::new(n, params),
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
            for (&(pi, _, _), (pp, sp)) in batch.iter().zip(parts) {
                for (t, x) in self.slots.iter_mut().zip(&pp.slots) {
                    *t += x;
                }
                for (k, (m, e)) in pp.pairs {
                    let t = self.pairs.entry(k).or_default();
                    t.0 += m;
                    t.1 += e;
                }
                self.first.add_chunk(pi, &sp);
            }
        }
    }

    /// This process's first pass over `params` (every one of them passed here), for a coordinator's
    /// [`Evidence::absorb_first`]. The slot counts and pairs are this process's whole: pass only `params` here.
    pub fn first_part(&self, params: Range<usize>) -> Result<FirstPass, PartialError> {
        self.check_range(&params)?;
        Ok(FirstPass {
            peers: self.peers.len(),
            sums: self.first.export(&params, "first")?,
            norms: self.norms64.iter().map(|v| v[params.clone()].to_vec()).collect(),
            slots: self.slots.clone(),
            pairs: self.pairs.iter().map(|(&(p, q), &(m, e))| (p, q, m, e)).collect(),
            params,
        })
    }

    /// Adds a shard's first pass (its parameters must not have been passed or added here yet).
    pub fn absorb_first(&mut self, part: FirstPass) -> Result<(), PartialError> {
        let n = self.peers.len();
        self.check_part(part.peers, &part.params)?;
        if part.params.clone().any(|pi| self.first.by_param[pi].is_some()) {
            return Err(PartialError::Params {
                params: part.params,
                why: "passed already",
            });
        }
        let shape = |field: &'static str, why: String| Err(PartialError::Shape { field, why });
        if part.norms.len() != n || part.norms.iter().any(|v| v.len() != part.params.len()) {
            return shape("norms", format!("not {n} peers × {} parameters", part.params.len()));
        }
        if part.slots.len() != n {
            return shape("slots", format!("{} peers, not {n}", part.slots.len()));
        }
        if let Some((p, q, ..)) = part.pairs.iter().find(|(p, q, ..)| p >= q || *q as usize >= n) {
            return shape("pairs", format!("pair ({p}, {q}) of {n} peers"));
        }
        self.first.absorb(&part.params, part.sums, n)?;
        for (i, v) in part.norms.into_iter().enumerate() {
            self.norms64[i][part.params.clone()].copy_from_slice(&v);
        }
        for (t, x) in self.slots.iter_mut().zip(&part.slots) {
            *t += x;
        }
        for (p, q, m, e) in part.pairs {
            let t = self.pairs.entry((p, q)).or_default();
            t.0 += m;
            t.1 += e;
        }
        Ok(())
    }

    fn check_part(&self, peers: usize, params: &Range<usize>) -> Result<(), PartialError> {
        if peers != self.peers.len() {
            return Err(PartialError::Peers {
                expected: self.peers.len(),
                found: peers,
            });
        }
        self.check_range(params)
    }

    fn check_range(&self, params: &Range<usize>) -> Result<(), PartialError> {
        if params.start > params.end || params.end > self.model.params.len() {
            return Err(PartialError::Params {
                params: params.clone(),
                why: "not a range of the model's parameters",
            });
        }
        Ok(())
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
        self.links = links;
        self.set_groups(group)
    }

    /// Takes copy groups `group` (each peer's group id, the smallest index in it): shared weights, and a second
    /// pass to come when some group has more than one peer (whether it has).
    fn set_groups(&mut self, group: Vec<usize>) -> bool {
        let n = self.peers.len();
        let mut size = vec![0u32; n];
        for &g in &group {
            size[g] += 1;
        }
        // Each peer's weight among the others: its selection weight shared with its copies.
        self.vote = (0..n)
            .map(|i| self.peers[i].weight as f64 / size[group[i]] as f64)
            .collect();
        self.group = group;
        let copies = size.iter().any(|s| *s > 1);
        self.size = size;
        if copies {
            self.second = Some(Sums::new(n, self.model.params.len()));
        }
        copies
    }

    /// After [`Evidence::copies`] found some: the copy groups, for the shards' [`Evidence::adopt`].
    pub fn copy_groups(&self) -> Option<Copies> {
        self.second.as_ref().map(|_| Copies {
            group: self.group.clone(),
        })
    }

    /// Takes the coordinator's copy groups (a shard, after its first pass): its second pass can then run.
    pub fn adopt(&mut self, copies: &Copies) -> Result<(), PartialError> {
        let g = &copies.group;
        let n = self.peers.len();
        if g.len() != n {
            return Err(PartialError::Shape {
                field: "group",
                why: format!("{} peers, not {n}", g.len()),
            });
        }
        // Every id is its own group's smallest member.
        if let Some(i) = (0..n).find(|&i| g[i] > i || g[g[i]] != g[i]) {
            return Err(PartialError::Shape {
                field: "group",
                why: format!("peer {i} in group {}, not a group's smallest member", g[i]),
            });
        }
        if !self.set_groups(g.clone()) {
            return Err(PartialError::NoCopies);
        }
        Ok(())
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
            for (&(pi, _, _), part) in batch.iter().zip(&parts) {
                total.add_chunk(pi, part);
            }
        }
    }

    /// This process's second pass over `params` (every one of them passed here), for the coordinator's
    /// [`Evidence::absorb_second`].
    pub fn second_part(&self, params: Range<usize>) -> Result<SecondPass, PartialError> {
        self.check_range(&params)?;
        let second = self.second.as_ref().ok_or(PartialError::NoCopies)?;
        Ok(SecondPass {
            peers: self.peers.len(),
            sums: second.export(&params, "second")?,
            params,
        })
    }

    /// Adds a shard's second pass (after [`Evidence::copies`] found copies here).
    pub fn absorb_second(&mut self, part: SecondPass) -> Result<(), PartialError> {
        let n = self.peers.len();
        self.check_part(part.peers, &part.params)?;
        let second = self.second.as_mut().ok_or(PartialError::NoCopies)?;
        if part.params.clone().any(|pi| second.by_param[pi].is_some()) {
            return Err(PartialError::Params {
                params: part.params,
                why: "passed already",
            });
        }
        second.absorb(&part.params, part.sums, n)
    }

    /// Every peer's evidence, by parameter; refused when a pass lacks some parameter's sums.
    pub fn finish(self) -> Result<Vec<PeerStats>, PartialError> {
        self.finish_in(EvidenceOrder::ByParameter)
    }

    /// [`Evidence::finish`] in `order`.
    pub fn finish_in(self, order: EvidenceOrder) -> Result<Vec<PeerStats>, PartialError> {
        let first = self.first.total(order, "first")?;
        let total = match &self.second {
            Some(s) => s.total(order, "second")?,
            None => first,
        };
        Ok(self.stats(total))
    }

    /// [`Evidence::finish_in`] where every parameter passed here: no part is missing, and chunk order is there.
    fn finish_with(self, order: EvidenceOrder) -> Vec<PeerStats> {
        let pass = |s: &Sums| match s.total(order, "") {
            Ok(t) => t,
            // Unreachable from `compute_in`, which passes every parameter; zeros rather than a panic.
            Err(_) => StatPartial::new(self.peers.len()),
        };
        let total = match &self.second {
            Some(s) => pass(s),
            None => pass(&self.first),
        };
        self.stats(total)
    }

    /// The statistics from the window's sums `total`.
    fn stats(mut self, total: StatPartial) -> Vec<PeerStats> {
        let n = self.peers.len();
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
