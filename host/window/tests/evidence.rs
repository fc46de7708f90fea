//! The contribution-weighting evidence against an independent, naive computation of the WIT's definitions (a map
//! from slot to entries, every statistic summed directly), on small cases built to hit the edges: exact ties (a
//! leave-one-out mean of exactly 0, a tied vote), repeated indices within a peer, one peer alone, copies (by content
//! and by SHA-256) forming a group, a peer of weight 0, omitted parameters. And the same bits on 1, 2 and 3 threads.

use std::collections::BTreeMap;

use aggregator_codec::{Gradient, GradientMetadata, SparseParam};
use aggregator_kernels::l2_norm;
use aggregator_model::ModelSpec;
use aggregator_window::evidence::{self, DUPLICATE_OVERLAP, EvidencePeer, MATCH_TOLERANCE, PeerStats, SIMILAR_OVERLAP};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A gradient whose indices are in `0..span` of each block (so peers collide and repeat) and whose values are
/// small dyadic numbers (so sums are exact and ties happen); parameters in `omit` are left out.
fn gradient(model: &ModelSpec, seed: u64, span: i16, omit: &[usize]) -> Gradient {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let values = [-1.0f32, -0.5, 0.5, 1.0, 2.0];
    let params = model
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if omit.contains(&i) {
                return None;
            }
            let n = p.layout.sparse_len();
            let span = span.min(p.layout.totalk() as i16);
            Some(SparseParam {
                idxs: (0..n).map(|_| rng.random_range(0..span)).collect(),
                vals: (0..n).map(|_| values[rng.random_range(0..values.len())]).collect(),
            })
        })
        .collect();
    Gradient {
        params,
        metadata: GradientMetadata::default(),
        global_step: 0,
    }
}

struct Peer {
    uid: u16,
    g: Gradient,
    weight: f32,
    at: u64,
    sha: Option<String>,
}

fn evidence_peers(peers: &[Peer]) -> Vec<EvidencePeer<'_>> {
    peers
        .iter()
        .map(|p| EvidencePeer {
            uid: p.uid,
            gradient: &p.g,
            weight: p.weight,
            last_modified_ms: p.at,
            sha256: p.sha.as_deref(),
        })
        .collect()
}

fn infos(peers: &[Peer]) -> Vec<evidence::PeerInfo> {
    evidence_peers(peers).iter().map(evidence::PeerInfo::of).collect()
}

fn run(model: &ModelSpec, peers: &[Peer]) -> Vec<PeerStats> {
    evidence::compute(model, &evidence_peers(peers))
}

/// [`evidence::Evidence`] fed `group` parameters at a time, both passes.
fn by_groups(model: &ModelSpec, peers: &[Peer], group: usize) -> Vec<PeerStats> {
    let mut e = evidence::Evidence::new(model, infos(peers));
    let n = model.params.len();
    let groups: Vec<std::ops::Range<usize>> = (0..n).step_by(group).map(|s| s..(s + group).min(n)).collect();
    let data = |r: &std::ops::Range<usize>| -> Vec<&[Option<SparseParam>]> {
        peers.iter().map(|p| &p.g.params[r.clone()]).collect()
    };
    for r in &groups {
        e.first_pass(r.clone(), &data(r));
    }
    if e.copies() {
        for r in &groups {
            e.second_pass(r.clone(), &data(r));
        }
    }
    e.finish().expect("every parameter passed")
}

