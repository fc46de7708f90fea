//! Typed payloads of Templar 0.2.73 files (spec §1.4.1–1.4.4), read from and written to `.pt` bytes.
//!
//! Every file is the envelope `{"state_dict": {...}, "global_step": int}`.

use std::borrow::Cow;
use std::collections::HashMap;

use aggregator_kernels::PeerSparse;
use aggregator_model::ModelSpec;

use crate::pickle::{Id, Node};
use crate::read::PtFile;
use crate::tensor::{DType, TensorMeta};
use crate::write::{Obj, PtWriter, write_pt};
use crate::{CodecError, Limits};

/// `(state_dict, global_step)` of the envelope.
fn envelope(file: &PtFile) -> Result<(Id, i64), CodecError> {
    let root = file.root();
    let sd = file
        .get(root, "state_dict", "root")?
        .ok_or_else(|| CodecError::structure("root", "has no \"state_dict\""))?;
    file.dict(sd, "state_dict")?;
    let step = match file.get(root, "global_step", "root")? {
        Some(id) => file.int(id, "global_step")?,
        None => 0,
    };
    Ok((sd, step))
}

fn envelope_obj<'a>(state_dict: Vec<(Obj<'a>, Obj<'a>)>, global_step: i64) -> Obj<'a> {
    Obj::Dict(vec![
        (Obj::str("state_dict"), Obj::Dict(state_dict)),
        (Obj::str("global_step"), Obj::Int(global_step)),
    ])
}

/// One parameter of a miner's gradient: top-k indices and values per block (`idxs_shape`, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct SparseParam {
    /// int16 indices.
    pub idxs: Vec<i16>,
    /// float32 values.
    pub vals: Vec<f32>,
}

/// `metadata` of a gradient file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GradientMetadata {
    /// `(config, page, split)` of the pages the miner trained on.
    pub pages_info: Vec<(String, i64, String)>,
    /// The window the miner says it trained.
    pub window: Option<i64>,
}

/// A miner's `gradient-{w}-{uid}-v{V}.pt`, validated against a model layout.
///
/// Validation (stricter than Templar's, which lets a malformed peer abort the whole window, spec §9.7):
/// * for each model parameter, `<name>idxs` and `<name>vals` are both present or both absent (absent = the peer sent
///   nothing for it, which Templar allows);
/// * `idxs` is int16 and `vals` float32, both of exactly the layout's `idxs_shape` (leading dims and `k`);
/// * every index lies in `[0, totalk)` and every value is finite;
/// * **extra keys**: a tensor under any other key is an error (the peer trained another model, or is malformed;
///   Templar likewise rejects an unknown `*idxs` key), while non-tensor keys other than `metadata` are ignored (Templar
///   drops non-tensors).
#[derive(Debug, Clone, PartialEq)]
pub struct Gradient {
    /// Per model parameter, in model order; `None` when the peer omitted it.
    pub params: Vec<Option<SparseParam>>,
    /// The miner's metadata.
    pub metadata: GradientMetadata,
    /// The envelope's `global_step`.
    pub global_step: i64,
}

/// Everything of a gradient file but its tensor data: where each parameter's `idxs` and `vals` lie (checked for
/// dtype and shape against the model), the metadata and `global_step`. What [`Gradient::read`] and the ranged reader
/// ([`crate::ranged::GradientIndex`]) both start from, so the two judge a file the same way.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    /// Per model parameter: `[idxs, vals]`, or `None` when the peer omitted it.
    pub params: Vec<Option<[TensorMeta; 2]>>,
    pub metadata: GradientMetadata,
    pub global_step: i64,
}

