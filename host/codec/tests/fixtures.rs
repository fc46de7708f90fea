//! The codec against the reference files of Templar 0.2.73 (`shared/fixtures/templar-0.2.73`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;

use aggregator_codec::{Aggregate, CodecError, DebugDict, Gradient, Limits, PeerList, PtFile, StartWindow};

/// Counts live and peak heap bytes, so tests can assert that hostile files are read in bounded memory.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static ALLOC: Counting = Counting;
/// Every test in this binary holds this lock, so that heap measurements see one test at a time.
static MEASURE: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    MEASURE.lock().unwrap_or_else(|p| p.into_inner())
}

use common::{aggregate_name, debug_name, dir, gradient_name, model, read};

fn limits() -> Limits {
    common::gradient_limits()
}

#[test]
fn good_gradients_decode_and_validate() {
    let _serial = serial();
    let m = model();
    for uid in [3, 7, 11] {
        let g = Gradient::read(&read(&gradient_name(uid)), &m, &limits()).unwrap();
        assert!(
            g.params.iter().all(Option::is_some),
            "uid {uid}: every parameter present"
        );
        assert_eq!(g.metadata.window, Some(100203));
        assert_eq!(g.metadata.pages_info.len(), 6);
        assert_eq!(g.global_step, 203);
        let first = g.params[0].as_ref().unwrap();
        assert_eq!((first.idxs.len(), first.vals.len()), (4 * 32, 4 * 32));
    }
    assert_eq!(
        read_grad(&gradient_name(3)).metadata.pages_info[0],
        ("CC-MAIN-2023-14".to_string(), 1790857, "train".to_string())
    );
}

fn read_grad(name: &str) -> Gradient {
    Gradient::read(&read(name), &model(), &limits()).unwrap()
}

#[test]
fn deflated_archive_reads_the_same() {
    let _serial = serial();
    assert_eq!(
        read_grad(&format!("deflated_{}", gradient_name(3))),
        read_grad(&gradient_name(3))
    );
}

#[test]
fn reference_aggregate_debug_and_json_decode() {
    let _serial = serial();
    let m = model();
    let a = Aggregate::read(&read(&aggregate_name()), Some(&m), &Limits::default()).unwrap();
    assert_eq!(a.params.len(), m.params.len());
    assert_eq!(
        (a.window, a.version.as_str(), a.skipped_uids.as_slice(), a.success_rate),
        (100203, "0.2.73", &[19i64][..], 0.75)
    );
    assert!(a.timestamp.ends_with("+00:00"));
    let d = DebugDict::read(&read(&debug_name(1)), &Limits::default()).unwrap();
    assert_eq!(d.values.len(), m.params.len());
    assert!(d.values.iter().all(|(_, v)| v.len() == 2));
    assert_eq!(d.successful_peers, Some(vec![3, 7, 11]));
    assert_eq!(d.skipped_peers, Some(vec![19]));
    let peers = read(&aggregator_store::keys::peer_list(100200, common::VERSION));
    let list = PeerList::from_json(&peers).unwrap();
    assert_eq!(list.peers, [3, 7, 11, 19]);
    assert_eq!(list.first_effective_window, 100200);
    assert_eq!(
        list.to_json(),
        peers,
        "re-serialised byte for byte, Python separators included"
    );
    assert_eq!(
        StartWindow::from_json(&read(&aggregator_store::keys::start_window(common::VERSION)))
            .unwrap()
            .start_window,
        100000
    );
}

#[test]
fn write_read_round_trips() {
    let _serial = serial();
    let m = model();
    let g = read_grad(&gradient_name(7));
    let bytes = g.to_bytes(&m).unwrap();
    assert_eq!(Gradient::read(&bytes, &m, &limits()).unwrap(), g);
    assert_eq!(g.to_bytes(&m).unwrap(), bytes, "writing is deterministic");
    let a = Aggregate::read(&read(&aggregate_name()), Some(&m), &Limits::default()).unwrap();
    let back = Aggregate::read(&a.to_bytes().unwrap(), Some(&m), &Limits::default()).unwrap();
    assert_eq!(back, a);
    let d = DebugDict::read(&read(&debug_name(1)), &Limits::default()).unwrap();
    assert_eq!(DebugDict::read(&d.to_bytes().unwrap(), &Limits::default()).unwrap(), d);
    // Our files use the `archive/` root and keep every parameter's bytes.
    let ours = a.to_bytes().unwrap();
    assert_eq!(
        PtFile::parse(&ours, &Limits::default()).unwrap().root_folder(),
        "archive"
    );
}

/// Reads a bad file as a peer gradient; returns the error, the time taken and the peak extra heap.
fn reject(name: &str) -> (CodecError, Duration, usize) {
    let bytes = read(&format!("bad/{name}"));
    let m = model();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t = Instant::now();
    let result = std::panic::catch_unwind(|| Gradient::read(&bytes, &m, &limits()));
    let elapsed = t.elapsed();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let err = result
        .unwrap_or_else(|_| panic!("{name}: the reader panicked"))
        .expect_err(name);
    (err, elapsed, peak)
}