/// The definitions, computed the slow and obvious way.
fn naive(model: &ModelSpec, peers: &[Peer]) -> Vec<PeerStats> {
    let n = peers.len();
    // slot (param, block, index) -> per peer: its normalised entries there.
    let mut slots: BTreeMap<(usize, usize, i16), BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    for (p, peer) in peers.iter().enumerate() {
        for (pi, sp) in peer.g.params.iter().enumerate() {
            let Some(sp) = sp else { continue };
            let k = model.params[pi].layout.k();
            let denom = l2_norm(&sp.vals) + 1e-8f32;
            for (e, (&ix, &v)) in sp.idxs.iter().zip(&sp.vals).enumerate() {
                slots
                    .entry((pi, e / k, ix))
                    .or_default()
                    .entry(p)
                    .or_default()
                    .push((v / denom) as f64);
            }
        }
    }
    let coef = |entries: &Vec<f64>| entries.iter().sum::<f64>() / entries.len() as f64;
    // Pairs: matches and bit-equal coefficients.
    let count = |p: usize| slots.values().filter(|m| m.contains_key(&p)).count() as u64;
    let mut pair = vec![vec![(0u64, 0u64); n]; n];
    for m in slots.values() {
        for (&p, ep) in m {
            for (&q, eq) in m {
                if p < q {
                    let (a, b) = (coef(ep), coef(eq));
                    pair[p][q].0 += ((a - b).abs() <= MATCH_TOLERANCE * a.abs().max(b.abs())) as u64;
                    pair[p][q].1 += (a.to_bits() == b.to_bits()) as u64;
                }
            }
        }
    }
    let relation = |p: usize, q: usize| {
        let (p, q) = (p.min(q), p.max(q));
        let (sp, sq) = (count(p), count(q));
        let overlap = pair[p][q].0 as f64 / sp.max(sq).max(1) as f64;
        let same_sha = peers[p].sha.is_some() && peers[p].sha == peers[q].sha;
        let identical = same_sha || (sp == sq && pair[p][q].1 == sp && sp > 0);
        (overlap, identical)
    };
    // Groups by transitive closure.
    let mut group: Vec<usize> = (0..n).collect();
    loop {
        let mut changed = false;
        for p in 0..n {
            for q in 0..n {
                let (o, i) = relation(p, q);
                if p != q && (i || o >= DUPLICATE_OVERLAP) && group[p] != group[q] {
                    let g = group[p].min(group[q]);
                    let (gp, gq) = (group[p], group[q]);
                    for x in group.iter_mut() {
                        if *x == gp || *x == gq {
                            *x = g;
                        }
                    }
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let size = |g: usize| group.iter().filter(|x| **x == g).count();
    let shared = |q: usize| peers[q].weight as f64 / size(group[q]) as f64;
    (0..n)
        .map(|p| {
            let others = |q: usize| group[q] != group[p] && shared(q) > 0.0;
            let (mut dot, mut cc, mut mm) = (0f64, 0f64, 0f64);
            let (mut slots_p, mut overlapped, mut agree, mut compared, mut mag, mut voted) = (0, 0, 0, 0, 0, 0);
            for m in slots.values() {
                let (mut s, mut w, mut pos, mut neg) = (0f64, 0f64, 0f64, 0f64);
                for (&q, e) in m {
                    if others(q) {
                        s += shared(q) * e.iter().sum::<f64>();
                        w += shared(q) * e.len() as f64;
                        let c = coef(e);
                        pos += if c > 0.0 { shared(q) } else { 0.0 };
                        neg += if c < 0.0 { shared(q) } else { 0.0 };
                    }
                }
                let loo = (w > 0.0).then(|| s / w);
                mm += loo.map_or(0.0, |x| x * x);
                let Some(e) = m.get(&p) else { continue };
                let c = coef(e);
                slots_p += 1;
                cc += c * c;
                if let Some(x) = loo {
                    overlapped += 1;
                    dot += c * x;
                    if c != 0.0 && x != 0.0 {
                        compared += 1;
                        agree += ((c > 0.0) == (x > 0.0)) as u64;
                    }
                }
                if c != 0.0 && pos != neg {
                    voted += 1;
                    mag += ((c > 0.0) == (pos > neg)) as u64;
                }
            }
            let norms: Vec<f64> = peers[p]
                .g
                .params
                .iter()
                .map(|sp| {
                    sp.as_ref()
                        .map_or(0.0, |s| s.vals.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt())
                })
                .collect();
            let mut similar: Vec<evidence::Similar> = (0..n)
                .filter(|&q| q != p)
                .filter_map(|q| {
                    let (overlap, identical) = relation(p, q);
                    (overlap >= SIMILAR_OVERLAP || identical).then(|| evidence::Similar {
                        uid: peers[q].uid,
                        overlap,
                        identical,
                        last_modified_ms: peers[q].at,
                    })
                })
                .collect();
            similar.sort_by(|a, b| {
                b.identical
                    .cmp(&a.identical)
                    .then(b.overlap.total_cmp(&a.overlap))
                    .then(a.uid.cmp(&b.uid))
            });
            PeerStats {
                uid: peers[p].uid,
                selection_weight: peers[p].weight,
                last_modified_ms: peers[p].at,
                total_norm: norms.iter().map(|x| x * x).sum::<f64>().sqrt(),
                param_norms: norms,
                slots: slots_p,
                copies: size(group[p]) as u32,
                index_overlap: if slots_p == 0 {
                    0.0
                } else {
                    overlapped as f64 / slots_p as f64
                },
                cosine: (cc > 0.0 && mm > 0.0).then(|| dot / (cc.sqrt() * mm.sqrt())),
                sign_agreement: (compared > 0).then(|| agree as f64 / compared as f64),
                compared,
                majority_agreement: (voted > 0).then(|| mag as f64 / voted as f64),
                voted,
                similar,
            }
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

fn assert_matches(fast: &[PeerStats], slow: &[PeerStats]) {
    assert_eq!(fast.len(), slow.len());
    for (f, s) in fast.iter().zip(slow) {
        let ctx = format!("uid {}:\n fast {f:?}\n slow {s:?}", f.uid);
        assert_eq!(
            (f.uid, f.slots, f.compared, f.voted, f.copies, f.last_modified_ms),
            (s.uid, s.slots, s.compared, s.voted, s.copies, s.last_modified_ms),
            "{ctx}"
        );
        assert_eq!(f.sign_agreement, s.sign_agreement, "{ctx}");
        assert_eq!(f.majority_agreement, s.majority_agreement, "{ctx}");
        assert_eq!(f.index_overlap, s.index_overlap, "{ctx}");
        assert!(
            f.param_norms.iter().zip(&s.param_norms).all(|(a, b)| close(*a, *b)),
            "{ctx}"
        );
        assert!(close(f.total_norm, s.total_norm), "{ctx}");
        match (f.cosine, s.cosine) {
            (Some(a), Some(b)) => assert!(close(a, b), "{ctx}"),
            (a, b) => assert_eq!(a, b, "{ctx}"),
        }
        assert_eq!(f.similar, s.similar, "{ctx}");
    }
}

fn model() -> ModelSpec {
    ModelSpec::preset("tiny").unwrap()
}

/// Peers that hit the edges: repeated indices, ties, copies by content and by digest, a weight of 0, omissions.
fn edge_peers(m: &ModelSpec) -> Vec<Peer> {
    let mk = |uid: u16, seed: u64, span: i16, weight: f32, at: u64| Peer {
        uid,
        g: gradient(m, seed, span, &[]),
        weight,
        at,
        sha: Some(format!("{seed:064x}")),
    };
    let mut peers = vec![
        mk(1, 1, 3, 1.0, 1000),
        mk(2, 2, 3, 1.0, 1000),
        mk(3, 3, 4, 0.5, 2000),
        mk(4, 4, 2, 0.0, 3000),
        mk(5, 5, 3, 2.0, 1000),
    ];
    // uid 6 copies uid 2's content (another file: a different digest), uid 7 re-uploads uid 3's file (same digest).
    peers.push(Peer {
        uid: 6,
        g: peers[1].g.clone(),
        weight: 1.0,
        at: 5000,
        sha: Some("f".repeat(64)),
    });
    peers.push(Peer {
        uid: 7,
        g: gradient(m, 99, 4, &[0, 2]),
        weight: 1.0,
        at: 6000,
        sha: peers[2].sha.clone(),
    });
    peers
}

#[test]
fn matches_the_definitions_with_ties_repeats_copies_and_weight_zero() {
    let m = model();
    let peers = edge_peers(&m);
    let fast = run(&m, &peers);
    assert_matches(&fast, &naive(&m, &peers));
    // Group by group (a reader that holds one group of parameters at a time): the same bits, with the second pass.
    for group in [1, 2, 5] {
        assert_eq!(by_groups(&m, &peers, group), fast, "groups of {group}");
    }
    // The cases were hit: repeated indices (3 slots, k entries per block), ties, copies.
    assert!(
        fast.iter().any(|p| p.compared < p.slots),
        "some LOO means are 0 or absent: {fast:?}"
    );
    assert_eq!(fast[1].copies, 2, "uid 2 and its copy uid 6");
    assert!(
        fast[1]
            .similar
            .iter()
            .any(|s| s.uid == 6 && s.identical && s.overlap == 1.0)
    );
    assert!(
        fast[2].similar.iter().any(|s| s.uid == 7 && s.identical),
        "same SHA-256"
    );
    assert_eq!(fast[3].selection_weight, 0.0);
}

#[test]
fn one_peer_alone_has_no_others() {
    let m = model();
    let peers = [Peer {
        uid: 9,
        g: gradient(&m, 5, 8, &[1]),
        weight: 1.0,
        at: 1,
        sha: None,
    }];
    let fast = run(&m, &peers);
    assert_matches(&fast, &naive(&m, &peers));
    // Group by group (a reader that holds one group of parameters at a time): the same bits, with the second pass.
    for group in [1, 2, 5] {
        assert_eq!(by_groups(&m, &peers, group), fast, "groups of {group}");
    }
    let p = &fast[0];
    assert_eq!((p.cosine, p.sign_agreement, p.majority_agreement), (None, None, None));
    assert_eq!((p.compared, p.voted, p.index_overlap, p.copies), (0, 0, 0.0, 1));
    assert_eq!(p.param_norms[1], 0.0, "an omitted parameter has norm 0");
    assert!(p.similar.is_empty());
}

#[test]
fn realistic_spans_match_too() {
    let m = model();
    let peers: Vec<Peer> = (0..6)
        .map(|i| Peer {
            uid: i + 1,
            g: gradient(&m, 40 + i as u64, 64, &[]),
            weight: 1.0,
            at: 1000 * i as u64,
            sha: None,
        })
        .collect();
    assert_matches(&run(&m, &peers), &naive(&m, &peers));
}

#[test]
fn the_same_bits_on_any_number_of_threads() {
    let m = model();
    let peers: Vec<Peer> = (0..8)
        .map(|i| Peer {
            uid: i + 1,
            g: gradient(&m, 70 + i as u64, if i % 2 == 0 { 3 } else { 200 }, &[]),
            weight: if i == 3 { 0.25 } else { 1.0 },
            at: 1000,
            sha: None,
        })
        .collect();
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| run(&m, &peers))
    };
    let one = on(1);
    for threads in [2, 3] {
        // PartialEq on f64 fields: bit-for-bit (no NaN can occur).
        assert_eq!(on(threads), one, "{threads} threads");
    }
}

/// The window's evidence as shards make it: each shard runs the passes over its own range of parameters only and
/// exports them through JSON (as their reports carry them); a coordinator adds the first passes in order, finds the
/// copies, hands the groups back for the second passes, adds those, and finishes.
fn by_shards(model: &ModelSpec, peers: &[Peer], bounds: &[usize]) -> Result<Vec<PeerStats>, evidence::PartialError> {
    let info = infos(peers);
    let ranges: Vec<std::ops::Range<usize>> = bounds.windows(2).map(|w| w[0]..w[1]).collect();
    let data = |r: &std::ops::Range<usize>| -> Vec<&[Option<SparseParam>]> {
        peers.iter().map(|p| &p.g.params[r.clone()]).collect()
    };
    let mut shards: Vec<evidence::Evidence> = ranges
        .iter()
        .map(|r| {
            let mut e = evidence::Evidence::new(model, info.clone());
            e.first_pass(r.clone(), &data(r));
            e
        })
        .collect();
    let mut coordinator = evidence::Evidence::new(model, info.clone());
    for (e, r) in shards.iter().zip(&ranges) {
        let sent = serde_json::to_string(&e.first_part(r.clone())?).unwrap();
        coordinator.absorb_first(serde_json::from_str(&sent).unwrap())?;
    }
    if coordinator.copies() {
        let copies = coordinator.copy_groups().expect("copies found");
        let copies: evidence::Copies = serde_json::from_str(&serde_json::to_string(&copies).unwrap()).unwrap();
        for (e, r) in shards.iter_mut().zip(&ranges) {
            e.adopt(&copies)?;
            e.second_pass(r.clone(), &data(r));
            let sent = serde_json::to_string(&e.second_part(r.clone())?).unwrap();
            coordinator.absorb_second(serde_json::from_str(&sent).unwrap())?;
        }
    }
    coordinator.finish()
}

#[test]
fn shards_parts_absorbed_in_order_give_one_process_bits() {
    let m = model();
    let n = m.params.len();
    assert!(n >= 3, "the preset has {n} parameters");
    let plain: Vec<Peer> = (0..5)
        .map(|i| Peer {
            uid: i + 1,
            g: gradient(&m, 200 + i as u64, if i % 2 == 0 { 3 } else { 100 }, &[]),
            weight: 1.0,
            at: 1000,
            sha: None,
        })
        .collect();
    let edges = edge_peers(&m);
    for (name, peers) in [("no copies", &plain), ("copies", &edges)] {
        let one = run(&m, peers);
        let splits: Vec<Vec<usize>> = vec![vec![0, n], vec![0, 1, n], vec![0, 1, n - 1, n], (0..=n).collect()];
        for bounds in &splits {
            assert_eq!(by_shards(&m, peers, bounds).unwrap(), one, "{name}: shards {bounds:?}");
        }
    }
    // Copies were there, so the second pass ran across the shards.
    assert!(run(&m, &edges).iter().any(|p| p.copies > 1));
    // Both orders meet the definitions; chunk order is the one process's (the receipts of hosts before shards).
    assert_matches(
        &evidence::compute_in(&m, &evidence_peers(&edges), evidence::EvidenceOrder::ByChunk),
        &naive(&m, &edges),
    );
}

#[test]
fn parts_that_do_not_fit_are_refused() {
    use evidence::PartialError;
    let m = model();
    let n = m.params.len();
    let peers = edge_peers(&m);
    let info = infos;
    let data: Vec<&[Option<SparseParam>]> = peers.iter().map(|p| &p.g.params[0..1]).collect();
    let mut shard = evidence::Evidence::new(&m, info(&peers));
    shard.first_pass(0..1, &data);
    let part = shard.first_part(0..1).unwrap();
    // A parameter never passed has no sums to export.
    assert_eq!(
        shard.first_part(0..2).unwrap_err(),
        PartialError::Missing {
            pass: "first",
            param: 1
        }
    );
    assert!(matches!(shard.first_part(0..n + 1), Err(PartialError::Params { .. })));
    // Added twice; for another number of peers; with a list of the wrong length; a pair naming no peer.
    let mut c = evidence::Evidence::new(&m, info(&peers));
    c.absorb_first(part.clone()).unwrap();
    assert!(matches!(
        c.absorb_first(part.clone()),
        Err(PartialError::Params {
            why: "passed already",
            ..
        })
    ));
    let mut fewer = evidence::Evidence::new(&m, info(&peers[..3]));
    assert_eq!(
        fewer.absorb_first(part.clone()).unwrap_err(),
        PartialError::Peers {
            expected: 3,
            found: peers.len()
        }
    );
    let mut v: serde_json::Value = serde_json::to_value(&part).unwrap();
    v["norms"][0] = serde_json::json!([]);
    let short: evidence::FirstPass = serde_json::from_value(v).unwrap();
    let mut c2 = evidence::Evidence::new(&m, info(&peers));
    assert!(matches!(
        c2.absorb_first(short),
        Err(PartialError::Shape { field: "norms", .. })
    ));
    let mut v: serde_json::Value = serde_json::to_value(&part).unwrap();
    v["pairs"] = serde_json::json!([[0, 99, 1, 1]]);
    let bad_pair: evidence::FirstPass = serde_json::from_value(v).unwrap();
    assert!(matches!(
        c2.absorb_first(bad_pair),
        Err(PartialError::Shape { field: "pairs", .. })
    ));
    // Nothing was added by the refused parts; a coordinator missing a shard does not finish.
    assert_eq!(
        c2.finish().unwrap_err(),
        PartialError::Missing {
            pass: "first",
            param: 0
        }
    );
    assert!(matches!(
        c.finish_in(evidence::EvidenceOrder::ByChunk),
        Err(PartialError::Missing { .. })
    ));
    // Whole, but made of parts: by parameter only.
    let all: Vec<&[Option<SparseParam>]> = peers.iter().map(|p| &p.g.params[..]).collect();
    let mut whole = evidence::Evidence::new(&m, info(&peers));
    whole.first_pass(0..n, &all);
    let mut c3 = evidence::Evidence::new(&m, info(&peers));
    c3.absorb_first(whole.first_part(0..n).unwrap()).unwrap();
    assert_eq!(
        c3.finish_in(evidence::EvidenceOrder::ByChunk).unwrap_err(),
        PartialError::ChunkOrder
    );
    // Copy groups that are not groups.
    let mut s2 = evidence::Evidence::new(&m, info(&peers));
    let bad = evidence::Copies {
        group: vec![1; peers.len()],
    };
    assert!(matches!(
        s2.adopt(&bad),
        Err(PartialError::Shape { field: "group", .. })
    ));
    let none = evidence::Copies {
        group: (0..peers.len()).collect(),
    };
    assert_eq!(s2.adopt(&none).unwrap_err(), PartialError::NoCopies);
}
