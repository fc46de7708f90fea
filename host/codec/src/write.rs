//! Writing `.pt` files that `torch.load(..., weights_only=True)` accepts: pickle protocol 2 as torch emits it, in a zip
//! with an `archive/` root, `data.pkl`, `byteorder`, `data/<n>` and `version`; entries stored and 64-byte aligned.
//! The output is byte-for-byte reproducible (fixed zip timestamps, storages numbered in order of appearance).

use std::borrow::Cow;
use std::io::{Cursor, Read, Seek, Write};

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
                // From the shape, not the data: a file written entry by entry pickles its tensors before their data
                // exists (`PtWriter`); for a whole tensor the two agree.
                let numel = shape.iter().product::<usize>() as i64;
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

/// The pickle program of `root` (its tensors' data are not needed: see [`PtWriter`]).
pub fn pickle_program(root: &Obj) -> Vec<u8> {
    pickle(root).0
}

/// The pickle program of `root` and its tensors' data, in storage order.
fn pickle<'o>(root: &'o Obj) -> (Vec<u8>, Vec<&'o [u8]>) {
    let mut p = Pickler {
        out: vec![0x80, 2],
        storages: Vec::new(),
    };
    p.obj(root);
    p.op(b'.');
    (p.out, p.storages)
}

/// The zip options of every entry: stored, 64-byte aligned, zip64 fields when the data reach 4 GiB.
fn entry_options(total: u64) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64)
        .large_file(total >= u32::MAX as u64)
}

fn zerr(e: zip::result::ZipError) -> CodecError {
    CodecError::Zip(e.to_string())
}

fn put<W: Write + Seek>(
    zip: &mut ZipWriter<W>,
    opts: SimpleFileOptions,
    name: &str,
    data: &[u8],
) -> Result<(), CodecError> {
    zip.start_file(format!("archive/{name}"), opts).map_err(zerr)?;
    zip.write_all(data).map_err(|e| CodecError::Zip(e.to_string()))
}

/// Serialises `root` as a torch `.pt` file.
pub fn write_pt(root: &Obj) -> Result<Vec<u8>, CodecError> {
    let (program, storages) = pickle(root);
    let total: usize = storages.iter().map(|s| s.len()).sum::<usize>() + program.len();
    // Room for every entry's headers too (local and central: ~80 bytes and the name twice, up to 64 of alignment
    // padding, zip64 fields), so the buffer is never reallocated: growing it would copy every byte written so far
    // into fresh, page-faulting memory (a 144 MiB aggregate doubled to 288 MiB).
    let entries = storages.len() + 4;
    let names: usize = (0..storages.len())
        .map(|i| format!("archive/data/{i}").len())
        .sum::<usize>()
        + 64;
    let capacity = total + entries * 256 + 2 * names + 4096;
    let mut w = PtWriter::begin(Cursor::new(Vec::with_capacity(capacity)), &program, total as u64)?;
    for s in &storages {
        w.storage(s)?;
    }
    let out = w.finish()?.into_inner();
    debug_assert_eq!(out.capacity(), capacity, "the .pt buffer was reallocated");
    Ok(out)
}

/// A `.pt` file written entry by entry: `data.pkl` (whose program names every storage, so it is made from the
/// tensors' shapes before any of their data), `byteorder`, then each storage's data in order, then `version`.
/// [`write_pt`] is this over a buffer; [`ForwardSink`] hands the bytes on as they become final, so a large file is
/// never held whole. The same calls give the same bytes whatever the writer.
pub struct PtWriter<W: Read + Write + Seek> {
    zip: ZipWriter<W>,
    opts: SimpleFileOptions,
    next: usize,
}

impl<W: Read + Write + Seek> PtWriter<W> {
    /// Starts a file with the pickle `program`; `total` is the program's and all storages' bytes together (it
    /// decides the zip64 fields, as [`write_pt`] does).
    pub fn begin(writer: W, program: &[u8], total: u64) -> Result<Self, CodecError> {
        let mut zip = ZipWriter::new(writer);
        // A flush after each entry, once its local header has been completed: what [`ForwardSink`] hands on.
        zip.set_flush_on_finish_file(true);
        let opts = entry_options(total);
        put(&mut zip, opts, "data.pkl", program)?;
        put(&mut zip, opts, "byteorder", b"little")?;
        Ok(Self { zip, opts, next: 0 })
    }

    /// The next storage's data (storages in the order the program numbers them).
    pub fn storage(&mut self, data: &[u8]) -> Result<(), CodecError> {
        put(&mut self.zip, self.opts, &format!("data/{}", self.next), data)?;
        self.next += 1;
        Ok(())
    }

    /// Writes `version` and the central directory; returns the writer.
    pub fn finish(mut self) -> Result<W, CodecError> {
        put(&mut self.zip, self.opts, "version", b"3\n")?;
        let mut w = self.zip.finish().map_err(zerr)?;
        w.flush().map_err(|e| CodecError::Zip(e.to_string()))?;
        Ok(w)
    }
}

/// A `Write + Seek` that holds only the bytes the zip writer may still change and hands the rest to `emit` in
/// order: the writer seeks back only into the entry it is writing (to complete its local header), and flushes once
/// that is done (`set_flush_on_finish_file`), so every byte before a flush is final. A seek before the bytes
/// handed on is an error, never a silent change of bytes already gone. Memory: the largest entry.
pub struct ForwardSink<F: FnMut(&[u8]) -> std::io::Result<()>> {
    emit: F,
    /// Bytes handed on.
    handed: u64,
    /// The bytes from `handed` on.
    buf: Vec<u8>,
    pos: u64,
}

impl<F: FnMut(&[u8]) -> std::io::Result<()>> ForwardSink<F> {
    /// A sink that hands final bytes to `emit`.
    pub fn new(emit: F) -> Self {
        Self {
            emit,
            handed: 0,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Bytes handed on so far.
    pub fn handed(&self) -> u64 {
        self.handed
    }
}

impl<F: FnMut(&[u8]) -> std::io::Result<()>> Write for ForwardSink<F> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let at = self
            .pos
            .checked_sub(self.handed)
            .ok_or_else(|| std::io::Error::other("write into bytes already handed on"))? as usize;
        let end = at + data.len();
        if end > self.buf.len() {
            self.buf.resize(end, 0);
        }
        self.buf[at..end].copy_from_slice(data);
        self.pos += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.pos != self.handed + self.buf.len() as u64 {
            return Err(std::io::Error::other("flush away from the end of the file"));
        }
        (self.emit)(&self.buf)?;
        self.handed += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl<F: FnMut(&[u8]) -> std::io::Result<()>> Seek for ForwardSink<F> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let end = self.handed + self.buf.len() as u64;
        let pos = match to {
            std::io::SeekFrom::Start(p) => Some(p),
            std::io::SeekFrom::End(d) => end.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match pos {
            Some(p) if p >= self.handed && p <= end => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(std::io::Error::other(format!(
                "seek to {pos:?}, outside the bytes not yet handed on ({}..={end})",
                self.handed
            ))),
        }
    }
}

/// Never read: the zip writer's flush-after-each-entry switch is offered only for readable writers (it shares an
/// impl with appending to an archive), and writing never reads.
impl<F: FnMut(&[u8]) -> std::io::Result<()>> Read for ForwardSink<F> {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("a forward sink is not read"))
    }
}
