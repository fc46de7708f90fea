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

/// A `.pt` file: the zip records and the object graph of `data.pkl`, read under [`Limits`].
pub struct PtFile<'a> {
    archive: Archive<'a>,
    pickled: Pickled,
    limits: Limits,
    materialised: Cell<u64>,
}

impl<'a> PtFile<'a> {
    /// Parses the container and runs the restricted pickle machine. Nothing in the file is executed.
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<Self, CodecError> {
        let archive = Archive::read(bytes, limits)?;
        let record_len = |key: &str| archive.storages.get(key).map(|r| r.len() as u64);
        let pickled = unpickle(&archive.pickle, limits, &record_len)?;
        Ok(Self {
            archive,
            pickled,
            limits: *limits,
            materialised: Cell::new(0),
        })
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

    /// The items of a dict, or an error naming `path`.
    pub fn dict(&self, id: Id, path: &str) -> Result<&[(Id, Id)], CodecError> {
        match self.node(id) {
            Node::Dict(items) => Ok(items),
            other => Err(CodecError::structure(
                path,
                format!("is a {}, expected a dict", other.kind()),
            )),
        }
    }
    /// A string, or an error naming `path`.
    pub fn str(&self, id: Id, path: &str) -> Result<&str, CodecError> {
        match self.node(id) {
            Node::Str(s) => Ok(s),
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
    /// The items of a list or tuple, or an error naming `path`.
    pub fn seq(&self, id: Id, path: &str) -> Result<&[Id], CodecError> {
        match self.node(id) {
            Node::List(v) | Node::Tuple(v) => Ok(v),
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
        if meta.dtype != T::DTYPE {
            return Err(CodecError::structure(
                path,
                format!("has dtype {}, expected {}", meta.dtype.name(), T::DTYPE.name()),
            ));
        }
        let total = self.materialised.get() + meta.nbytes();
        Limits::check("tensor bytes", total, self.limits.max_tensor_bytes)?;
        self.materialised.set(total);
        let record = self
            .archive
            .storages
            .get(&meta.key)
            .ok_or_else(|| CodecError::structure(path, format!("storage data/{} is missing", meta.key)))?;
        let bytes = meta.gather_bytes(record);
        Ok(bytes.chunks_exact(size_of::<T>()).map(T::from_le).collect())
    }

    /// A readable outline of the object graph: keys, types, dtypes and shapes (depth- and length-limited).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        self.describe_node(self.root(), 0, &mut out);
        out
    }

    fn describe_node(&self, id: Id, depth: usize, out: &mut String) {
        let pad = "  ".repeat(depth);
        if depth > 8 {
            let _ = writeln!(out, "{pad}…");
            return;
        }
        match self.node(id) {
            Node::Dict(items) => {
                let _ = writeln!(out, "dict ({} keys)", items.len());
                for &(k, v) in items.iter().take(2000) {
                    let key = match self.node(k) {
                        Node::Str(s) => format!("{s:?}"),
                        other => format!("<{}>", other.kind()),
                    };
                    let _ = write!(out, "{pad}  {key}: ");
                    self.describe_node(v, depth + 1, out);
                }
            }
            Node::List(items) | Node::Tuple(items) | Node::Set(items) => {
                let kind = self.node(id).kind();
                let scalars = items.iter().all(|&i| {
                    !matches!(
                        self.node(i),
                        Node::Dict(_) | Node::List(_) | Node::Tuple(_) | Node::Tensor(_)
                    )
                });
                if scalars {
                    let shown: Vec<String> = items.iter().take(8).map(|&i| self.scalar(i)).collect();
                    let more = if items.len() > 8 { ", …" } else { "" };
                    let _ = writeln!(out, "{kind}[{}] [{}{more}]", items.len(), shown.join(", "));
                } else {
                    let _ = writeln!(out, "{kind}[{}]", items.len());
                    for &i in items.iter().take(8) {
                        let _ = write!(out, "{pad}  - ");
                        self.describe_node(i, depth + 1, out);
                    }
                }
            }
            Node::Tensor(t) => {
                let _ = writeln!(out, "tensor {} {:?}", t.dtype.name(), t.shape);
            }
            _ => {
                let _ = writeln!(out, "{}", self.scalar(id));
            }
        }
    }

    fn scalar(&self, id: Id) -> String {
        match self.node(id) {
            Node::None => "None".into(),
            Node::Bool(b) => if *b { "True" } else { "False" }.into(),
            Node::Int(v) => v.to_string(),
            Node::Float(v) => format!("{v:?}"),
            Node::Str(s) if s.len() > 80 => format!("{:?}…", &s[..s.floor_char_boundary(80)]),
            Node::Str(s) => format!("{s:?}"),
            Node::Bytes(b) => format!("bytes[{}]", b.len()),
            Node::Tensor(t) => format!("tensor {} {:?}", t.dtype.name(), t.shape),
            other => format!("<{}>", other.kind()),
        }
    }
}
