//! The torch zip container: one root folder holding `data.pkl`, `data/<key>` storage records, `version` and more.
//! Stored entries are borrowed from the input without copying; DEFLATE entries are inflated under a size limit.
//!
//! Hygiene at least as strict as torch's reader (`caffe2/serialize/inline_container.cc`), so that we never read a
//! different gradient from the one torch-based validators see:
//! * **no duplicate entry names** (a zip with two `data.pkl`: torch reads one, another reader the other);
//! * every local header consistent with its central-directory entry, no overlapping entries and no local header
//!   left out of the central directory (the zip crate's `validate_header_consistency`);
//! * **one root folder**: torch takes the folder of the first entry and looks every record up under it; here every
//!   entry must lie under it (torch ignores strays; we refuse them);
//! * the **`version` record** (`.data/version` or `version`) holds a decimal number torch 2.6 accepts (1 to 10), and
//!   a `byteorder` record, if present, says `little` (torch would byte-swap a `big` archive; we do not read those).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read, Seek};

use zip::{CompressionMethod, ZipArchive};

use crate::{CodecError, Limits};

/// The records of a torch archive that the reader needs.
pub struct Archive<'a> {
    /// Name of the root folder (`archive`, `temp_gradient-…`, …).
    pub root: String,
    /// The pickle program.
    pub pickle: Cow<'a, [u8]>,
    /// Storage records by key (`data/<key>`).
    pub storages: HashMap<String, Cow<'a, [u8]>>,
}

fn zip_err(e: zip::result::ZipError) -> CodecError {
    CodecError::Zip(e.to_string())
}

/// Lowest and highest archive format versions torch 2.6 reads (`kMinSupportedFileFormatVersion`,
/// `kMaxSupportedFileFormatVersion` in `caffe2/serialize/versions.h`).
pub const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u64> = 1..=10;

/// The format version in a `version` record: ASCII digits, optionally surrounded by ASCII whitespace (torch writes
/// `3\n`). Torch's `stoull` also takes a sign and ignores trailing garbage; we do not.
fn parse_version(record: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(record).ok()?.trim_ascii();
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl<'a> Archive<'a> {
    /// Parses the zip container of `bytes` under `limits`.
    pub fn read(bytes: &'a [u8], limits: &Limits) -> Result<Self, CodecError> {
        Limits::check("archive size", bytes.len() as u64, limits.max_archive_bytes)?;
        let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(zip_err)?;
        let root = check_directory(&zip, limits)?;
        zip.validate_header_consistency().map_err(zip_err)?;
        let mut records = Records::new(root);
        let slice = |start: u64, size: u64| -> Option<Cow<'a, [u8]>> {
            let span = usize::try_from(start)
                .ok()
                .zip(usize::try_from(size).ok())
                .and_then(|(s, n)| Some(s..s.checked_add(n)?))
                .filter(|span| span.end <= bytes.len())?;
            Some(Cow::Borrowed(&bytes[span]))
        };
        for i in 0..zip.len() {
            records.load(&mut zip, i, limits, &slice)?;
        }
        records.finish()
    }
}

/// The checks on a central directory that need no entry's data: no duplicate names, at most `max_entries` entries,
/// every entry under one root folder (torch's: the first entry's). Returns the root folder's name.
pub(crate) fn check_directory<R: Read + Seek>(zip: &ZipArchive<R>, limits: &Limits) -> Result<String, CodecError> {
    // The crate keys entries by name, so a duplicate would silently hide one: ask it first.
    if zip.has_duplicate_names() {
        return Err(CodecError::Zip("two entries have the same name".into()));
    }
    Limits::check("zip entry count", zip.len() as u64, limits.max_entries as u64)?;
    // The root: the folder of the first entry, as torch takes it; every entry must lie under it.
    let first = zip.name_for_index(0).ok_or(CodecError::NoPickle)?.map_err(zip_err)?;
    let root = match first.split_once('/') {
        Some((r, _)) if !r.is_empty() => r.to_string(),
        _ => {
            return Err(CodecError::Zip(format!(
                "the first entry {first:?} is not in a folder (torch archives have one root folder)"
            )));
        }
    };
    let prefix = format!("{root}/");
    for name in zip.file_names() {
        let name = name.map_err(zip_err)?;
        if !name.starts_with(&prefix) {
            return Err(CodecError::Zip(format!(
                "entry {name:?} is outside the root folder {root:?}"
            )));
        }
    }
    Ok(root)
}

/// What an entry name (under the root folder) is to the reader, if anything.
pub(crate) fn classify(root: &str, name: &str) -> Option<Record> {
    let rel = name.strip_prefix(root)?.strip_prefix('/')?;
    Some(if rel == "data.pkl" {
        Record::Pickle
    } else if let Some(key) = rel.strip_prefix("data/").filter(|k| !k.is_empty() && !k.contains('/')) {
        Record::Storage(key.to_string())
    } else if rel == ".data/version" || rel == "version" {
        Record::Version(rel == ".data/version")
    } else if rel == "byteorder" {
        Record::ByteOrder
    } else {
        return None;
    })
}