impl Located {
    /// Finds every parameter's tensors in `file` and checks them against `model` (see [`Gradient`]), and that the
    /// tensor data to read stays within the limits. `storage_keys` are the archive's storage records: each must be
    /// the data of some parameter's tensor (torch writes no other; a record nothing uses is refused, so that a reader
    /// of some records only judges the file as a reader of all of them does).
    pub(crate) fn find<'k>(
        file: &PtFile,
        model: &ModelSpec,
        storage_keys: impl Iterator<Item = &'k str>,
    ) -> Result<Self, CodecError> {
        let (sd, global_step) = envelope(file)?;
        let index: HashMap<&str, usize> = model
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let mut found: Vec<[Option<Id>; 2]> = vec![[None, None]; model.params.len()];
        let mut metadata = GradientMetadata::default();
        for &(k, v) in file.dict(sd, "state_dict")? {
            let key = file.str(k, "state_dict key")?;
            let path = format!("state_dict[{key:?}]");
            if let Node::Tensor(_) = file.node(v) {
                let slot = key
                    .strip_suffix("idxs")
                    .map(|b| (b, 0))
                    .or_else(|| key.strip_suffix("vals").map(|b| (b, 1)))
                    .and_then(|(base, which)| Some((*index.get(base)?, which)));
                let Some((i, which)) = slot else {
                    return Err(CodecError::structure(
                        path,
                        "is a tensor that is not the idxs/vals of a model parameter",
                    ));
                };
                if found[i][which].replace(v).is_some() {
                    return Err(CodecError::structure(path, "appears twice"));
                }
            } else if key == "metadata" {
                metadata = read_metadata(file, v)?;
            }
        }
        let mut params = Vec::with_capacity(model.params.len());
        let (mut used, mut total) = (std::collections::HashSet::new(), 0u64);
        for (spec, [idxs, vals]) in model.params.iter().zip(found) {
            let param = |reason: String| CodecError::Param {
                param: spec.name.clone(),
                reason,
            };
            let (idxs, vals) = match (idxs, vals) {
                (None, None) => {
                    params.push(None);
                    continue;
                }
                (Some(i), Some(v)) => (i, v),
                (Some(_), None) => return Err(param("has idxs but no vals".into())),
                (None, Some(_)) => return Err(param("has vals but no idxs".into())),
            };
            let want = spec.layout.idxs_shape();
            let (im, vm) = (file.tensor_meta(idxs, "idxs")?, file.tensor_meta(vals, "vals")?);
            for (what, meta, dtype) in [("idxs", im, DType::I16), ("vals", vm, DType::F32)] {
                if meta.dtype != dtype {
                    return Err(param(format!(
                        "{what} has dtype {}, expected {}",
                        meta.dtype.name(),
                        dtype.name()
                    )));
                }
                if meta.shape != want {
                    return Err(param(format!("{what} has shape {:?}, expected {want:?}", meta.shape)));
                }
                used.insert(meta.key.clone());
                total += meta.nbytes();
            }
            params.push(Some([im.clone(), vm.clone()]));
        }
        file.check_tensor_bytes(total)?;
        for key in storage_keys {
            if !used.contains(key) {
                return Err(CodecError::Record {
                    name: format!("{}/data/{key}", file.root_folder()),
                    reason: "is not the data of any parameter's tensor".into(),
                });
            }
        }
        Ok(Self {
            params,
            metadata,
            global_step,
        })
    }
}

impl SparseParam {
    /// The kernels' checks of one parameter against its layout (index range, finite values, …).
    pub(crate) fn check(&self, spec: &aggregator_model::ParamSpec) -> Result<(), CodecError> {
        PeerSparse::new(&spec.layout, &self.idxs, &self.vals).map_err(|error| CodecError::Kernel {
            param: spec.name.clone(),
            error,
        })?;
        Ok(())
    }
}

impl Gradient {
    /// Reads and validates a gradient file against `model`: the ranged reader ([`crate::ranged`]) over the whole
    /// file, so that a file read whole, by parameter groups or by shards is judged by one code path.
    pub fn read(bytes: &[u8], model: &ModelSpec, limits: &Limits) -> Result<Self, CodecError> {
        crate::ranged::read_whole(bytes, model, limits)
    }

