//! A parsed `.pt` file and typed, bounded access to its object graph.

use std::cell::Cell;
use std::fmt::Write as _;

use crate::archive::Archive;
use crate::pickle::{Id, Node, Pickled, unpickle};
use crate::tensor::{DType, TensorMeta};
use crate::{CodecError, Limits};

/// Element types a tensor can be materialised as.
pub trait Element: Copy {
    /// The torch dtype.
    const DTYPE: DType;
    /// Decodes one little-endian element.
    fn from_le(b: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty, $d:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn from_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("element-sized chunk"))
            }
        }
    };
}
element!(u8, U8);
element!(i16, I16);
element!(f32, F32);
element!(i64, I64);

/// Bytes of object-graph reading allowed per byte of `data.pkl`, beyond [`GRAPH_READ_BASE`].
///
/// The accessors ([`PtFile::dict`], [`PtFile::seq`], [`PtFile::str`], …) hand out borrowed items, and a reader then
/// does work in proportion to what it was handed (formats a path with a key, copies a string, collects a list). A
/// memo reference makes one node reachable from many places for two bytes each, so without a bound a reader could be
/// made to walk one large shared list or string once per reference. Every accessor therefore charges what a reader
/// may make of what it hands out: 16 bytes per dict item, 8 per list item, a string's length. A reader that visits
/// each value a few times, as the typed payload readers do, stays far below this.
pub const GRAPH_READS_PER_BYTE: u64 = 4;
/// Object-graph reading allowed whatever the size of `data.pkl` (see [`GRAPH_READS_PER_BYTE`]).
pub const GRAPH_READ_BASE: u64 = 64 << 10;
/// Largest outline [`PtFile::describe`] writes, in bytes; the rest is cut with a note.
pub const MAX_DESCRIBE_BYTES: usize = 1 << 20;

/// A `.pt` file: the zip records and the object graph of `data.pkl`, read under [`Limits`].
pub struct PtFile<'a> {
    archive: Archive<'a>,
    pickled: Pickled,
    limits: Limits,
    materialised: Cell<u64>,
    /// Bytes charged by the accessors, against `read_budget` ([`GRAPH_READS_PER_BYTE`]).
    read: Cell<u64>,
    read_budget: u64,
}

impl<'a> PtFile<'a> {
    /// Parses the container and runs the restricted pickle machine. Nothing in the file is executed.
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<Self, CodecError> {
        let archive = Archive::read(bytes, limits)?;
        let lens: std::collections::HashMap<String, u64> = archive
            .storages
            .iter()
            .map(|(k, r)| (k.clone(), r.len() as u64))
            .collect();
        Self::from_archive(archive, limits, &|key: &str| lens.get(key).copied())
    }

    /// Runs the restricted pickle machine over an archive's `data.pkl`; `record_len` gives each storage record's
    /// size (the ranged reader has the sizes from the central directory, not the records).
    pub(crate) fn from_archive(
        archive: Archive<'a>,
        limits: &Limits,
        record_len: &dyn Fn(&str) -> Option<u64>,
    ) -> Result<Self, CodecError> {
        let pickled = unpickle(&archive.pickle, limits, record_len)?;
        let read_budget = GRAPH_READS_PER_BYTE * archive.pickle.len() as u64 + GRAPH_READ_BASE;
        Ok(Self {
            archive,
            pickled,
            limits: *limits,
            materialised: Cell::new(0),
            read: Cell::new(0),
            read_budget,
        })
    }

    /// Charges `bytes` of object-graph reading (see [`GRAPH_READS_PER_BYTE`]).
    fn charge(&self, bytes: usize) -> Result<(), CodecError> {
        let total = self.read.get().saturating_add(bytes as u64);
        self.read.set(total);
        Limits::check(
            "object graph reads (shared values read too often)",
            total,
            self.read_budget,
        )
    }

    /// Name of the archive's root folder.
    pub fn root_folder(&self) -> &str {
        &self.archive.root
    }
    /// The root object.
    pub fn root(&self) -> Id {
        self.pickled.root()
    }
    /// A node of the object graph.
    pub fn node(&self, id: Id) -> &Node {
        self.pickled.node(id)
    }