/// The records of an archive as they are loaded, entry by entry, with the checks on each; [`Records::finish`] checks
/// what must be there.
pub(crate) struct Records<'a> {
    root: String,
    pickle: Option<Cow<'a, [u8]>>,
    pub(crate) storages: HashMap<String, Cow<'a, [u8]>>,
    version: Option<(u64, String)>,
    inflated: u64,
}

impl<'a> Records<'a> {
    pub(crate) fn new(root: String) -> Self {
        Self {
            root,
            pickle: None,
            storages: HashMap::new(),
            version: None,
            inflated: 0,
        }
    }

    /// Loads entry `i` of `zip` if the reader needs it: a stored entry's bytes come from `slice(data_start, size)`
    /// (none when they lie outside what the caller has), a DEFLATE entry is inflated under the limits.
    pub(crate) fn load<R: Read + Seek>(
        &mut self,
        zip: &mut ZipArchive<R>,
        i: usize,
        limits: &Limits,
        slice: &dyn Fn(u64, u64) -> Option<Cow<'a, [u8]>>,
    ) -> Result<(), CodecError> {
        let entry = zip.by_index_raw(i).map_err(zip_err)?;
        let name = entry.name().map_err(zip_err)?.into_owned();
        let Some(key) = classify(&self.root, &name) else {
            return Ok(());
        };
        let record = |reason: String| CodecError::Record {
            name: name.clone(),
            reason,
        };
        if entry.encrypted() {
            return Err(record("encrypted entries are not supported".into()));
        }
        let size = entry.size();
        match key {
            Record::Pickle => Limits::check("data.pkl size", size, limits.max_pickle_bytes)?,
            Record::Version(_) | Record::ByteOrder if size > 64 => {
                return Err(record(format!("{size} bytes is too long for this record")));
            }
            _ => {}
        }
        let data: Cow<'a, [u8]> = match entry.compression() {
            CompressionMethod::Stored => {
                let start = entry.data_start().ok_or_else(|| record("no data offset".into()))?;
                if entry.compressed_size() != size {
                    return Err(record("stored entry with differing compressed size".into()));
                }
                slice(start, size)
                    .ok_or_else(|| record(format!("{size} bytes at offset {start} lie outside the archive")))?
            }
            CompressionMethod::Deflated => {
                drop(entry);
                self.inflated += size;
                Limits::check("inflated size", self.inflated, limits.max_inflated_bytes)?;
                let mut out = Vec::with_capacity(size as usize);
                let entry = zip.by_index(i).map_err(zip_err)?;
                // The declared size may lie: read at most one byte past it, then compare.
                entry
                    .take(size + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| record(e.to_string()))?;
                if out.len() as u64 != size {
                    return Err(record(format!("inflates to {} bytes, declared {size}", out.len())));
                }
                Cow::Owned(out)
            }
            other => return Err(record(format!("compression method {other:?} is not supported"))),
        };
        match key {
            Record::Pickle => self.pickle = Some(data),
            Record::Storage(k) => {
                if self.storages.insert(k, data).is_some() {
                    return Err(record("duplicate record".into()));
                }
            }
            Record::Version(preferred) => {
                let v = parse_version(&data).ok_or_else(|| {
                    record(format!(
                        "{:?} is not a format version number",
                        String::from_utf8_lossy(&data)
                    ))
                })?;
                // torch reads `.data/version` when both exist.
                if preferred || self.version.is_none() {
                    self.version = Some((v, name.clone()));
                }
            }
            Record::ByteOrder => {
                if &*data != b"little" {
                    return Err(record(format!(
                        "byte order {:?}: only little-endian archives are read",
                        String::from_utf8_lossy(&data)
                    )));
                }
            }
        }
        Ok(())
    }

    /// The archive, once `data.pkl` and a supported format version have been loaded.
    pub(crate) fn finish(self) -> Result<Archive<'a>, CodecError> {
        let pickle = self.pickle.ok_or(CodecError::NoPickle)?;
        let root = self.root;
        let (version, name) = self.version.ok_or_else(|| CodecError::Record {
            name: format!("{root}/version"),
            reason: "missing (torch refuses an archive without a format version)".into(),
        })?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(CodecError::Record {
                name,
                reason: format!(
                    "format version {version} is outside the {}..={} torch reads",
                    SUPPORTED_VERSIONS.start(),
                    SUPPORTED_VERSIONS.end()
                ),
            });
        }
        Ok(Archive {
            root,
            pickle,
            storages: self.storages,
        })
    }
}

/// The records the reader looks at.
pub(crate) enum Record {
    Pickle,
    Storage(String),
    /// `true` for `.data/version`, which torch prefers over `version`.
    Version(bool),
    ByteOrder,
}
