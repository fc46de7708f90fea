//! Golden-vector runner for directories in the `templar-vectors/1` format (`shared/vectors/README.md`):
//! `manifest.json` lists the cases, `tensors.safetensors` holds every tensor as `<case>/<field>`.
//!
//! [`check_dir`] runs every case against a [`Backend`] (and the CPU miner-side code for `encode` cases) and returns
//! one [`CaseOutcome`] per case; the `aggregator vectors check` command and the test suite both use it.

pub mod compare;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use aggregator_kernels::{
    Backend, Contribution, Cpu, DctBasis, ParamLayout, PeerSparse, pack_signs, split, unpack_signs,
};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use compare::{Rule, rule_for};

/// The format this runner understands.
pub const FORMAT: &str = "templar-vectors/1";
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Largest tensor file accepted.
pub const MAX_TENSOR_BYTES: u64 = 4 << 30;

/// Why a vector directory could not be run at all (a failing case is not an error: see [`CaseOutcome`]).
#[derive(Debug, Error)]
pub enum VectorsError {
    /// A file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A file is larger than its limit.
    #[error("{path}: {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The manifest is not valid.
    #[error("{path}: {reason}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The tensor file is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Tensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// `manifest.json`.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    /// Must be [`FORMAT`].
    pub format: String,
    /// Target DCT block side.
    pub target_chunk: usize,
    /// Coefficients kept per block.
    pub topk: usize,
    /// Tensor file name, relative to the directory.
    pub tensors: String,
    /// The cases.
    pub cases: Vec<Case>,
}

/// One case of the manifest.
#[derive(Debug, Deserialize)]
pub struct Case {
    /// Unique name; prefix of its tensors.
    pub name: String,
    /// `split`, `basis`, `encode`, `aggregate`, `pack` or `unpack`.
    pub kind: String,
    /// Field name → dtype and shape.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSpec>,
    /// Field name (may contain `*`) → rule.
    #[serde(default)]
    pub tolerance: BTreeMap<String, Rule>,
    /// Every other key of the case.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// Declared dtype and shape of a field.
#[derive(Debug, Clone, Deserialize)]
pub struct FieldSpec {
    /// `float32`, `int16`, `uint8`, `int64`.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
}

/// Result of one case.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    /// Case name.
    pub name: String,
    /// Case kind.
    pub kind: String,
    /// One line per difference; empty when the case passed.
    pub failures: Vec<String>,
}