    /// Writes the file as a Templar miner does (parameters in model order, `idxs` before `vals`, then `metadata`).
    pub fn to_bytes(&self, model: &ModelSpec) -> Result<Vec<u8>, CodecError> {
        if self.params.len() != model.params.len() {
            return Err(CodecError::structure(
                "params",
                format!("{} entries for a model of {}", self.params.len(), model.params.len()),
            ));
        }
        let mut sd = Vec::new();
        for (spec, p) in model.params.iter().zip(&self.params) {
            let Some(p) = p else { continue };
            let shape = spec.layout.idxs_shape();
            sd.push((
                Obj::str(format!("{}idxs", spec.name)),
                Obj::tensor_from(DType::I16, shape.clone(), &p.idxs, |v| v.to_le_bytes().to_vec()),
            ));
            sd.push((
                Obj::str(format!("{}vals", spec.name)),
                Obj::tensor_from(DType::F32, shape, &p.vals, |v| v.to_le_bytes().to_vec()),
            ));
        }
        let pages = self
            .metadata
            .pages_info
            .iter()
            .map(|(c, p, s)| Obj::Tuple(vec![Obj::str(c.as_str()), Obj::Int(*p), Obj::str(s.as_str())]))
            .collect();
        let mut meta = vec![(Obj::str("pages_info"), Obj::List(pages))];
        if let Some(w) = self.metadata.window {
            meta.push((Obj::str("window"), Obj::Int(w)));
        }
        sd.push((Obj::str("metadata"), Obj::Dict(meta)));
        write_pt(&envelope_obj(sd, self.global_step))
    }
}

fn read_metadata(file: &PtFile, id: Id) -> Result<GradientMetadata, CodecError> {
    let mut m = GradientMetadata::default();
    if let Some(w) = file.get(id, "window", "metadata")? {
        m.window = Some(file.int(w, "metadata[\"window\"]")?);
    }
    if let Some(p) = file.get(id, "pages_info", "metadata")? {
        for (i, &e) in file.seq(p, "metadata[\"pages_info\"]")?.iter().enumerate() {
            let path = format!("metadata[\"pages_info\"][{i}]");
            match file.seq(e, &path)? {
                &[c, n, s] => m.pages_info.push((
                    file.str(c, &path)?.to_string(),
                    file.int(n, &path)?,
                    file.str(s, &path)?.to_string(),
                )),
                other => {
                    return Err(CodecError::structure(
                        path,
                        format!("has {} fields, expected 3", other.len()),
                    ));
                }
            }
        }
    }
    Ok(m)
}

/// Metadata keys of an aggregate file, in the order Templar writes them (after the parameters).
pub const AGGREGATE_METADATA_KEYS: [&str; 5] = ["timestamp", "window", "version", "skipped_uids", "success_rate"];

/// The server's `aggregator-{w}-v{V}.pt` (spec §1.4.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// `(parameter name, packed signs)` in model order, for the parameters that had data.
    pub params: Vec<(String, Vec<u8>)>,
    /// ISO-8601 UTC time of writing with a `+00:00` offset.
    pub timestamp: String,
    /// The aggregated window.
    pub window: i64,
    /// Templar version string.
    pub version: String,
    /// Uids of the selected peers that were not aggregated, in peer order.
    pub skipped_uids: Vec<i64>,
    /// `valid / len(peers)`.
    pub success_rate: f64,
    /// The envelope's `global_step` (0).
    pub global_step: i64,
}

