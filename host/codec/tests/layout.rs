//! The aggregate's layout known before its bits, its parts shared among shards, and the file assembled from the
//! shards' parts: byte-identical to the file written whole, offsets checked against the zip crate's reading.

use std::io::Cursor;
use std::ops::Range;

use aggregator_codec::layout::{AggregateLayout, MIN_PART, PartPlan, patch_directory_crcs};
use aggregator_codec::write::ForwardSink;
use aggregator_codec::{AggregateHeader, AggregateWriter};
use aggregator_model::ModelSpec;

fn header(skipped: usize) -> AggregateHeader {
    AggregateHeader {
        timestamp: "2026-12-04 07:10:00.123456+00:00".into(),
        window: 4242,
        version: "0.2.73".into(),
        skipped_uids: (0..skipped as i64).collect(),
        success_rate: 0.75,
        global_step: 0,
    }
}

fn params(model: &ModelSpec) -> Vec<(String, usize)> {
    model
        .params
        .iter()
        .map(|p| (p.name.clone(), p.layout.packed_len()))
        .collect()
}

/// Deterministic pseudo-random bits per parameter (xorshift).
fn bits(params: &[(String, usize)], seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    params
        .iter()
        .map(|(_, len)| {
            (0..*len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

fn write_whole(params: &[(String, usize)], header: &AggregateHeader, bits: &[Vec<u8>]) -> Vec<u8> {
    let mut w = AggregateWriter::begin(Cursor::new(Vec::new()), params.to_vec(), header).unwrap();
    for b in bits {
        w.param(b).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// The planned offsets are where the zip crate finds every entry of the real file, for small and large metadata.
#[test]
fn planned_offsets_are_the_written_files() {
    let model = ModelSpec::preset("tiny").unwrap();
    let params = params(&model);
    for skipped in [0, 3, 200] {
        let header = header(skipped);
        let layout = AggregateLayout::plan(&params, &header).unwrap();
        let file = write_whole(&params, &header, &bits(&params, 7 + skipped as u64));
        assert_eq!(layout.len(), file.len() as u64);
        let mut zip = zip::ZipArchive::new(Cursor::new(&file[..])).unwrap();
        assert_eq!(zip.len(), params.len() + 3);
        let names: Vec<String> = (0..zip.len())
            .map(|i| zip.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        assert!(
            names[0].ends_with("data.pkl") && names[1].ends_with("byteorder"),
            "{names:?}"
        );
        assert!(names[params.len() + 2].ends_with("version"));
        let entry = |zip: &mut zip::ZipArchive<Cursor<&[u8]>>, i: usize| {
            let f = zip.by_index(i).unwrap();
            (f.header_start(), f.data_start().unwrap(), f.size())
        };
        assert_eq!(layout.head.start, 0);
        let (byteorder_at, byteorder_data, byteorder_len) = entry(&mut zip, 1);
        assert!(byteorder_at < layout.head.end && byteorder_data + byteorder_len == layout.head.end);
        for (i, span) in layout.params.iter().enumerate() {
            let (at, data, len) = entry(&mut zip, i + 2);
            assert_eq!(span.start, at, "{}", params[i].0);
            assert_eq!(span.end, data + len, "{}", params[i].0);
            assert_eq!(len, params[i].1 as u64);
        }
        let (at, data, len) = entry(&mut zip, params.len() + 2);
        assert_eq!((layout.version.start, layout.version.end), (at, data + len));
        assert_eq!(&file[layout.directory.start as usize..][..4], b"PK\x01\x02");
    }
    // More skipped uids make a longer data.pkl, and every later offset moves by as much.
    let a = AggregateLayout::plan(&params, &header(0)).unwrap();
    let b = AggregateLayout::plan(&params, &header(200)).unwrap();
    assert!(b.head.end > a.head.end);
}

/// Each shard writes only its parts, with real bits for the parameters it computes and zeros for the others; the
/// coordinating shard patches the others' CRCs into its directory. The parts put together are the whole file.
#[test]
fn shards_parts_assemble_the_whole_file() {
    let model = ModelSpec::preset("templar-1b").unwrap();
    let params = params(&model);
    let header = header(2);
    let bits = bits(&params, 2073);
    let whole = write_whole(&params, &header, &bits);
    let layout = AggregateLayout::plan(&params, &header).unwrap();
    assert_eq!(layout.len(), whole.len() as u64);
    let crcs: Vec<u32> = {
        let mut zip = zip::ZipArchive::new(Cursor::new(&whole[..])).unwrap();
        (0..params.len())
            .map(|i| zip.by_index(i + 2).unwrap().crc32())
            .collect()
    };

    for (shards, part_size) in [(4, 16 << 20), (3, 5 << 20), (1, 64 << 20), (7, 1)] {
        let plan = PartPlan::new(&layout, part_size, shards);
        check_plan(&layout, &plan, shards);
        let mut file = vec![0u8; whole.len()];
        let tail = plan.tail();
        let mut tail_bytes = Vec::new();
        for s in 0..shards {
            let mut mine: Vec<usize> = plan.params_of(&layout, s).collect();
            if s == 0 {
                // The coordinator writes the tail too, computing the parameters that overlap it.
                mine.extend(plan.tail_params(&layout));
            }
            let bytes = plan.bytes_of(s);
            let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut at = 0u64;
            // The writer over a forward sink that keeps only this shard's bytes (and, for shard 0, the tail).
            let keep = |r: &Range<u64>, from: u64, data: &[u8]| -> Option<(u64, Vec<u8>)> {
                let (lo, hi) = (r.start.max(from), r.end.min(from + data.len() as u64));
                (lo < hi).then(|| (lo, data[(lo - from) as usize..(hi - from) as usize].to_vec()))
            };
            let sink = ForwardSink::new(|data: &[u8]| {
                out.extend(keep(&bytes, at, data));
                if s == 0 {
                    out.extend(keep(&tail, at, data));
                }
                at += data.len() as u64;
                Ok(())
            });
            let mut w = AggregateWriter::begin(sink, params.clone(), &header).unwrap();
            for (pi, b) in bits.iter().enumerate() {
                if mine.contains(&pi) {
                    w.param(b).unwrap();
                } else {
                    w.param(&vec![0u8; b.len()]).unwrap();
                }
            }
            w.finish().unwrap();
            for (lo, data) in out {
                if tail.contains(&lo) {
                    tail_bytes.extend_from_slice(&data);
                } else {
                    file[lo as usize..][..data.len()].copy_from_slice(&data);
                }
            }
        }
        // With other shards, shard 0's directory has zero-bit CRCs for the parameters it did not compute.
        let dir_at = (layout.directory.start - tail.start) as usize;
        let complete = tail_bytes[dir_at..] == whole[layout.directory.start as usize..];
        assert_eq!(complete, shards == 1, "{shards} shards");
        patch_directory_crcs(&mut tail_bytes[dir_at..], &crcs).unwrap();
        file[tail.start as usize..].copy_from_slice(&tail_bytes);
        assert!(
            file == whole,
            "{shards} shards, parts of {part_size}: the assembled file differs"
        );
    }
}

fn check_plan(layout: &AggregateLayout, plan: &PartPlan, shards: usize) {
    let n = plan.parts.len();
    assert_eq!(plan.parts[0].start, 0);
    assert_eq!(plan.tail(), plan.parts[n - 1]);
    assert_eq!(plan.tail().end, layout.len());
    assert!(
        plan.tail().start <= layout.directory.start,
        "the tail holds the directory"
    );
    for w in plan.parts.windows(2) {
        assert_eq!(w[0].end, w[1].start);
    }
    // Equal parts (R2), at least MIN_PART (S3), but the last.
    let size = plan.parts[0].end - plan.parts[0].start;
    for p in &plan.parts[..n - 1] {
        assert_eq!(p.end - p.start, size, "{p:?}");
        assert!(size >= MIN_PART);
    }
    assert_eq!(plan.shards.len(), shards);
    let mut next = 0;
    for s in &plan.shards {
        assert_eq!(s.start, next);
        next = s.end;
    }
    assert_eq!(next, n - 1, "every part but the tail belongs to a shard");
    // Every parameter is computed by some shard; a parameter is computed by a shard exactly when its entry
    // overlaps that shard's bytes, or the tail for the coordinator.
    for (pi, span) in layout.params.iter().enumerate() {
        let overlaps = |b: Range<u64>| span.start < b.end && b.start < span.end;
        let mut computed = plan.tail_params(layout).contains(&pi);
        assert_eq!(computed, overlaps(plan.tail()), "parameter {pi}, tail");
        for s in 0..shards {
            let mine = plan.params_of(layout, s).contains(&pi);
            assert_eq!(mine, overlaps(plan.bytes_of(s)), "parameter {pi}, shard {s}");
            computed |= mine;
        }
        assert!(computed, "parameter {pi} computed by no shard");
    }
}

/// Past 4 GiB (the 70 B aggregate is 8.8 GB): every entry has zip64 fields and the later ones lie beyond 32-bit
/// offsets. The planned layout is still the written file's, and four shards' parts (the coordinator's tail with its
/// directory's CRCs patched) are the file written whole. The 4.5 GB file is never held: each part is compared by
/// its length and CRC-32, the tail byte for byte.
#[test]
fn past_4_gib_the_shards_parts_are_the_whole_file() {
    const PARAMS: usize = 36;
    const LEN: usize = 128 << 20;
    const PART: u64 = 64 << 20;
    let params: Vec<(String, usize)> = (0..PARAMS).map(|i| (format!("model.layers.{i}.weight"), LEN)).collect();
    let header = header(1);
    // Each parameter's bits: one random block, with the parameter's index written over its first bytes and at
    // every MiB (so that two parameters' entries swapped could not go unseen).
    let base = bits(&[(String::new(), LEN)], 70).pop().unwrap();
    let of = |pi: usize| {
        let mut b = base.clone();
        for at in (0..LEN).step_by(1 << 20) {
            b[at..at + 8].copy_from_slice(&(pi as u64).to_le_bytes());
        }
        b
    };
    let crcs: Vec<u32> = (0..PARAMS).map(|pi| crc32fast::hash(&of(pi))).collect();
    let layout = AggregateLayout::plan(&params, &header).unwrap();
    assert!(layout.len() > 1 << 32, "{} bytes", layout.len());
    assert!(layout.params[PARAMS - 1].start > u32::MAX as u64);
    let plan = PartPlan::new(&layout, PART, 4);
    check_plan(&layout, &plan, 4);

    // Streams one writer's output: a CRC-32 and length per part in `keep`, the tail's bytes whole, and what lies at
    // each planned entry start.
    struct Parts {
        crc: Vec<crc32fast::Hasher>,
        len: Vec<u64>,
        tail: Vec<u8>,
        at_entries: Vec<[u8; 4]>,
        total: u64,
    }
    let stream = |keep: Range<usize>, tail: bool, computed: &dyn Fn(usize) -> bool| -> Parts {
        let n = plan.parts.len();
        let mut out = Parts {
            crc: vec![crc32fast::Hasher::new(); n],
            len: vec![0; n],
            tail: Vec::new(),
            at_entries: vec![[0; 4]; PARAMS],
            total: 0,
        };
        let mut at = 0u64;
        let sink = ForwardSink::new(|data: &[u8]| {
            let end = at + data.len() as u64;
            for p in keep.clone().chain(tail.then_some(n - 1)) {
                let r = &plan.parts[p];
                let (lo, hi) = (r.start.max(at), r.end.min(end));
                if lo < hi {
                    let bytes = &data[(lo - at) as usize..(hi - at) as usize];
                    out.crc[p].update(bytes);
                    out.len[p] += bytes.len() as u64;
                    if p == n - 1 {
                        out.tail.extend_from_slice(bytes);
                    }
                }
            }
            for (pi, span) in layout.params.iter().enumerate() {
                if (at..end).contains(&span.start) && span.start + 4 <= end {
                    let o = (span.start - at) as usize;
                    out.at_entries[pi].copy_from_slice(&data[o..o + 4]);
                }
            }
            at = end;
            Ok(())
        });
        let mut w = AggregateWriter::begin(sink, params.clone(), &header).unwrap();
        let zeros = vec![0u8; LEN];
        for pi in 0..PARAMS {
            if computed(pi) {
                w.param(&of(pi)).unwrap();
            } else {
                w.param(&zeros).unwrap();
            }
        }
        w.finish().unwrap();
        out.total = at;
        out
    };
    let n = plan.parts.len();
    let whole = stream(0..n - 1, true, &|_| true);
    assert_eq!(whole.total, layout.len());
    for (pi, sig) in whole.at_entries.iter().enumerate() {
        assert_eq!(
            sig, b"PK\x03\x04",
            "parameter {pi}'s local header is where the layout says"
        );
    }
    let dir_at = (layout.directory.start - plan.tail().start) as usize;
    assert_eq!(&whole.tail[dir_at..dir_at + 4], b"PK\x01\x02");
    // The zip64 end of central directory record and its locator follow the directory.
    let find = |sig: &[u8]| whole.tail.windows(4).rposition(|w| w == sig);
    assert!(find(b"PK\x06\x06").is_some_and(|z| z > dir_at) && find(b"PK\x06\x07").is_some());

    let mut tail = Vec::new();
    for s in 0..4 {
        let mut mine: Vec<usize> = plan.params_of(&layout, s).collect();
        if s == 0 {
            mine.extend(plan.tail_params(&layout));
        }
        let got = stream(plan.shards[s].clone(), s == 0, &|pi| mine.contains(&pi));
        assert_eq!(got.total, layout.len(), "shard {s}");
        for p in plan.shards[s].clone() {
            assert_eq!(got.len[p], whole.len[p], "shard {s}, part {p}");
            assert_eq!(
                got.crc[p].clone().finalize(),
                whole.crc[p].clone().finalize(),
                "shard {s}, part {p} differs from the file written whole"
            );
        }
        if s == 0 {
            tail = got.tail;
        }
    }
    assert_ne!(tail, whole.tail, "the coordinator's directory lacks the others' CRCs");
    patch_directory_crcs(&mut tail[dir_at..], &crcs).unwrap();
    assert!(
        tail == whole.tail,
        "the patched tail differs from the file written whole"
    );
}

/// A bad directory is refused with what is wrong, never patched blindly.
#[test]
fn patching_refuses_what_is_not_a_directory() {
    let model = ModelSpec::preset("tiny").unwrap();
    let params = params(&model);
    let header = header(0);
    let layout = AggregateLayout::plan(&params, &header).unwrap();
    let file = write_whole(&params, &header, &bits(&params, 1));
    let directory = &file[layout.directory.start as usize..];
    let crcs = vec![0u32; params.len()];
    let mut ok = directory.to_vec();
    patch_directory_crcs(&mut ok, &crcs).unwrap();
    let mut shifted = directory[1..].to_vec();
    let e = patch_directory_crcs(&mut shifted, &crcs).unwrap_err().to_string();
    assert!(e.contains("record 0") && e.contains("signature"), "{e}");
    let mut short = directory[..100].to_vec();
    let e = patch_directory_crcs(&mut short, &crcs).unwrap_err().to_string();
    assert!(e.contains("past the end"), "{e}");
}
