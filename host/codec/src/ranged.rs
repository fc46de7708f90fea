//! Reading a gradient file a few byte ranges at a time: its central directory and `data.pkl` first
//! ([`GradientIndex`]), then only the tensor records of a range of parameters ([`GradientIndex::decode`]), so that a
//! reader holds one parameter group of a peer's file at a time, or one shard's share of it.
//!
//! Why not the whole-file reader over fetched pieces: the zip crate's archive-wide header check reads every local
//! header, which lie all over the file. Instead, each entry's **span** (its local header up to the next entry's,
//! or up to the central directory) is checked when it is fetched: the local header against the central directory
//! (name, method, flags, CRC, sizes), the data inside the span, and no unlisted local header in the rest of the span
//! (the crate's gap scan). Every entry is in exactly one span and every span is checked by whoever reads the entry;
//! a reader of every parameter group (one node with a memory budget, or the union of the shards) has then checked
//! the whole file. [`crate::Gradient::read`] is this reader over a file held whole, so a file is judged by one code
//! path however it is read. The checks mirror the zip crate's archive-wide header check: this crate's tests change
//! each byte of a real file's structure and find nothing that check refuses and these accept. The object graph is
//! judged by the code the whole-file reader used (`Located::find`), and each parameter by the same kernel checks.
//!
//! The caller fetches; this module only says which ranges ([`PtIndex::tail_range`], [`PtIndex::meta_spans`],
//! [`GradientIndex::spans`]) and judges the bytes. The ranges must come from one version of the object (the store
//! pins every read to the `ETag` seen first).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

use aggregator_model::ModelSpec;
use zip::{CompressionMethod, ZipArchive};

use crate::archive::{Record, Records, check_directory, classify};
use crate::payload::Located;
use crate::read::{PtFile, materialise};
use crate::{CodecError, GradientMetadata, Limits, SparseParam};

/// Bytes of a file's end read first: the end-of-central-directory search covers the last 64 KiB + 22 bytes, and a
/// gradient's directory is about 150 bytes per tensor (about 90 KiB for the 1.2 B model's 584 entries).
pub const TAIL_BYTES: u64 = 256 << 10;

/// Largest central directory read (a second, exact read when the tail did not hold it all).
pub const MAX_DIRECTORY_BYTES: u64 = 16 << 20;

/// Fetched byte ranges of a file of `len` bytes, read as if it were the whole file; reading a byte that was not
/// fetched fails with [`Miss`].
struct SparseFile<'a> {
    len: u64,
    /// `(offset, bytes)`, sorted by offset.
    chunks: Vec<(u64, &'a [u8])>,
    pos: u64,
}

/// A read of bytes that were not fetched, at this offset.
#[derive(Debug)]
struct Miss(u64);

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "byte {} was not fetched", self.0)
    }
}
impl std::error::Error for Miss {}

impl<'a> SparseFile<'a> {
    fn new(len: u64, mut chunks: Vec<(u64, &'a [u8])>) -> Self {
        chunks.sort_by_key(|c| c.0);
        Self { len, chunks, pos: 0 }
    }

    /// The fetched bytes `[start, start + n)`, when one chunk holds them all.
    fn slice(&self, start: u64, n: u64) -> Option<&'a [u8]> {
        let end = start.checked_add(n)?;
        if end > self.len {
            return None;
        }
        let i = self.chunks.partition_point(|c| c.0 <= start).checked_sub(1)?;
        let (off, bytes) = self.chunks[i];
        let (s, e) = (usize::try_from(start - off).ok()?, usize::try_from(end - off).ok()?);
        bytes.get(s..e)
    }
}