impl CaseOutcome {
    /// Whether every check of the case held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Loads a vector directory: its manifest and tensor file.
pub struct VectorDir {
    /// The parsed manifest.
    pub manifest: Manifest,
    manifest_path: PathBuf,
    tensor_path: PathBuf,
    tensor_bytes: Vec<u8>,
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, VectorsError> {
    let io = |error| VectorsError::Io {
        path: path.to_path_buf(),
        error,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > limit {
        return Err(VectorsError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    std::fs::read(path).map_err(io)
}

impl VectorDir {
    /// Reads `dir/manifest.json` and the tensor file it names.
    pub fn open(dir: &Path) -> Result<Self, VectorsError> {
        let manifest_path = dir.join("manifest.json");
        let text = read_limited(&manifest_path, MAX_MANIFEST_BYTES)?;
        let bad = |reason: String| VectorsError::Manifest {
            path: manifest_path.clone(),
            reason,
        };
        let text = String::from_utf8(text).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let manifest: Manifest = serde_json::from_str(&python_json_to_json(&text)).map_err(|e| bad(e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(bad(format!(
                "format is {:?}, this runner reads {FORMAT:?}",
                manifest.format
            )));
        }
        if Path::new(&manifest.tensors).components().count() != 1 {
            return Err(bad(format!("tensors {:?} must be a plain file name", manifest.tensors)));
        }
        let tensor_path = dir.join(&manifest.tensors);
        let tensor_bytes = read_limited(&tensor_path, MAX_TENSOR_BYTES)?;
        SafeTensors::deserialize(&tensor_bytes).map_err(|e| VectorsError::Tensors {
            path: tensor_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            manifest,
            manifest_path,
            tensor_path,
            tensor_bytes,
        })
    }

    /// Path of the manifest.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// Runs every case.
    pub fn check(&self, backend: &dyn Backend) -> Vec<CaseOutcome> {
        let tensors = SafeTensors::deserialize(&self.tensor_bytes).expect("validated in open");
        let ctx = Ctx {
            m: &self.manifest,
            t: &tensors,
            tensor_path: &self.tensor_path,
        };
        self.manifest.cases.iter().map(|case| ctx.run(case, backend)).collect()
    }
}

/// Opens `dir` and runs every case against `backend`.
pub fn check_dir(dir: &Path, backend: &dyn Backend) -> Result<Vec<CaseOutcome>, VectorsError> {
    Ok(VectorDir::open(dir)?.check(backend))
}

/// `name: failure; failure` for every case that did not pass, in order (empty when all passed).
pub fn failures(outcomes: &[CaseOutcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| format!("{}: {}", o.name, o.failures.join("; ")))
        .collect()
}

/// Python's `json.dumps` writes the non-standard tokens `NaN`, `Infinity` and `-Infinity` for non-finite floats
/// (the manifest has `"min_topk_gap": Infinity`). This maps exactly those tokens, outside strings, to `null`.
/// Hand-written because a JSON5 parser would accept far more syntax than this format allows.
fn python_json_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            (in_string, escaped) = (escaped || c != '"', !escaped && c == '\\');
        } else if c == '"' {
            in_string = true;
        } else if let Some(tok) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push_str("null");
            rest = &rest[tok.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

struct Ctx<'a> {
    m: &'a Manifest,
    t: &'a SafeTensors<'a>,
    tensor_path: &'a Path,
}

/// A case's failures so far; `?` on a `Result<_, String>` ends the case with that failure.
type Step<T> = Result<T, String>;

trait Element: Sized + Copy {
    const DTYPE: Dtype;
    const NAME: &'static str;
    fn from_le(b: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty, $d:ident, $n:literal) => {
        impl Element for $t {
            const DTYPE: Dtype = Dtype::$d;
            const NAME: &'static str = $n;
            fn from_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("chunk of the element size"))
            }
        }
    };
}
element!(f32, F32, "float32");
element!(i16, I16, "int16");
element!(u8, U8, "uint8");
element!(i64, I64, "int64");

impl Ctx<'_> {
    fn run(&self, case: &Case, backend: &dyn Backend) -> CaseOutcome {
        let mut failures = Vec::new();
        let result = match case.kind.as_str() {
            "split" => self.split(case, &mut failures),
            "basis" => self.basis(case, &mut failures),
            "encode" => self.encode(case, &mut failures),
            "aggregate" => self.aggregate(case, backend, &mut failures),
            "pack" => self.pack(case, &mut failures),
            "unpack" => self.unpack(case, &mut failures),
            other => Err(format!("unknown case kind {other:?}")),
        };
        if let Err(e) = result {
            failures.push(e);
        }
        CaseOutcome {
            name: case.name.clone(),
            kind: case.kind.clone(),
            failures,
        }
    }

    /// Field `f` of `case`, checked against its declared dtype and shape.
    fn tensor<T: Element>(&self, case: &Case, f: &str) -> Step<Vec<T>> {
        let spec = case
            .fields
            .get(f)
            .ok_or_else(|| format!("field {f:?} is not declared"))?;
        let key = format!("{}/{f}", case.name);
        let view = self
            .t
            .tensor(&key)
            .map_err(|e| format!("{}: tensor {key:?}: {e}", self.tensor_path.display()))?;
        if view.dtype() != T::DTYPE || spec.dtype != T::NAME {
            return Err(format!(
                "{key}: dtype {:?} (declared {}), expected {}",
                view.dtype(),
                spec.dtype,
                T::NAME
            ));
        }
        if view.shape() != spec.shape.as_slice() {
            return Err(format!("{key}: shape {:?}, declared {:?}", view.shape(), spec.shape));
        }
        Ok(view.data().chunks_exact(size_of::<T>()).map(T::from_le).collect())
    }

    fn has(&self, case: &Case, f: &str) -> bool {
        case.fields.contains_key(f)
    }

    /// Compares `actual` with field `f` under its `abs` rule (`default` when the case has none); absent fields
    /// (`omitted_fields`) are skipped.
    fn compare_abs(&self, case: &Case, f: &str, actual: &[f32], default: f64, failures: &mut Vec<String>) -> Step<()> {
        if self.has(case, f) {
            let tol = rule_for(&case.tolerance, f, Rule::abs(default)).abs.unwrap_or(0.0);
            if let Err(e) = compare::abs_close(actual, &self.tensor::<f32>(case, f)?, tol) {
                failures.push(format!("{f}: {e}"));
            }
        }
        Ok(())
    }

    fn key<T: serde::de::DeserializeOwned>(&self, case: &Case, k: &str) -> Step<T> {
        let v = case.rest.get(k).ok_or_else(|| format!("key {k:?} is missing"))?;
        serde_json::from_value(v.clone()).map_err(|e| format!("key {k:?}: {e}"))
    }

    fn layout(&self, case: &Case, failures: &mut Vec<String>) -> Step<ParamLayout> {
        let shape: Vec<usize> = self.key(case, "shape")?;
        let layout = ParamLayout::new(&shape, self.m.target_chunk, self.m.topk).map_err(|e| e.to_string())?;
        let expect = |k: &str, ours: Value, failures: &mut Vec<String>| {
            if let Some(theirs) = case.rest.get(k).filter(|t| **t != ours) {
                failures.push(format!("{k}: computed {ours}, expected {theirs}"));
            }
        };
        expect("xshape", layout.xshape().into(), failures);
        expect("totalk", layout.totalk().into(), failures);
        expect("topk_effective", layout.k().into(), failures);
        expect("chunk", layout.chunk().into(), failures);
        expect("numel", layout.numel().into(), failures);
        expect("packed_len", layout.packed_len().into(), failures);
        Ok(layout)
    }

    fn split(&self, case: &Case, failures: &mut Vec<String>) -> Step<()> {
        #[derive(Deserialize)]
        struct Entry {
            n: usize,
            target_chunk: usize,
            chunk: usize,
        }
        let entries: Vec<Entry> = self.key(case, "entries")?;
        for e in entries {
            let got = split(e.n, e.target_chunk);
            if got != e.chunk {
                failures.push(format!(
                    "split({}, {}) = {got}, expected {}",
                    e.n, e.target_chunk, e.chunk
                ));
            }
        }
        Ok(())
    }

    fn basis(&self, case: &Case, failures: &mut Vec<String>) -> Step<()> {
        let n: usize = self.key(case, "n")?;
        let b = DctBasis::new(n);
        for (field, ours) in [("f", b.forward().to_vec()), ("b", b.inverse())] {
            let tol = rule_for(&case.tolerance, field, Rule::abs(1e-6)).abs.unwrap_or(0.0);
            let want = self.tensor::<f32>(case, field)?;
            if let Err(e) = compare::abs_close(&ours, &want, tol) {
                failures.push(format!("{field}: {e}"));
            }
        }
        Ok(())
    }

    fn encode(&self, case: &Case, failures: &mut Vec<String>) -> Step<()> {
        let layout = self.layout(case, failures)?;
        let x = self.tensor::<f32>(case, "x")?;
        let cpu = Cpu::new();
        let mut encoded = vec![0f32; layout.n_blocks() * layout.totalk()];
        cpu.encode(&layout, &x, &mut encoded).map_err(|e| e.to_string())?;
        let tol = |f| rule_for(&case.tolerance, f, Rule::abs(1e-5)).abs.unwrap_or(0.0);
        if let Err(e) = compare::abs_close(&encoded, &self.tensor::<f32>(case, "encoded")?, tol("encoded")) {
            failures.push(format!("encoded: {e}"));
        }
        let (mut idxs, mut vals) = (vec![0i16; layout.sparse_len()], vec![0f32; layout.sparse_len()]);
        cpu.compress(&layout, &x, &mut idxs, &mut vals)
            .map_err(|e| e.to_string())?;
        let skip: HashSet<usize> = match case.rest.get("ambiguous_rows") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("ambiguous_rows: {e}"))?,
            None => HashSet::new(),
        };
        let (want_i, want_v) = (self.tensor::<i16>(case, "idxs")?, self.tensor::<f32>(case, "vals")?);
        if let Err(e) = compare::per_row_set(&idxs, &want_i, layout.k(), &skip) {
            failures.push(format!("idxs: {e}"));
        }
        if let Err(e) = compare::paired_with_idxs((&idxs, &vals), (&want_i, &want_v), layout.k(), tol("vals"), &skip) {
            failures.push(format!("vals: {e}"));
        }
        Ok(())
    }

