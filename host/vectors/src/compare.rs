//! Tolerance rules of `templar-vectors/1` (see `shared/vectors/README.md`).

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

/// How one field is compared.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Rule {
    /// Absolute tolerance.
    #[serde(default)]
    pub abs: Option<f64>,
    /// Named comparison (`exact`, `per_row_set`, `paired_with_idxs`, `exact_except_near_zero`).
    #[serde(default)]
    pub compare: Option<String>,
}

impl Rule {
    /// `{"abs": x}`.
    pub fn abs(x: f64) -> Self {
        Self {
            abs: Some(x),
            compare: None,
        }
    }
    /// `{"compare": name}`.
    pub fn named(name: &str) -> Self {
        Self {
            abs: None,
            compare: Some(name.to_string()),
        }
    }
}

/// The rule for `field` from a case's tolerance map (a `*` in a key matches any run of characters), else `default`.
pub fn rule_for(map: &BTreeMap<String, Rule>, field: &str, default: Rule) -> Rule {
    if let Some(r) = map.get(field) {
        return r.clone();
    }
    map.iter()
        .find(|(k, _)| wildcard(k, field))
        .map(|(_, r)| r.clone())
        .unwrap_or(default)
}

fn wildcard(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((pre, post)) => s.len() >= pre.len() + post.len() && s.starts_with(pre) && s.ends_with(post),
    }
}

/// Element-wise `|actual - expected| <= tol` (NaN equals NaN). Describes the worst offender.
pub fn abs_close(actual: &[f32], expected: &[f32], tol: f64) -> Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!("{} elements, expected {}", actual.len(), expected.len()));
    }
    let (mut bad, mut worst, mut at) = (0usize, 0f64, 0usize);
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if a.is_nan() && e.is_nan() {
            continue;
        }
        let d = (a as f64 - e as f64).abs();
        if d > tol || d.is_nan() {
            bad += 1;
            if d > worst || d.is_nan() {
                (worst, at) = (d, i);
            }
        }
    }
    if bad == 0 {
        Ok(())
    } else {
        Err(format!(
            "{bad} of {} elements differ by more than {tol:e}; worst at [{at}]: got {} expected {} (diff {worst:e})",
            expected.len(),
            actual[at],
            expected[at]
        ))
    }
}

/// Bit-identical slices.
pub fn exact<T: PartialEq + Copy + std::fmt::Debug>(actual: &[T], expected: &[T]) -> Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!("{} elements, expected {}", actual.len(), expected.len()));
    }
    let diffs: Vec<usize> = (0..actual.len()).filter(|&i| actual[i] != expected[i]).collect();
    match diffs.first() {
        None => Ok(()),
        Some(&i) => Err(format!(
            "{} of {} elements differ; first at [{i}]: got {:?} expected {:?}",
            diffs.len(),
            actual.len(),
            actual[i],
            expected[i]
        )),
    }
}

/// Exact f32 bit patterns (so that -0 differs from +0 and NaNs compare by payload).
pub fn exact_bits(actual: &[f32], expected: &[f32]) -> Result<(), String> {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    exact(&bits(actual), &bits(expected)).map_err(|e| format!("{e} (as f32 bit patterns)"))
}

/// Per row (last dimension of length `k`), the index sets must be equal; rows in `skip` are not compared.
pub fn per_row_set(actual: &[i16], expected: &[i16], k: usize, skip: &HashSet<usize>) -> Result<(), String> {
    if actual.len() != expected.len() || k == 0 {
        return Err(format!("{} indices, expected {}", actual.len(), expected.len()));
    }
    let mut bad = Vec::new();
    for (r, (a, e)) in actual.chunks(k).zip(expected.chunks(k)).enumerate() {
        let (mut a, mut e) = (a.to_vec(), e.to_vec());
        a.sort_unstable();
        e.sort_unstable();
        if a != e && !skip.contains(&r) {
            bad.push(r);
        }
    }
    match bad.first() {
        None => Ok(()),
        Some(r) => Err(format!(
            "index sets differ in {} of {} rows; first row {r}",
            bad.len(),
            actual.len() / k
        )),
    }
}

/// Per row, each expected value compared with the actual value at the same index; rows in `skip` are not compared.
pub fn paired_with_idxs(
    actual: (&[i16], &[f32]),
    expected: (&[i16], &[f32]),
    k: usize,
    tol: f64,
    skip: &HashSet<usize>,
) -> Result<(), String> {
    let rows = expected.0.len() / k.max(1);
    let mut bad = Vec::new();
    for r in (0..rows).filter(|r| !skip.contains(r)) {
        let span = r * k..(r + 1) * k;
        let (ai, av) = (&actual.0[span.clone()], &actual.1[span.clone()]);
        for (&i, &ev) in expected.0[span.clone()].iter().zip(&expected.1[span.clone()]) {
            match ai.iter().position(|&x| x == i) {
                Some(p) if (av[p] as f64 - ev as f64).abs() <= tol => {}
                Some(p) => bad.push(format!("row {r} idx {i}: got {} expected {ev}", av[p])),
                None => bad.push(format!("row {r} idx {i}: missing")),
            }
        }
    }
    match bad.first() {
        None => Ok(()),
        Some(first) => Err(format!(
            "{} paired values differ by more than {tol:e}; first: {first}",
            bad.len()
        )),
    }
}

/// Packed bytes equal except for bits at the flat element positions in `near_zero`.
pub fn exact_except_near_zero(actual: &[u8], expected: &[u8], near_zero: &[i64]) -> Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!("{} bytes, expected {}", actual.len(), expected.len()));
    }
    let mut mask = vec![0u8; actual.len()];
    for &p in near_zero {
        if let Some(m) = usize::try_from(p)
            .ok()
            .and_then(|p| mask.get_mut(p / 8).map(|m| (m, p)))
        {
            *m.0 |= 1 << (m.1 % 8);
        }
    }
    let mut bits = Vec::new();
    for (i, ((&a, &e), &m)) in actual.iter().zip(expected).zip(&mask).enumerate() {
        let d = (a ^ e) & !m;
        for b in 0..8 {
            if d >> b & 1 == 1 {
                bits.push(i * 8 + b);
            }
        }
    }
    match bits.first() {
        None => Ok(()),
        Some(e) => Err(format!(
            "{} sign bits differ outside the near-zero positions; first at element {e}",
            bits.len()
        )),
    }
}