#[test]
fn every_bad_file_is_rejected_fast_in_bounded_memory_naming_the_problem() {
    let _serial = serial();
    let cases: &[(&str, &[&str])] = &[
        ("forbidden-global.pt", &["posix.system", "not allowed"]),
        ("huge-numel.pt", &["1099511627776", "holds 16 bytes"]),
        (
            "idxs-negative.pt",
            &["model.layers.0.input_layernorm.weight", "idxs[3] = -1"],
        ),
        (
            "idxs-out-of-range.pt",
            &["model.layers.0.self_attn.q_proj.weight", "idxs[7] = 4096", "[0, 4096)"],
        ),
        ("no-data-pkl.pt", &["no data.pkl"]),
        ("offset-overrun.pt", &["data/17", "offset 28", "storage of 32"]),
        ("stride-overrun.pt", &["strides [64, 64, 2]", "storage of 32"]),
        ("truncated-zip.pt", &["not a torch zip archive"]),
        (
            "vals-inf.pt",
            &["model.layers.0.input_layernorm.weight", "vals[0] = -inf", "not finite"],
        ),
        (
            "vals-nan.pt",
            &["model.layers.0.self_attn.q_proj.weight", "vals[11] = NaN"],
        ),
        (
            "vals-shape-mismatch.pt",
            &[
                "model.layers.0.self_attn.q_proj.weight",
                "vals has shape [1, 1, 31], expected [1, 1, 32]",
            ],
        ),
        (
            "wrong-topk.pt",
            &["model.embed_tokens.weight", "shape [4, 1, 16], expected [4, 1, 32]"],
        ),
    ];
    let files: Vec<_> = std::fs::read_dir(dir().join("bad"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), cases.len(), "every file in bad/ has a case: {files:?}");
    for (name, needles) in cases {
        let (err, elapsed, peak) = reject(name);
        let msg = err.to_string();
        for n in *needles {
            assert!(msg.contains(n), "{name}: {msg:?} does not mention {n:?}");
        }
        assert!(elapsed < Duration::from_secs(1), "{name}: took {elapsed:?}");
        assert!(peak < 4 << 20, "{name}: peak heap {peak} bytes");
    }
}

#[test]
fn hostile_pickles_hit_limits_not_memory() {
    let _serial = serial();
    // A program that builds nested lists far past the depth limit, and one that allocates objects without end.
    let mut deep = vec![0x80, 2];
    deep.extend(std::iter::repeat_n(b'(', 10_000));
    let mut many = vec![0x80, 2, b']'];
    many.extend(std::iter::repeat_n([b'N', b'a'], 5_000_000).flatten());
    many.push(b'.');
    for (name, program) in [("deep", deep), ("many", many)] {
        let zip = {
            use std::io::Write;
            let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            w.start_file(
                "x/data.pkl",
                zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
            )
            .unwrap();
            w.write_all(&program).unwrap();
            w.start_file(
                "x/version",
                zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
            )
            .unwrap();
            w.write_all(b"3\n").unwrap();
            w.finish().unwrap().into_inner()
        };
        let limits = Limits {
            max_objects: 100_000,
            ..Limits::default()
        };
        let err = PtFile::parse(&zip, &limits)
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"));
        assert!(matches!(err, CodecError::Limit { .. }), "{name}: {err}");
    }
}

#[test]
fn an_aggregate_written_a_parameter_at_a_time_is_the_same_file() {
    let _g = serial();
    let agg = Aggregate::read(&read(&aggregate_name()), Some(&model()), &Limits::default()).unwrap();
    let whole = agg.to_bytes().unwrap();
    // Through the forward sink: the bytes handed on, in order, and the largest piece handed at once.
    let (mut out, mut largest) = (Vec::new(), 0usize);
    let sink = aggregator_codec::write::ForwardSink::new(|b: &[u8]| {
        largest = largest.max(b.len());
        out.extend_from_slice(b);
        Ok(())
    });
    let params = agg.params.iter().map(|(n, b)| (n.clone(), b.len())).collect();
    let mut w = aggregator_codec::AggregateWriter::begin(sink, params, &agg.header()).unwrap();
    for (_, bits) in &agg.params {
        w.param(bits).unwrap();
    }
    let sink = w.finish().unwrap();
    assert_eq!(sink.handed(), whole.len() as u64);
    drop(sink);
    assert_eq!(out, whole, "the same bytes as Aggregate::to_bytes");
    let biggest = agg.params.iter().map(|(_, b)| b.len()).max().unwrap();
    assert!(
        largest < biggest + 4096,
        "one entry at a time: {largest} bytes at once, largest entry {biggest}"
    );
    // Misuse is an error, not a different file.
    let params = agg.params.iter().map(|(n, b)| (n.clone(), b.len())).collect();
    let mut w =
        aggregator_codec::AggregateWriter::begin(std::io::Cursor::new(Vec::new()), params, &agg.header()).unwrap();
    assert!(w.param(&[0u8; 3]).is_err(), "a wrong length");
    assert!(w.finish().is_err(), "parameters missing");
}