    fn aggregate(&self, case: &Case, backend: &dyn Backend, failures: &mut Vec<String>) -> Step<()> {
        let layout = self.layout(case, failures)?;
        let n_peers: usize = self.key(case, "n_peers")?;
        let mut raw = Vec::with_capacity(n_peers);
        for p in 0..n_peers {
            raw.push((
                self.tensor::<i16>(case, &format!("peer{p}/idxs"))?,
                self.tensor::<f32>(case, &format!("peer{p}/vals"))?,
            ));
        }
        let mut normalised = vec![Vec::new(); n_peers];
        let mut peers = Vec::with_capacity(n_peers);
        for (p, ((idxs, vals), out)) in raw.iter().zip(normalised.iter_mut()).enumerate() {
            let sparse = PeerSparse::new(&layout, idxs, vals).map_err(|e| format!("peer{p}: {e}"))?;
            peers.push(Contribution::new(sparse.normalised(out)));
        }
        for (p, peer) in peers.iter().enumerate() {
            self.compare_abs(
                case,
                &format!("peer{p}/normalized_vals"),
                peer.sparse.vals(),
                1e-6,
                failures,
            )?;
        }
        let mut dense = vec![0f32; layout.n_blocks() * layout.totalk()];
        backend
            .scatter_mean(&layout, &peers, &mut dense)
            .map_err(|e| e.to_string())?;
        self.compare_abs(case, "dense", &dense, 1e-6, failures)?;
        let mut fused = vec![0f32; layout.numel()];
        backend
            .aggregate_decoded(&layout, &peers, &mut fused)
            .map_err(|e| e.to_string())?;
        let mut decoded = vec![0f32; layout.numel()];
        backend
            .decode(&layout, &dense, &mut decoded)
            .map_err(|e| e.to_string())?;
        if let Err(e) = compare::exact_bits(&fused, &decoded) {
            failures.push(format!(
                "decoded: the fused path and decode(scatter_mean) disagree: {e}"
            ));
        }
        self.compare_abs(case, "decoded", &fused, 1e-5, failures)?;
        let mut packed = vec![0u8; layout.packed_len()];
        backend
            .aggregate(&layout, &peers, &mut packed)
            .map_err(|e| e.to_string())?;
        let near_zero = if self.has(case, "near_zero") {
            self.tensor::<i64>(case, "near_zero")?
        } else {
            Vec::new()
        };
        let want = self.tensor::<u8>(case, "packed")?;
        let rule = rule_for(&case.tolerance, "packed", Rule::named("exact_except_near_zero"));
        let check = match rule.compare.as_deref() {
            Some("exact") => compare::exact(&packed, &want),
            _ => compare::exact_except_near_zero(&packed, &want, &near_zero),
        };
        if let Err(e) = check {
            failures.push(format!("packed: {e}"));
        }
        Ok(())
    }

