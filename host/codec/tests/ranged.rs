//! The ranged reader (`aggregator_codec::ranged`) judges files as the whole-file reader does and reads the same
//! values: over the reference fixtures (good, deflated, and every file in `bad/`), over every single-byte change of a
//! real gradient's structure, and for every grouping of the parameters. The "fetcher" here slices the file's bytes
//! at the ranges the index asks for, as the store does with ranged GETs.

mod common;

use std::ops::Range;

use aggregator_codec::ranged::{GradientIndex, PtIndex, TailRead};
use aggregator_codec::{CodecError, Gradient, Limits, SparseParam};
use aggregator_model::ModelSpec;

/// Ranges asked for, and bytes read, by one ranged read.
#[derive(Debug, Default)]
struct Reads {
    ranges: usize,
    bytes: u64,
}

fn fetch<'a>(bytes: &'a [u8], ranges: &[Range<u64>], reads: &mut Reads) -> Vec<(u64, &'a [u8])> {
    ranges
        .iter()
        .map(|r| {
            reads.ranges += 1;
            reads.bytes += r.end - r.start;
            (r.start, &bytes[r.start as usize..r.end as usize])
        })
        .collect()
}

/// Reads `bytes` as a ranged reader would, parameter group by parameter group (`group` parameters each).
fn read_ranged(
    bytes: &[u8],
    model: &ModelSpec,
    limits: &Limits,
    group: usize,
    reads: &mut Reads,
) -> Result<Vec<Option<SparseParam>>, CodecError> {
    let len = bytes.len() as u64;
    let tail = PtIndex::tail_range(len);
    reads.ranges += 1;
    reads.bytes += tail.end - tail.start;
    let pt = match PtIndex::read(len, tail.start, bytes[tail.start as usize..].to_vec(), limits)? {
        TailRead::Index(pt) => pt,
        TailRead::NeedFrom(from) => match PtIndex::read(len, from, bytes[from as usize..].to_vec(), limits)? {
            TailRead::Index(pt) => pt,
            TailRead::NeedFrom(_) => panic!("asked twice for more of the directory"),
        },
    };
    let meta = fetch(bytes, &pt.meta_spans(), reads);
    let index = GradientIndex::read(*pt, &meta, model)?;
    let mut params = Vec::with_capacity(model.params.len());
    let n = model.params.len();
    for start in (0..n).step_by(group.max(1)) {
        let r = start..(start + group.max(1)).min(n);
        let data = fetch(bytes, &index.spans(r.clone()), reads);
        params.extend(index.decode(r, &data, model)?);
    }
    Ok(params)
}

fn same_verdict(name: &str, bytes: &[u8], model: &ModelSpec, limits: &Limits) -> bool {
    let whole = Gradient::read(bytes, model, limits);
    for group in [1, 3, model.params.len()] {
        let ranged = read_ranged(bytes, model, limits, group, &mut Reads::default());
        match (&whole, &ranged) {
            (Ok(g), Ok(p)) => assert_eq!(&g.params, p, "{name}, groups of {group}: other values"),
            (Err(_), Err(_)) => {}
            (Ok(_), Err(e)) => panic!("{name}, groups of {group}: whole reader accepts, ranged refuses: {e}"),
            (Err(e), Ok(_)) => panic!("{name}, groups of {group}: ranged reader accepts, whole refuses: {e}"),
        }
    }
    whole.is_ok()
}

#[test]
fn fixtures_read_the_same_by_range() {
    let model = common::model();
    let limits = common::gradient_limits();
    for uid in [3, 7, 11] {
        let name = common::gradient_name(uid);
        assert!(
            same_verdict(&name, &common::read(&name), &model, &limits),
            "{name} reads"
        );
    }
    let deflated = common::read(&format!("deflated_{}", common::gradient_name(3)));
    assert!(same_verdict("deflated", &deflated, &model, &limits));
    let mut bad = 0;
    for entry in std::fs::read_dir(common::dir().join("bad")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(!same_verdict(&path.display().to_string(), &bytes, &model, &limits));
        bad += 1;
    }
    assert!(bad >= 10, "the bad fixtures are there ({bad})");
}