    /// The items of a dict, or an error naming `path`. Charged per item (see [`GRAPH_READS_PER_BYTE`]).
    pub fn dict(&self, id: Id, path: &str) -> Result<&[(Id, Id)], CodecError> {
        match self.node(id) {
            Node::Dict(items) => {
                self.charge(items.len() * 16)?;
                Ok(items)
            }
            other => Err(CodecError::structure(
                path,
                format!("is a {}, expected a dict", other.kind()),
            )),
        }
    }
    /// A string, or an error naming `path`. Charged per byte (see [`GRAPH_READS_PER_BYTE`]).
    pub fn str(&self, id: Id, path: &str) -> Result<&str, CodecError> {
        match self.node(id) {
            Node::Str(s) => {
                self.charge(s.len())?;
                Ok(s)
            }
            other => Err(CodecError::structure(
                path,
                format!("is a {}, expected a str", other.kind()),
            )),
        }
    }
    /// An integer (numpy integer scalars included), or an error naming `path`.
    pub fn int(&self, id: Id, path: &str) -> Result<i64, CodecError> {
        match self.node(id) {
            Node::Int(v) => Ok(*v),
            other => Err(CodecError::structure(
                path,
                format!("is a {}, expected an int", other.kind()),
            )),
        }
    }
    /// A float (ints accepted, as Python would), or an error naming `path`.
    pub fn float(&self, id: Id, path: &str) -> Result<f64, CodecError> {
        match self.node(id) {
            Node::Float(v) => Ok(*v),
            Node::Int(v) => Ok(*v as f64),
            other => Err(CodecError::structure(
                path,
                format!("is a {}, expected a float", other.kind()),
            )),
        }
    }
    /// The items of a list or tuple, or an error naming `path`. Charged per item (see [`GRAPH_READS_PER_BYTE`]).
    pub fn seq(&self, id: Id, path: &str) -> Result<&[Id], CodecError> {
        match self.node(id) {
            Node::List(v) | Node::Tuple(v) => {
                self.charge(v.len() * 8)?;
                Ok(v)
            }
            other => Err(CodecError::structure(
                path,
                format!("is a {}, expected a list", other.kind()),
            )),
        }
    }
    /// A list of integers.
    pub fn ints(&self, id: Id, path: &str) -> Result<Vec<i64>, CodecError> {
        self.seq(id, path)?
            .iter()
            .enumerate()
            .map(|(i, &e)| self.int(e, &format!("{path}[{i}]")))
            .collect()
    }
    /// The dict entry whose key is the string `key`.
    pub fn get(&self, dict: Id, key: &str, path: &str) -> Result<Option<Id>, CodecError> {
        for &(k, v) in self.dict(dict, path)? {
            if matches!(self.node(k), Node::Str(s) if s == key) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The tensor at `id`, or an error naming `path`.
    pub fn tensor_meta(&self, id: Id, path: &str) -> Result<&TensorMeta, CodecError> {
        match self.node(id) {
            Node::Tensor(t) => Ok(t),
            other => Err(CodecError::structure(
                path,
                format!("is a {}, expected a tensor", other.kind()),
            )),
        }
    }

    /// Materialises a tensor of element type `T` (row-major), counting its bytes against the tensor-byte limit.
    pub fn tensor<T: Element>(&self, meta: &TensorMeta, path: &str) -> Result<Vec<T>, CodecError> {
        let total = self.materialised.get() + meta.nbytes();
        self.check_tensor_bytes(total)?;
        self.materialised.set(total);
        let record = self.archive.storages.get(&meta.key).map(|r| &**r);
        materialise(meta, record, path)
    }

    /// Checks `total` bytes of tensor data against the tensor-byte limit.
    pub(crate) fn check_tensor_bytes(&self, total: u64) -> Result<(), CodecError> {
        Limits::check("tensor bytes", total, self.limits.max_tensor_bytes)
    }

    /// A readable outline of the object graph: keys, types, dtypes and shapes, depth- and length-limited.
    ///
    /// Each container is expanded once: a container reachable from several places (a memo reference) is labelled
    /// `&N` where it is shown and printed as `-> &N` elsewhere, so shared values cannot multiply the output. The
    /// text is at most [`MAX_DESCRIBE_BYTES`] long.
    pub fn describe(&self) -> String {
        let nodes = self.pickled.len();
        // Containers reachable more than once get a label; one pass over every edge.
        let mut refs = vec![0u8; nodes];
        for id in 0..nodes as Id {
            for child in children(self.node(id)) {
                let r = &mut refs[child as usize];
                *r = r.saturating_add(1);
            }
        }
        let mut out = Outline {
            text: String::new(),
            shown: vec![false; nodes],
            refs,
            full: false,
        };
        self.describe_node(self.root(), 0, &mut out);
        if out.full {
            let _ = write!(out.text, "\n… (outline cut at {MAX_DESCRIBE_BYTES} bytes)\n");
        }
        out.text
    }

    fn describe_node(&self, id: Id, depth: usize, out: &mut Outline) {
        if out.text.len() > MAX_DESCRIBE_BYTES {
            out.full = true;
            return;
        }
        let pad = "  ".repeat(depth);
        if depth > 8 {
            let _ = writeln!(out.text, "{pad}…");
            return;
        }
        let node = self.node(id);
        let container = matches!(node, Node::Dict(_) | Node::List(_) | Node::Tuple(_) | Node::Set(_));
        let label = if container && out.refs[id as usize] > 1 {
            if out.shown[id as usize] {
                let _ = writeln!(out.text, "-> &{id} ({}, shown above)", node.kind());
                return;
            }
            format!(" &{id}")
        } else {
            String::new()
        };
        if container {
            out.shown[id as usize] = true;
        }
        match node {
            Node::Dict(items) => {
                let _ = writeln!(out.text, "dict ({} keys){label}", items.len());
                for &(k, v) in items.iter().take(2000) {
                    let key = match self.node(k) {
                        Node::Str(_) => self.scalar(k),
                        other => format!("<{}>", other.kind()),
                    };
                    let _ = write!(out.text, "{pad}  {key}: ");
                    self.describe_node(v, depth + 1, out);
                }
            }
            Node::List(items) | Node::Tuple(items) | Node::Set(items) => {
                let kind = node.kind();
                let scalars = items.iter().all(|&i| {
                    !matches!(
                        self.node(i),
                        Node::Dict(_) | Node::List(_) | Node::Tuple(_) | Node::Set(_) | Node::Tensor(_)
                    )
                });
                if scalars {
                    let shown: Vec<String> = items.iter().take(8).map(|&i| self.scalar(i)).collect();
                    let more = if items.len() > 8 { ", …" } else { "" };
                    let _ = writeln!(out.text, "{kind}[{}]{label} [{}{more}]", items.len(), shown.join(", "));
                } else {
                    let _ = writeln!(out.text, "{kind}[{}]{label}", items.len());
                    for &i in items.iter().take(8) {
                        let _ = write!(out.text, "{pad}  - ");
                        self.describe_node(i, depth + 1, out);
                    }
                }
            }
            Node::Tensor(t) => {
                let _ = writeln!(out.text, "tensor {} {:?}", t.dtype.name(), t.shape);
            }
            _ => {
                let _ = writeln!(out.text, "{}", self.scalar(id));
            }
        }
    }

    fn scalar(&self, id: Id) -> String {
        match self.node(id) {
            Node::None => "None".into(),
            Node::Bool(b) => if *b { "True" } else { "False" }.into(),
            Node::Int(v) => v.to_string(),
            Node::Float(v) => format!("{v:?}"),
            Node::Str(s) if s.len() > 80 => format!("{:?}… ({} bytes)", &s[..s.floor_char_boundary(80)], s.len()),
            Node::Str(s) => format!("{s:?}"),
            Node::Bytes(b) => format!("bytes[{}]", b.len()),
            Node::Tensor(t) => format!("tensor {} {:?}", t.dtype.name(), t.shape),
            other => format!("<{}>", other.kind()),
        }
    }
}

/// The state of one [`PtFile::describe`].
struct Outline {
    text: String,
    /// Containers already expanded.
    shown: Vec<bool>,
    /// How many edges reach each node (saturating).
    refs: Vec<u8>,
    /// The text reached [`MAX_DESCRIBE_BYTES`].
    full: bool,
}

/// The nodes a node refers to.
fn children(node: &Node) -> impl Iterator<Item = Id> + '_ {
    let (seq, pairs): (&[Id], &[(Id, Id)]) = match node {
        Node::List(v) | Node::Tuple(v) | Node::Set(v) => (v, &[]),
        Node::Dict(d) => (&[], d),
        _ => (&[], &[]),
    };
    seq.iter().copied().chain(pairs.iter().flat_map(|&(k, v)| [k, v]))
}

/// The elements of the tensor `meta` over its storage `record` (none: the record is missing), row-major.
pub(crate) fn materialise<T: Element>(
    meta: &TensorMeta,
    record: Option<&[u8]>,
    path: &str,
) -> Result<Vec<T>, CodecError> {
    if meta.dtype != T::DTYPE {
        return Err(CodecError::structure(
            path,
            format!("has dtype {}, expected {}", meta.dtype.name(), T::DTYPE.name()),
        ));
    }
    let record = record.ok_or_else(|| CodecError::structure(path, format!("storage data/{} is missing", meta.key)))?;
    let bytes = meta.gather_bytes(record);
    Ok(bytes.chunks_exact(size_of::<T>()).map(T::from_le).collect())
}