    fn pack(&self, case: &Case, failures: &mut Vec<String>) -> Step<()> {
        let input = self.tensor::<f32>(case, "input")?;
        let mut packed = vec![0u8; input.len().div_ceil(8)];
        pack_signs(&input, &mut packed).map_err(|e| e.to_string())?;
        if let Err(e) = compare::exact(&packed, &self.tensor::<u8>(case, "packed")?) {
            failures.push(format!("packed: {e}"));
        }
        Ok(())
    }

    fn unpack(&self, case: &Case, failures: &mut Vec<String>) -> Step<()> {
        let packed = self.tensor::<u8>(case, "packed")?;
        let want = self.tensor::<f32>(case, "unpacked")?;
        let mut out = vec![0f32; want.len()];
        unpack_signs(&packed, &mut out).map_err(|e| e.to_string())?;
        if let Err(e) = compare::exact_bits(&out, &want) {
            failures.push(format!("unpacked: {e}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::python_json_to_json;

    #[test]
    fn non_finite_tokens_become_null_outside_strings() {
        let s = r#"{"a": Infinity, "b": [-Infinity, NaN], "c": "NaN \" Infinity"}"#;
        let v: serde_json::Value = serde_json::from_str(&python_json_to_json(s)).unwrap();
        assert!(v["a"].is_null() && v["b"][0].is_null() && v["b"][1].is_null());
        assert_eq!(v["c"], "NaN \" Infinity");
    }
}
