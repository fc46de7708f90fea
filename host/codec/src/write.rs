//! Writing `.pt` files that `torch.load(..., weights_only=True)` accepts: pickle protocol 2 as torch emits it, in a zip
//! with an `archive/` root, `data.pkl`, `byteorder`, `data/<n>` and `version`; entries stored and 64-byte aligned.
//! The output is byte-for-byte reproducible (fixed zip timestamps, storages numbered in order of appearance).

use std::borrow::Cow;
use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::CodecError;
use crate::tensor::DType;

/// An object to pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum Obj<'a> {
    /// `None`.
    None,
    /// `True`/`False`.
    Bool(bool),
    /// A Python int.
    Int(i64),
    /// A Python float.
    Float(f64),
    /// A Python str.
    Str(Cow<'a, str>),
    /// A list.
    List(Vec<Obj<'a>>),
    /// A tuple.
    Tuple(Vec<Obj<'a>>),
    /// A dict, in this order.
    Dict(Vec<(Obj<'a>, Obj<'a>)>),
    /// A contiguous tensor: raw little-endian element bytes.
    Tensor {
        /// Element type.
        dtype: DType,
        /// Shape (row-major).
        shape: Vec<usize>,
        /// `numel * dtype.size()` bytes.
        data: Cow<'a, [u8]>,
    },
}

impl<'a> Obj<'a> {
    /// A string key or value.
    pub fn str(s: impl Into<Cow<'a, str>>) -> Self {
        Obj::Str(s.into())
    }
    /// A tensor from typed elements (copied to little-endian bytes).
    pub fn tensor_from<T: Copy>(dtype: DType, shape: Vec<usize>, data: &[T], to_le: impl Fn(T) -> Vec<u8>) -> Self {
        Obj::Tensor {
            dtype,
            shape,
            data: Cow::Owned(data.iter().flat_map(|&v| to_le(v)).collect()),
        }
    }
}

struct Pickler<'o> {
    out: Vec<u8>,
    storages: Vec<&'o [u8]>,
}

impl<'o> Pickler<'o> {
    fn op(&mut self, b: u8) {
        self.out.push(b);
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.op(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.op(b'\n');
    }
    fn int(&mut self, v: i64) {
        match v {
            0..=0xff => self.out.extend_from_slice(&[b'K', v as u8]),
            0x100..=0xffff => {
                self.op(b'M');
                self.out.extend_from_slice(&(v as u16).to_le_bytes());
            }
            _ if i32::try_from(v).is_ok() => {
                self.op(b'J');
                self.out.extend_from_slice(&(v as i32).to_le_bytes());
            }
            _ => {
                // LONG1: minimal two's-complement little-endian.
                let bytes = v.to_le_bytes();
                let mut n = 8;
                while n > 1
                    && ((bytes[n - 1] == 0 && bytes[n - 2] & 0x80 == 0)
                        || (bytes[n - 1] == 0xff && bytes[n - 2] & 0x80 != 0))
                {
                    n -= 1;
                }
                self.out.extend_from_slice(&[0x8a, n as u8]);
                self.out.extend_from_slice(&bytes[..n]);
            }
        }
    }
    fn string(&mut self, s: &str) {
        self.op(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }
    fn tuple<'a>(&mut self, items: &'o [Obj<'a>]) {
        match items.len() {
            0 => self.op(b')'),
            n @ 1..=3 => {
                for i in items {
                    self.obj(i);
                }
                self.op(0x84 + n as u8);
            }
            _ => {
                self.op(b'(');
                for i in items {
                    self.obj(i);
                }
                self.op(b't');
            }
        }
    }
    fn obj<'a>(&mut self, o: &'o Obj<'a>) {
        match o {
            Obj::None => self.op(b'N'),
            Obj::Bool(b) => self.op(if *b { 0x88 } else { 0x89 }),
            Obj::Int(v) => self.int(*v),
            Obj::Float(v) => {
                self.op(b'G');
                self.out.extend_from_slice(&v.to_be_bytes());
            }
            Obj::Str(s) => self.string(s),
            Obj::Tuple(items) => self.tuple(items),
            Obj::List(items) => {
                self.op(b']');
                for chunk in items.chunks(1000) {
                    self.op(b'(');
                    for i in chunk {
                        self.obj(i);
                    }
                    self.op(b'e');
                }
            }
            Obj::Dict(items) => {
                self.op(b'}');
                for chunk in items.chunks(1000) {
                    self.op(b'(');
                    for (k, v) in chunk {
                        self.obj(k);
                        self.obj(v);
                    }
                    self.op(b'u');
                }
            }
            Obj::Tensor { dtype, shape, data } => {
                let key = self.storages.len();
                self.storages.push(data);
                let numel = (data.len() / dtype.size()) as i64;
                // _rebuild_tensor_v2((storage pid), offset, size, stride, requires_grad, OrderedDict())
                self.global("torch._utils", "_rebuild_tensor_v2");
                self.op(b'(');
                self.op(b'(');
                self.string("storage");
                self.global("torch", dtype.storage_class());
                self.string(&key.to_string());
                self.string("cpu");
                self.int(numel);
                self.op(b't');
                self.op(b'Q');
                self.int(0);
                let mut stride = vec![0i64; shape.len()];
                let mut acc = 1i64;
                for (s, &d) in stride.iter_mut().zip(shape).rev() {
                    *s = acc;
                    acc *= d as i64;
                }
                self.int_tuple(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
                self.int_tuple(&stride);
                self.op(0x89);
                self.global("collections", "OrderedDict");
                self.op(b')');
                self.op(b'R');
                self.op(b't');
                self.op(b'R');
            }
        }
    }
    fn int_tuple(&mut self, v: &[i64]) {
        if v.is_empty() {
            return self.op(b')');
        }
        if v.len() > 3 {
            self.op(b'(');
        }
        for &x in v {
            self.int(x);
        }
        self.op(if v.len() > 3 { b't' } else { 0x84 + v.len() as u8 });
    }
}

/// Serialises `root` as a torch `.pt` file.
pub fn write_pt(root: &Obj) -> Result<Vec<u8>, CodecError> {
    let mut p = Pickler {
        out: vec![0x80, 2],
        storages: Vec::new(),
    };
    p.obj(root);
    p.op(b'.');
    let zerr = |e: zip::result::ZipError| CodecError::Zip(e.to_string());
    let total: usize = p.storages.iter().map(|s| s.len()).sum::<usize>() + p.out.len();
    // Room for every entry's headers too (local and central: ~80 bytes and the name twice, up to 64 of alignment
    // padding, zip64 fields), so the buffer is never reallocated: growing it would copy every byte written so far
    // into fresh, page-faulting memory (a 144 MiB aggregate doubled to 288 MiB).
    let entries = p.storages.len() + 4;
    let names: usize = (0..p.storages.len())
        .map(|i| format!("archive/data/{i}").len())
        .sum::<usize>()
        + 64;
    let capacity = total + entries * 256 + 2 * names + 4096;
    let mut zip = ZipWriter::new(Cursor::new(Vec::with_capacity(capacity)));
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64)
        .large_file(total as u64 >= u32::MAX as u64);
    let mut put = |name: &str, data: &[u8]| -> Result<(), CodecError> {
        zip.start_file(format!("archive/{name}"), opts).map_err(zerr)?;
        zip.write_all(data).map_err(|e| CodecError::Zip(e.to_string()))
    };
    put("data.pkl", &p.out)?;
    put("byteorder", b"little")?;
    for (i, s) in p.storages.iter().enumerate() {
        put(&format!("data/{i}"), s)?;
    }
    put("version", b"3\n")?;
    let out = zip.finish().map_err(zerr)?.into_inner();
    debug_assert_eq!(out.capacity(), capacity, "the .pt buffer was reallocated");
    Ok(out)
}