impl Aggregate {
    /// Reads an aggregate file (numpy-scalar `skipped_uids`, as Templar 0.2.73 writes them, are accepted).
    /// With `model`, every parameter must belong to it and have its packed length.
    pub fn read(bytes: &[u8], model: Option<&ModelSpec>, limits: &Limits) -> Result<Self, CodecError> {
        let file = PtFile::parse(bytes, limits)?;
        let (sd, global_step) = envelope(&file)?;
        let lens: Option<HashMap<&str, usize>> = model.map(|m| {
            m.params
                .iter()
                .map(|p| (p.name.as_str(), p.layout.packed_len()))
                .collect()
        });
        let (mut params, mut meta) = (Vec::new(), HashMap::new());
        for &(k, v) in file.dict(sd, "state_dict")? {
            let key = file.str(k, "state_dict key")?;
            let path = format!("state_dict[{key:?}]");
            if AGGREGATE_METADATA_KEYS.contains(&key) {
                meta.insert(key, v);
                continue;
            }
            let t = file.tensor_meta(v, &path)?;
            if t.shape.len() != 1 {
                return Err(CodecError::structure(
                    path,
                    format!("has shape {:?}, expected 1-D", t.shape),
                ));
            }
            if let Some(lens) = &lens {
                let want = lens
                    .get(key)
                    .ok_or_else(|| CodecError::structure(&path, "is not a parameter of the model"))?;
                if t.shape[0] != *want {
                    return Err(CodecError::structure(
                        path,
                        format!("has {} bytes, expected {want}", t.shape[0]),
                    ));
                }
            }
            params.push((key.to_string(), file.tensor::<u8>(t, &path)?));
        }
        let field = |k: &str| {
            meta.get(k)
                .copied()
                .ok_or_else(|| CodecError::structure("state_dict", format!("has no {k:?}")))
        };
        Ok(Self {
            params,
            timestamp: file.str(field("timestamp")?, "state_dict[\"timestamp\"]")?.to_string(),
            window: file.int(field("window")?, "state_dict[\"window\"]")?,
            version: file.str(field("version")?, "state_dict[\"version\"]")?.to_string(),
            skipped_uids: file.ints(field("skipped_uids")?, "state_dict[\"skipped_uids\"]")?,
            success_rate: file.float(field("success_rate")?, "state_dict[\"success_rate\"]")?,
            global_step,
        })
    }

    /// Writes the file: parameters then metadata, `skipped_uids` as plain ints (loadable with `weights_only=True`).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let params = self.params.iter().map(|(n, b)| (n.as_str(), b.len(), b.as_slice()));
        write_pt(&self.header().obj(params))
    }

    /// Everything but the bits.
    pub fn header(&self) -> AggregateHeader {
        AggregateHeader {
            timestamp: self.timestamp.clone(),
            window: self.window,
            version: self.version.clone(),
            skipped_uids: self.skipped_uids.clone(),
            success_rate: self.success_rate,
            global_step: self.global_step,
        }
    }
}

/// An aggregate's fields but the parameters' bits: what [`AggregateWriter`] writes before any of them.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateHeader {
    /// See [`Aggregate::timestamp`].
    pub timestamp: String,
    /// See [`Aggregate::window`].
    pub window: i64,
    /// See [`Aggregate::version`].
    pub version: String,
    /// See [`Aggregate::skipped_uids`].
    pub skipped_uids: Vec<i64>,
    /// See [`Aggregate::success_rate`].
    pub success_rate: f64,
    /// See [`Aggregate::global_step`].
    pub global_step: i64,
}

impl AggregateHeader {
    /// The file's object: `(name, bytes, data)` per parameter (the data may be empty when only the program is
    /// wanted: the pickle takes each tensor's size from its shape), then the metadata, in Templar's order.
    fn obj<'a>(&'a self, params: impl Iterator<Item = (&'a str, usize, &'a [u8])>) -> Obj<'a> {
        let mut sd: Vec<(Obj, Obj)> = params
            .map(|(n, len, b)| {
                (
                    Obj::str(n),
                    Obj::Tensor {
                        dtype: DType::U8,
                        shape: vec![len],
                        data: Cow::Borrowed(b),
                    },
                )
            })
            .collect();
        sd.push((Obj::str("timestamp"), Obj::str(self.timestamp.as_str())));
        sd.push((Obj::str("window"), Obj::Int(self.window)));
        sd.push((Obj::str("version"), Obj::str(self.version.as_str())));
        sd.push((
            Obj::str("skipped_uids"),
            Obj::List(self.skipped_uids.iter().map(|&u| Obj::Int(u)).collect()),
        ));
        sd.push((Obj::str("success_rate"), Obj::Float(self.success_rate)));
        envelope_obj(sd, self.global_step)
    }
}

/// `aggregator-{w}-v{V}.pt` written a parameter at a time, with the bytes of [`Aggregate::to_bytes`] for the same
/// fields: the layout (each present parameter's name and packed length) and the header first, then each
/// parameter's bits in that order. Over a [`crate::write::ForwardSink`], only the parameter being written is held.
pub struct AggregateWriter<W: std::io::Read + std::io::Write + std::io::Seek> {
    pt: PtWriter<W>,
    lens: Vec<(String, usize)>,
    next: usize,
}