#[test]
fn a_group_reads_only_its_records() {
    let model = common::model();
    let limits = common::gradient_limits();
    let bytes = common::read(&common::gradient_name(3));
    let mut all = Reads::default();
    read_ranged(&bytes, &model, &limits, model.params.len(), &mut all).unwrap();
    // One group: the whole file is read about once (tail, metadata spans, the records).
    assert!(
        all.bytes <= bytes.len() as u64 + (256 << 10),
        "{all:?} of {}",
        bytes.len()
    );
    // Each group's spans cover its own records only: the largest parameter's group is a fraction of the file.
    let len = bytes.len() as u64;
    let tail = PtIndex::tail_range(len);
    let TailRead::Index(pt) = PtIndex::read(len, tail.start, bytes[tail.start as usize..].to_vec(), &limits).unwrap()
    else {
        panic!("the tail holds the directory")
    };
    let meta = fetch(&bytes, &pt.meta_spans(), &mut Reads::default());
    let index = GradientIndex::read(*pt, &meta, &model).unwrap();
    let mut total = 0;
    for i in 0..model.params.len() {
        let want = model.params[i].layout.idxs_shape().iter().product::<usize>() as u64 * 6;
        let got = index.data_bytes(i..i + 1);
        if index.has(i) {
            assert!(
                got >= want && got < want + 4096,
                "param {i}: {got} bytes for {want} of data"
            );
        } else {
            assert_eq!(got, 0);
        }
        total += got;
    }
    assert!(total <= len);
}

#[test]
fn every_byte_of_the_structure_changed_is_judged_alike() {
    let model = common::model();
    let limits = common::gradient_limits();
    let good = common::read(&common::gradient_name(3));
    // The structure: data.pkl's span, every local header, the central directory; the tensor bytes are covered by
    // the value checks above (a changed value is still a value).
    let len = good.len() as u64;
    let tail = PtIndex::tail_range(len);
    let TailRead::Index(pt) = PtIndex::read(len, tail.start, good[tail.start as usize..].to_vec(), &limits).unwrap()
    else {
        panic!()
    };
    let mut offsets: Vec<usize> = Vec::new();
    for r in pt.meta_spans() {
        offsets.extend(r.start as usize..r.end as usize);
    }
    // Local headers: the 30 bytes and name at each record's span start.
    let meta = fetch(&good, &pt.meta_spans(), &mut Reads::default());
    let index = GradientIndex::read(*pt.clone(), &meta, &model).unwrap();
    for r in index.spans(0..model.params.len()) {
        offsets.extend(r.start as usize..(r.start as usize + 100).min(r.end as usize));
    }
    let dir_from = good.len() - 6000.min(good.len());
    offsets.extend(dir_from..good.len());
    offsets.sort_unstable();
    offsets.dedup();
    let (mut accepted, mut refused, mut whole_only) = (0, 0, 0usize);
    for &at in &offsets {
        for flip in [0x01u8, 0x80] {
            let mut bytes = good.clone();
            bytes[at] ^= flip;
            let whole = Gradient::read(&bytes, &model, &limits);
            let ranged = read_ranged(&bytes, &model, &limits, 4, &mut Reads::default());
            // The zip crate's archive-wide check, which the whole-file reader ran before it read through the
            // ranged reader: it also compares fields torch ignores (times, Unicode path extras).
            let zip_ok = zip::ZipArchive::new(std::io::Cursor::new(&bytes))
                .and_then(|mut z| z.validate_header_consistency())
                .is_ok();
            match (whole, ranged) {
                (Ok(g), Ok(p)) => {
                    assert_eq!(g.params, p, "byte {at} ^ {flip:#x}");
                    accepted += 1;
                    whole_only += usize::from(!zip_ok);
                }
                (Err(_), Err(_)) => refused += 1,
                (Ok(_), Err(e)) => panic!("byte {at} ^ {flip:#x}: whole accepts, by groups refuses: {e}"),
                (Err(e), Ok(_)) => panic!("byte {at} ^ {flip:#x}: by groups accepts, whole refuses: {e}"),
            }
        }
    }
    eprintln!(
        "{} changes: {accepted} accepted, {refused} refused, {whole_only} of the accepted refused by the zip crate's \
         archive-wide check",
        offsets.len() * 2
    );
    assert!(refused > 100 && accepted > 0);
    assert_eq!(
        whole_only, 0,
        "the ranged checks refuse whatever the zip crate's header check refuses"
    );
}
