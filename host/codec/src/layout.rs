//! Where every entry of an aggregate file lies before any of its bits exist, the file cut into the parts of a
//! multipart upload shared by shards, and the central directory completed from CRC-32s computed elsewhere.
//!
//! An aggregate's bytes depend on its parameters' bits only inside their entries: each entry is its local header
//! (which carries the data's CRC-32) and the data, whose length is the parameter's packed length. Everything else
//! (`data.pkl` from the metadata and the layout, `byteorder`, `version`, the offsets and sizes in the central
//! directory) follows from the metadata and the lengths. So [`AggregateLayout::plan`] runs the real writer
//! ([`AggregateWriter`]) over zero bits into a sink that keeps no bytes, and reads where each entry ended; a writer
//! run with the real bits gives the same offsets (the test checks it against a real file). [`PartPlan`] then cuts
//! the file into equal upload parts and a tail, and gives each shard a contiguous run of parts and the parameters
//! whose entries overlap them (a parameter straddling two shards is computed by both, deterministically). The
//! central directory, in the tail, is the only place where every parameter's CRC appears: [`patch_directory_crcs`]
//! writes the CRCs that other shards reported into a directory that one shard wrote with zero bits for their
//! parameters.
//!
//! Hand-written (the zip crate offers no dry run and no way to give it a CRC): the sink is a counter, and the
//! patch touches one fixed field of each central-directory record, located by the records' own lengths.

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;

use crate::{AggregateHeader, AggregateWriter, CodecError};

/// The smallest part S3 accepts, except the last.
pub const MIN_PART: u64 = 5 << 20;
/// The most parts S3 accepts in one upload.
pub const MAX_PARTS: u64 = 10_000;

/// Where the entries of one aggregate file lie (byte offsets from the file's start), for given metadata and
/// parameters; [`AggregateLayout::plan`] makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateLayout {
    /// `data.pkl` and `byteorder`: they depend on the metadata and the layout only.
    pub head: Range<u64>,
    /// Each parameter's entry (local header with its CRC, alignment, data), in the order given to `plan`.
    pub params: Vec<Range<u64>>,
    /// The `version` entry (fixed bytes).
    pub version: Range<u64>,
    /// The central directory and its end records: every entry's CRC, so it is written last.
    pub directory: Range<u64>,
}

impl AggregateLayout {
    /// The layout of the file [`AggregateWriter`] writes for `params` (`(name, packed length)`, in order) and
    /// `header`. Runs the writer over zero bits into a counting sink: time linear in the file's size (CRC-32 of
    /// zeros), memory one zeroed buffer of the largest parameter, never touched.
    pub fn plan(params: &[(String, usize)], header: &AggregateHeader) -> Result<Self, CodecError> {
        let zeros = vec![0u8; params.iter().map(|(_, l)| *l).max().unwrap_or(0)];
        let mut w = AggregateWriter::begin(Counter::default(), params.to_vec(), header)?;
        for (_, len) in params {
            w.param(&zeros[..*len])?;
        }
        let c = w.finish()?;
        // One flush per finished entry (`data.pkl`, `byteorder`, each parameter, `version`), then one for the
        // directory: the writer's `set_flush_on_finish_file`, which the forward sink relies on as well.
        let ends = c.flushes;
        let n = params.len();
        if ends.len() != n + 4 || ends.last() != Some(&c.len) {
            return Err(CodecError::Zip(format!(
                "the writer flushed {} times for {n} parameters (expected {}): the layout cannot be read off it",
                ends.len(),
                n + 4
            )));
        }
        let span = |i: usize| if i == 0 { 0..ends[0] } else { ends[i - 1]..ends[i] };
        Ok(Self {
            head: 0..ends[1],
            params: (0..n).map(|i| span(i + 2)).collect(),
            version: span(n + 2),
            directory: span(n + 3),
        })
    }

    /// The file's size.
    pub fn len(&self) -> u64 {
        self.directory.end
    }

    /// Never: a file has at least its head and directory.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A `Write + Seek` that keeps no bytes: its position, length and the length at each flush.
#[derive(Default)]
struct Counter {
    pos: u64,
    len: u64,
    flushes: Vec<u64>,
}

impl Write for Counter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.pos += data.len() as u64;
        self.len = self.len.max(self.pos);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.flushes.last() != Some(&self.len) {
            self.flushes.push(self.len);
        }
        Ok(())
    }
}

impl Seek for Counter {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

/// Never read (see [`crate::write::ForwardSink`]'s `Read`).
impl Read for Counter {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("a counting sink is not read"))
    }
}