impl<W: std::io::Read + std::io::Write + std::io::Seek> AggregateWriter<W> {
    /// Starts the file: `params` are the parameters that will be written, `(name, packed length)` in order.
    pub fn begin(writer: W, params: Vec<(String, usize)>, header: &AggregateHeader) -> Result<Self, CodecError> {
        let program = {
            let obj = header.obj(params.iter().map(|(n, l)| (n.as_str(), *l, &[][..])));
            crate::write::pickle_program(&obj)
        };
        let total = program.len() as u64 + params.iter().map(|(_, l)| *l as u64).sum::<u64>();
        Ok(Self {
            pt: PtWriter::begin(writer, &program, total)?,
            lens: params,
            next: 0,
        })
    }

    /// The next parameter's packed bits.
    pub fn param(&mut self, bits: &[u8]) -> Result<(), CodecError> {
        let (name, len) = self.lens.get(self.next).ok_or_else(|| {
            CodecError::structure(
                "params",
                format!("more than the {} parameters begun with", self.lens.len()),
            )
        })?;
        if bits.len() != *len {
            return Err(CodecError::structure(
                name,
                format!("{} bytes, begun with {len}", bits.len()),
            ));
        }
        self.pt.storage(bits)?;
        self.next += 1;
        Ok(())
    }

    /// Completes the file once every parameter has been written; returns the writer.
    pub fn finish(self) -> Result<W, CodecError> {
        if self.next != self.lens.len() {
            return Err(CodecError::structure(
                "params",
                format!("{} of {} parameters written", self.next, self.lens.len()),
            ));
        }
        self.pt.finish()
    }
}

/// A validator's or miner's `debug-{w}-{uid}-v{V}.pt` (spec §1.4.4).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DebugDict {
    /// `(parameter name, sampled values)` from the `<param>_debug` keys, in file order.
    pub values: Vec<(String, Vec<f64>)>,
    /// `successful_peers`, when present.
    pub successful_peers: Option<Vec<i64>>,
    /// `skipped_peers`, when present.
    pub skipped_peers: Option<Vec<i64>>,
    /// The envelope's `global_step`.
    pub global_step: i64,
}

impl DebugDict {
    /// Reads a debug dict; keys other than `<param>_debug`, `successful_peers` and `skipped_peers` are ignored.
    pub fn read(bytes: &[u8], limits: &Limits) -> Result<Self, CodecError> {
        let file = PtFile::parse(bytes, limits)?;
        let (sd, global_step) = envelope(&file)?;
        let mut d = DebugDict {
            global_step,
            ..Default::default()
        };
        for &(k, v) in file.dict(sd, "state_dict")? {
            let key = file.str(k, "state_dict key")?;
            let path = format!("state_dict[{key:?}]");
            if let Some(name) = key.strip_suffix("_debug") {
                let vals = file
                    .seq(v, &path)?
                    .iter()
                    .map(|&x| file.float(x, &path))
                    .collect::<Result<_, _>>()?;
                d.values.push((name.to_string(), vals));
            } else if key == "successful_peers" {
                d.successful_peers = Some(file.ints(v, &path)?);
            } else if key == "skipped_peers" {
                d.skipped_peers = Some(file.ints(v, &path)?);
            }
        }
        Ok(d)
    }

    /// Writes the dict (floats as Python floats, peers as plain ints).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let mut sd: Vec<(Obj, Obj)> = self
            .values
            .iter()
            .map(|(n, v)| {
                (
                    Obj::str(format!("{n}_debug")),
                    Obj::List(v.iter().map(|&x| Obj::Float(x)).collect()),
                )
            })
            .collect();
        let ints = |v: &[i64]| Obj::List(v.iter().map(|&u| Obj::Int(u)).collect());
        if let Some(p) = &self.successful_peers {
            sd.push((Obj::str("successful_peers"), ints(p)));
        }
        if let Some(p) = &self.skipped_peers {
            sd.push((Obj::str("skipped_peers"), ints(p)));
        }
        write_pt(&envelope_obj(sd, self.global_step))
    }
}
