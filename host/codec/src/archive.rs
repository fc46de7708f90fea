//! The torch zip container: one root folder holding `data.pkl`, `data/<key>` storage records, `version` and more.
//! Stored entries are borrowed from the input without copying; DEFLATE entries are inflated under a size limit.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read};

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

impl<'a> Archive<'a> {
    /// Parses the zip container of `bytes` under `limits`.
    pub fn read(bytes: &'a [u8], limits: &Limits) -> Result<Self, CodecError> {
        Limits::check("archive size", bytes.len() as u64, limits.max_archive_bytes)?;
        let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(zip_err)?;
        Limits::check("zip entry count", zip.len() as u64, limits.max_entries as u64)?;
        // Find the root: the folder of the one `<root>/data.pkl`.
        let mut root = None;
        for name in zip.file_names() {
            let name = name.map_err(zip_err)?;
            if let Some(r) = name
                .strip_suffix("/data.pkl")
                .filter(|r| !r.contains('/') && !r.is_empty())
                && root.replace(r.to_string()).is_some()
            {
                return Err(CodecError::Zip("more than one <root>/data.pkl record".into()));
            }
        }
        let root = root.ok_or(CodecError::NoPickle)?;
        let (mut pickle, mut storages, mut inflated) = (None, HashMap::new(), 0u64);
        for i in 0..zip.len() {
            let entry = zip.by_index_raw(i).map_err(zip_err)?;
            let name = entry.name().map_err(zip_err)?.into_owned();
            let Some(rel) = name.strip_prefix(&root).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            let key = if rel == "data.pkl" {
                None
            } else if let Some(key) = rel.strip_prefix("data/").filter(|k| !k.is_empty() && !k.contains('/')) {
                Some(key.to_string())
            } else {
                continue;
            };
            let record = |reason: String| CodecError::Record {
                name: name.clone(),
                reason,
            };
            if entry.encrypted() {
                return Err(record("encrypted entries are not supported".into()));
            }
            let size = entry.size();
            if key.is_none() {
                Limits::check("data.pkl size", size, limits.max_pickle_bytes)?;
            }
            let data: Cow<'a, [u8]> = match entry.compression() {
                CompressionMethod::Stored => {
                    let start = entry.data_start().ok_or_else(|| record("no data offset".into()))?;
                    if entry.compressed_size() != size {
                        return Err(record("stored entry with differing compressed size".into()));
                    }
                    let span = usize::try_from(start)
                        .ok()
                        .zip(usize::try_from(size).ok())
                        .and_then(|(s, n)| Some(s..s.checked_add(n)?))
                        .filter(|span| span.end <= bytes.len())
                        .ok_or_else(|| record(format!("{size} bytes at offset {start} lie outside the archive")))?;
                    Cow::Borrowed(&bytes[span])
                }
                CompressionMethod::Deflated => {
                    drop(entry);
                    inflated += size;
                    Limits::check("inflated size", inflated, limits.max_inflated_bytes)?;
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
                None => pickle = Some(data),
                Some(k) => {
                    if storages.insert(k, data).is_some() {
                        return Err(record("duplicate record".into()));
                    }
                }
            }
        }
        let pickle = pickle.ok_or(CodecError::NoPickle)?;
        Ok(Self { root, pickle, storages })
    }
}