impl Read for SparseFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let i = self.chunks.partition_point(|c| c.0 <= self.pos);
        let chunk = i
            .checked_sub(1)
            .map(|i| self.chunks[i])
            .filter(|(off, b)| self.pos < off + b.len() as u64);
        let Some((off, bytes)) = chunk else {
            return Err(io::Error::other(Miss(self.pos)));
        };
        let from = &bytes[(self.pos - off) as usize..];
        let n = from.len().min(buf.len()).min((self.len - self.pos) as usize);
        buf[..n].copy_from_slice(&from[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SparseFile<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// The offset of the first byte a zip error needed and the caller had not fetched, if that is what it was.
fn missed(e: &zip::result::ZipError) -> Option<u64> {
    match e {
        zip::result::ZipError::Io(io) => io.get_ref()?.downcast_ref::<Miss>().map(|m| m.0),
        _ => None,
    }
}

fn zip_err(e: zip::result::ZipError) -> CodecError {
    CodecError::Zip(e.to_string())
}

/// What the first read of a file's end found.
#[derive(Debug)]
pub enum TailRead {
    /// The central directory was read.
    Index(Box<PtIndex>),
    /// The directory starts before the tail: read `[from, len)` and call [`PtIndex::read`] again with it.
    NeedFrom(u64),
}

/// One zip entry as the central directory describes it, with its span.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    header_start: u64,
    /// The next entry's local header, or the central directory.
    span_end: u64,
    storage: Option<String>,
    /// Whether the index reads it (everything but storage records).
    meta: bool,
}

/// A `.pt` file's central directory: each entry's span, and which of them the index reads.
#[derive(Debug, Clone)]
pub struct PtIndex {
    len: u64,
    /// The fetched end of the file, from `tail_start`.
    tail: Vec<u8>,
    tail_start: u64,
    entries: Vec<Entry>,
    /// The root folder.
    root: String,
    /// Bytes before the first local header (a prepended blob), checked like a gap.
    prefix: u64,
    limits: Limits,
}

impl PtIndex {
    /// The range to read first from a file of `len` bytes: its last [`TAIL_BYTES`].
    pub fn tail_range(len: u64) -> Range<u64> {
        Self::tail_range_of(len, TAIL_BYTES)
    }

    /// The last `tail` bytes of a file of `len` bytes (a smaller tail costs a second read when the central directory
    /// does not fit in it; tests use one to exercise that read).
    pub fn tail_range_of(len: u64, tail: u64) -> Range<u64> {
        len.saturating_sub(tail)..len
    }

    /// Reads the central directory from `tail`, the bytes of a `len`-byte file from `tail_start` to its end.
    pub fn read(len: u64, tail_start: u64, tail: Vec<u8>, limits: &Limits) -> Result<TailRead, CodecError> {
        Limits::check("archive size", len, limits.max_archive_bytes)?;
        if tail_start + tail.len() as u64 != len {
            return Err(CodecError::Zip(format!(
                "{} bytes from {tail_start} are not the end of a {len}-byte file",
                tail.len()
            )));
        }
        let sparse = SparseFile::new(len, vec![(tail_start, &tail)]);
        let zip = match ZipArchive::new(sparse) {
            Ok(z) => z,
            Err(e) => {
                return match missed(&e) {
                    Some(at) if at < tail_start && len - at <= MAX_DIRECTORY_BYTES => Ok(TailRead::NeedFrom(at)),
                    Some(at) if at < tail_start => Err(CodecError::Limit {
                        what: "central directory size",
                        actual: len - at,
                        limit: MAX_DIRECTORY_BYTES,
                    }),
                    _ => Err(zip_err(e)),
                };
            }
        };
        let root = check_directory(&zip, limits)?;
        let dir_start = zip.central_directory_start();
        let mut entries = Vec::with_capacity(zip.len());
        for i in 0..zip.len() {
            let e = zip.by_index_data(i).map_err(zip_err)?;
            let name = e.name().map_err(zip_err)?.into_owned();
            let record = classify(&root, &name);
            entries.push(Entry {
                storage: match &record {
                    Some(Record::Storage(k)) => Some(k.clone()),
                    _ => None,
                },
                meta: !matches!(record, Some(Record::Storage(_))),
                header_start: e.header_start(),
                span_end: 0,
                name,
            });
        }
        // Spans: entries in file order, each up to the next; two at one offset overlap.
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by_key(|&i| entries[i].header_start);
        for (n, &i) in order.iter().enumerate() {
            let end = order.get(n + 1).map_or(dir_start, |&j| entries[j].header_start);
            if end <= entries[i].header_start {
                return Err(CodecError::Zip(format!(
                    "entry {:?} overlaps the next entry or the central directory",
                    entries[i].name
                )));
            }
            entries[i].span_end = end;
        }
        let prefix = order.first().map_or(0, |&i| entries[i].header_start);
        drop(zip);
        Ok(TailRead::Index(Box::new(Self {
            len,
            tail,
            tail_start,
            entries,
            root,
            prefix,
            limits: *limits,
        })))
    }

    /// The file's size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (never, for a file that has an index).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ranges [`GradientIndex::read`] needs: the spans of every entry that is not a storage record (`data.pkl`,
    /// `version`, `byteorder`, anything else) and any bytes before the first entry, merged where adjacent, without
    /// what the tail already holds.
    pub fn meta_spans(&self) -> Vec<Range<u64>> {
        let mut spans: Vec<Range<u64>> = self
            .entries
            .iter()
            .filter(|e| e.meta)
            .map(|e| e.header_start..e.span_end)
            .collect();
        if self.prefix > 0 {
            spans.push(0..self.prefix);
        }
        self.outside_tail(spans)
    }

    /// `spans` sorted and merged, without those inside the tail.
    fn outside_tail(&self, mut spans: Vec<Range<u64>>) -> Vec<Range<u64>> {
        spans.sort_by_key(|r| r.start);
        let mut out: Vec<Range<u64>> = Vec::new();
        for r in spans {
            // A span that ends in the tail is still read whole: a record's bytes are sliced from one piece.
            if r.start >= self.tail_start || r.is_empty() {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        out
    }

    /// The archive over the tail and `fetched`.
    fn open<'a>(&'a self, fetched: &[(u64, &'a [u8])]) -> Result<ZipArchive<SparseFile<'a>>, CodecError> {
        ZipArchive::new(chunks_of(self, fetched)).map_err(zip_err)
    }
}

/// Checks entry `i`'s span: its local header against the central directory, its data inside the span, no
/// local-header signature in the rest of the span.
fn check_span(
    pt: &PtIndex,
    chunks: &SparseFile<'_>,
    zip: &ZipArchive<SparseFile<'_>>,
    i: usize,
) -> Result<(), CodecError> {
    let e = &pt.entries[i];
    let record = |reason: String| CodecError::Record {
        name: e.name.clone(),
        reason,
    };
    let span = chunks
        .slice(e.header_start, e.span_end - e.header_start)
        .ok_or_else(|| record("its bytes were not read".into()))?;
    let cd = zip.by_index_data(i).map_err(zip_err)?;
    let u16_at = |o: usize| span.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| span.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let short = || record("local header cut short".into());
    if u32_at(0).ok_or_else(short)? != 0x0403_4b50 {
        return Err(record(
            "no local header at the offset the central directory gives".into(),
        ));
    }
    let flags = u16_at(6).ok_or_else(short)?;
    let method = u16_at(8).ok_or_else(short)?;
    let (crc, csize, usize_) = (
        u32_at(14).ok_or_else(short)?,
        u32_at(18).ok_or_else(short)?,
        u32_at(22).ok_or_else(short)?,
    );
    let (nlen, xlen) = (
        u16_at(26).ok_or_else(short)? as usize,
        u16_at(28).ok_or_else(short)? as usize,
    );
    let name = span.get(30..30 + nlen).ok_or_else(short)?;
    let extra = span.get(30 + nlen..30 + nlen + xlen).ok_or_else(short)?;
    if !extra_fields_tile(extra) {
        return Err(record("local header's extra field is malformed".into()));
    }
    let mismatch = |what: &str| record(format!("local header's {what} differs from the central directory's"));
    if name != cd.name_raw() {
        return Err(mismatch("name"));
    }
    let cd_method = match cd.compression() {
        CompressionMethod::Stored => 0,
        CompressionMethod::Deflated => 8,
        other => return Err(record(format!("compression method {other:?} is not supported"))),
    };
    if method != cd_method {
        return Err(mismatch("compression method"));
    }
    if flags & 0x0001 != 0 || cd.encrypted() {
        return Err(record("encrypted entries are not supported".into()));
    }
    // A trailing data descriptor (torch's writer uses one): the local CRC and sizes may then be 0 (the values follow
    // the data), as the zip crate allows; any other value must match. The descriptor lies in the gap after the data.
    let descriptor = flags & 0x0008 != 0;
    if descriptor != cd.flags().is_using_data_descriptor() {
        return Err(mismatch("data-descriptor flag"));
    }
    let agrees = |local: Option<u64>, central: u64| local == Some(central) || (descriptor && local == Some(0));
    if !agrees(Some(u64::from(crc)), u64::from(cd.crc32())) {
        return Err(mismatch("CRC-32"));
    }
    // Sizes: 0xFFFFFFFF defers to the zip64 extra field (uncompressed, then compressed size).
    let zip64 = zip64_sizes(extra);
    let local_size = |v: u32, n: usize| {
        if v == u32::MAX {
            zip64.and_then(|z| z.get(n).copied().flatten())
        } else {
            Some(u64::from(v))
        }
    };
    if !agrees(local_size(usize_, 0), cd.size()) {
        return Err(mismatch("uncompressed size"));
    }
    let csize_n = if usize_ == u32::MAX { 1 } else { 0 };
    if !agrees(local_size(csize, csize_n), cd.compressed_size()) {
        return Err(mismatch("compressed size"));
    }
    let data_end = (30 + nlen + xlen) as u64 + cd.compressed_size();
    if data_end > span.len() as u64 {
        return Err(record(
            "its data runs into the next entry or the central directory".into(),
        ));
    }
    if has_local_header(&span[data_end as usize..]) {
        return Err(CodecError::Zip(format!(
            "a local header after {:?} is missing from the central directory",
            e.name
        )));
    }
    Ok(())
}

/// The sizes in a local header's zip64 extra field (`0x0001`): `[uncompressed, compressed]` as present.
fn zip64_sizes(mut extra: &[u8]) -> Option<[Option<u64>; 2]> {
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let n = u16::from_le_bytes([extra[2], extra[3]]) as usize;
        let body = extra.get(4..4 + n)?;
        if id == 0x0001 {
            let at = |o: usize| {
                body.get(o..o + 8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            };
            return Some([at(0), at(8)]);
        }
        extra = &extra[4 + n..];
    }
    None
}

/// Whether an extra field is a whole number of `(id, length, body)` records, as the zip crate requires.
fn extra_fields_tile(mut extra: &[u8]) -> bool {
    while !extra.is_empty() {
        let Some(n) = extra.get(2..4).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize) else {
            return false;
        };
        let Some(rest) = extra.get(4 + n..) else {
            return false;
        };
        extra = rest;
    }
    true
}

/// Whether a gap holds what the zip crate's scan calls an unlisted local header: the signature with its fixed
/// header, name and extra field all inside the gap.
fn has_local_header(gap: &[u8]) -> bool {
    gap.windows(4).enumerate().any(|(o, w)| {
        w == b"PK\x03\x04"
            && gap.get(o + 26..o + 30).is_some_and(|b| {
                let var = u16::from_le_bytes([b[0], b[1]]) as usize + u16::from_le_bytes([b[2], b[3]]) as usize;
                o + 30 + var <= gap.len()
            })
    })
}

/// The tail and `fetched` as one sparse file (what the archive reads, kept beside it for slicing: the crate gives
/// its reader back only by value).
fn chunks_of<'a>(pt: &'a PtIndex, fetched: &[(u64, &'a [u8])]) -> SparseFile<'a> {
    let mut chunks = vec![(pt.tail_start, pt.tail.as_slice())];
    chunks.extend_from_slice(fetched);
    SparseFile::new(pt.len, chunks)
}

/// A peer's gradient file as its index: where each parameter's tensors lie (checked against the model), the
/// metadata, and the spans to read for any range of parameters.
#[derive(Debug, Clone)]
pub struct GradientIndex {
    pt: PtIndex,
    params: Vec<Option<[crate::tensor::TensorMeta; 2]>>,
    /// Entry index of each storage record, by key.
    storages: HashMap<String, usize>,
    /// The miner's metadata.
    pub metadata: GradientMetadata,
    /// The envelope's `global_step`.
    pub global_step: i64,
}

impl GradientIndex {
    /// Judges the file's object graph from `pt` and the bytes of its [`PtIndex::meta_spans`] (`fetched`, as
    /// `(offset, bytes)`), as [`crate::Gradient::read`] does, without any tensor data.
    pub fn read(pt: PtIndex, fetched: &[(u64, &[u8])], model: &ModelSpec) -> Result<Self, CodecError> {
        let limits = pt.limits;
        let located = {
            let mut zip = pt.open(fetched)?;
            let chunks = chunks_of(&pt, fetched);
            let mut records = Records::new(pt.root.clone());
            for i in (0..pt.entries.len()).filter(|&i| pt.entries[i].meta) {
                check_span(&pt, &chunks, &zip, i)?;
                records.load(&mut zip, i, &limits, &|s, n| chunks.slice(s, n).map(Cow::Borrowed))?;
            }
            if pt.prefix > 0 {
                let head = chunks
                    .slice(0, pt.prefix)
                    .ok_or_else(|| CodecError::Zip("the bytes before the first entry were not read".into()))?;
                if has_local_header(head) {
                    return Err(CodecError::Zip(
                        "a local header before the first entry is missing from the central directory".into(),
                    ));
                }
            }
            let sizes: HashMap<String, u64> = (0..pt.entries.len())
                .filter_map(|i| Some((pt.entries[i].storage.clone()?, zip.by_index_data(i).ok()?.size())))
                .collect();
            let file = PtFile::from_archive(records.finish()?, &limits, &|k: &str| sizes.get(k).copied())?;
            let keys = pt.entries.iter().filter_map(|e| e.storage.as_deref());
            Located::find(&file, model, keys)?
        };
        let storages = (0..pt.entries.len())
            .filter_map(|i| Some((pt.entries[i].storage.clone()?, i)))
            .collect();
        Ok(Self {
            pt,
            params: located.params,
            storages,
            metadata: located.metadata,
            global_step: located.global_step,
        })
    }

    /// Whether the peer sent parameter `i`.
    pub fn has(&self, i: usize) -> bool {
        self.params.get(i).is_some_and(Option::is_some)
    }

    /// Bytes of the tensor records of `params` (what [`GradientIndex::spans`] covers, near enough: the spans add
    /// each entry's local header).
    pub fn data_bytes(&self, params: Range<usize>) -> u64 {
        self.entries_of(params)
            .map(|i| self.pt.entries[i].span_end - self.pt.entries[i].header_start)
            .sum()
    }

    fn entries_of(&self, params: Range<usize>) -> impl Iterator<Item = usize> + '_ {
        let mut seen = std::collections::BTreeSet::new();
        for metas in self.params[params].iter().flatten() {
            for m in metas {
                if let Some(&i) = self.storages.get(&m.key) {
                    seen.insert(i);
                }
            }
        }
        seen.into_iter()
    }

    /// The ranges to read for `params` (the spans of their tensors' records), sorted and merged where adjacent.
    pub fn spans(&self, params: Range<usize>) -> Vec<Range<u64>> {
        let spans = self
            .entries_of(params)
            .map(|i| self.pt.entries[i].header_start..self.pt.entries[i].span_end)
            .collect();
        self.pt.outside_tail(spans)
    }

    /// Decodes and checks `params` from the bytes of their [`GradientIndex::spans`] (`fetched`, as `(offset,
    /// bytes)`): each record's span, each tensor, and each parameter's kernel checks, as [`crate::Gradient::read`].
    /// Returns one entry per parameter of the range (`None`: the peer omitted it).
    pub fn decode(
        &self,
        params: Range<usize>,
        fetched: &[(u64, &[u8])],
        model: &ModelSpec,
    ) -> Result<Vec<Option<SparseParam>>, CodecError> {
        let pt = &self.pt;
        let mut zip = pt.open(fetched)?;
        let chunks = chunks_of(pt, fetched);
        let mut records = Records::new(pt.root.clone());
        for i in self.entries_of(params.clone()) {
            check_span(pt, &chunks, &zip, i)?;
            records.load(&mut zip, i, &pt.limits, &|s, n| chunks.slice(s, n).map(Cow::Borrowed))?;
        }
        let mut out = Vec::with_capacity(params.len());
        for (spec, metas) in model.params[params.clone()].iter().zip(&self.params[params]) {
            out.push(match metas {
                None => None,
                Some([im, vm]) => {
                    let record = |k: &str| records.storages.get(k).map(|r| &**r);
                    let p = SparseParam {
                        idxs: materialise(im, record(&im.key), &format!("{}idxs", spec.name))?,
                        vals: materialise(vm, record(&vm.key), &format!("{}vals", spec.name))?,
                    };
                    p.check(spec)?;
                    Some(p)
                }
            });
        }
        Ok(out)
    }
}

/// [`crate::Gradient::read`]: the ranged reader over a whole file in memory (the records borrowed, the tail copied).
pub(crate) fn read_whole(bytes: &[u8], model: &ModelSpec, limits: &Limits) -> Result<crate::Gradient, CodecError> {
    let len = bytes.len() as u64;
    let tail = |from: u64| bytes[from as usize..].to_vec();
    let start = PtIndex::tail_range(len).start;
    let pt = match PtIndex::read(len, start, tail(start), limits)? {
        TailRead::Index(pt) => pt,
        TailRead::NeedFrom(from) => match PtIndex::read(len, from, tail(from), limits)? {
            TailRead::Index(pt) => pt,
            TailRead::NeedFrom(_) => return Err(CodecError::Zip("the central directory could not be located".into())),
        },
    };
    let slice = |r: Range<u64>| (r.start, &bytes[r.start as usize..r.end as usize]);
    let meta: Vec<_> = pt.meta_spans().into_iter().map(slice).collect();
    let index = GradientIndex::read(*pt, &meta, model)?;
    let all = 0..model.params.len();
    let data: Vec<_> = index.spans(all.clone()).into_iter().map(slice).collect();
    let params = index.decode(all, &data, model)?;
    Ok(crate::Gradient {
        params,
        metadata: index.metadata,
        global_step: index.global_step,
    })
}