/// An aggregate file cut into the parts of one multipart upload, and the parts shared among shards.
///
/// Every part but the last has the same size (R2 refuses unequal parts; S3 wants at least [`MIN_PART`]); the last
/// part runs from the last whole part's end to the end of the file, so it holds the central directory (every
/// parameter's CRC-32): the coordinating shard writes it once every shard has reported its CRCs, computing the few
/// parameters whose entries overlap it itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartPlan {
    /// Part `i` (S3's part number `i + 1`), in file order; the last is the tail.
    pub parts: Vec<Range<u64>>,
    /// The parts each shard uploads (indexes into `parts`), contiguous and in shard order; the tail (the last
    /// part) is in none of them.
    pub shards: Vec<Range<usize>>,
}

impl PartPlan {
    /// Cuts `layout`'s file into parts of `part_size` bytes (raised to [`MIN_PART`], and so that there are at most
    /// [`MAX_PARTS`]) and a tail, the parts before the tail shared as evenly as whole parts allow among `shards`
    /// (at least one).
    pub fn new(layout: &AggregateLayout, part_size: u64, shards: usize) -> Self {
        let shards = shards.max(1);
        let body = layout.directory.start;
        let size = part_size.max(MIN_PART).max(body.div_ceil(MAX_PARTS - 1));
        let whole = (body / size) as usize;
        let mut parts: Vec<Range<u64>> = (0..whole as u64).map(|i| i * size..(i + 1) * size).collect();
        parts.push(whole as u64 * size..layout.len());
        let shards = (0..shards)
            .map(|s| s * whole / shards..(s + 1) * whole / shards)
            .collect();
        Self { parts, shards }
    }

    /// The tail: the last part, with the central directory.
    pub fn tail(&self) -> Range<u64> {
        self.parts.last().cloned().unwrap_or(0..0)
    }

    /// The bytes shard `s` uploads (empty when it has no part), the tail aside.
    pub fn bytes_of(&self, s: usize) -> Range<u64> {
        match self.shards.get(s) {
            Some(p) if !p.is_empty() => self.parts[p.start].start..self.parts[p.end - 1].end,
            _ => 0..0,
        }
    }

    /// The parameters (indexes into `layout.params`) whose entries overlap shard `s`'s bytes: the ones it must
    /// compute to write them (a parameter's local header carries the CRC-32 of all its data). Contiguous.
    pub fn params_of(&self, layout: &AggregateLayout, s: usize) -> Range<usize> {
        overlapping(layout, self.bytes_of(s))
    }

    /// The parameters whose entries overlap the tail: the coordinating shard computes them to write it.
    pub fn tail_params(&self, layout: &AggregateLayout) -> Range<usize> {
        overlapping(layout, self.tail())
    }
}

/// The parameters whose entries overlap `bytes`.
fn overlapping(layout: &AggregateLayout, bytes: Range<u64>) -> Range<usize> {
    if bytes.is_empty() {
        return 0..0;
    }
    let first = layout.params.partition_point(|p| p.end <= bytes.start);
    let end = layout.params.partition_point(|p| p.start < bytes.end);
    first..end.max(first)
}

/// Writes `crcs` (one per parameter, in layout order) into the CRC-32 field of the parameters' records of the
/// central directory `directory` (as [`AggregateLayout::directory`] spans it: its records are `data.pkl`,
/// `byteorder`, one per parameter, then `version`). Every record's signature and lengths are checked; nothing
/// else changes.
pub fn patch_directory_crcs(directory: &mut [u8], crcs: &[u32]) -> Result<(), CodecError> {
    const SIGNATURE: [u8; 4] = [0x50, 0x4b, 0x01, 0x02];
    let bad = |what: String| CodecError::Zip(format!("central directory: {what}"));
    let u16_at = |d: &[u8], at: usize| u16::from_le_bytes([d[at], d[at + 1]]) as usize;
    let mut at = 0;
    for record in 0..crcs.len() + 3 {
        let fixed = directory
            .get(at..at + 46)
            .ok_or_else(|| bad(format!("record {record} at {at} runs past the end")))?;
        if fixed[..4] != SIGNATURE {
            return Err(bad(format!("record {record} at {at} has no record signature")));
        }
        let next = at + 46 + u16_at(fixed, 28) + u16_at(fixed, 30) + u16_at(fixed, 32);
        if next > directory.len() {
            return Err(bad(format!("record {record} at {at} runs past the end")));
        }
        if let Some(crc) = record.checked_sub(2).and_then(|p| crcs.get(p)) {
            directory[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
        }
        at = next;
    }
    Ok(())
}
