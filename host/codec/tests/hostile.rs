//! Hostile files whose cost would grow faster than their size without the reader's bounds: memoised values copied
//! or read once per reference (the "memory bombs"), and archives torch refuses (duplicate names, strays outside the
//! root folder, bad `version` records). Each must be refused or outlined within a second of CPU and 100 MB of heap,
//! measured here with a counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;

use aggregator_codec::{Aggregate, CodecError, DebugDict, Gradient, Limits, PtFile};
use aggregator_model::ModelSpec;

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
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // Counted as a new block held beside the old one until the copy is done, as it is.
        let now = LIVE.fetch_add(new, Ordering::Relaxed) + new;
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        let q = unsafe { System.realloc(p, l, new) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        q
    }
}
#[global_allocator]
static ALLOC: Counting = Counting;
static MEASURE: Mutex<()> = Mutex::new(());

/// The cost limits every case below must stay under.
const MAX_HEAP: usize = 100 << 20;
const MAX_TIME: Duration = Duration::from_secs(1);

fn model() -> ModelSpec {
    ModelSpec::preset("tiny").unwrap()
}

/// A torch-shaped archive: `archive/{data.pkl, byteorder, data/<k>…, version}`, entries stored.
fn archive(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut put = |name: &str, data: &[u8]| {
        w.start_file(name, opts).unwrap();
        w.write_all(data).unwrap();
    };
    put("archive/data.pkl", pickle);
    put("archive/byteorder", b"little");
    for (k, d) in storages {
        put(&format!("archive/data/{k}"), d);
    }
    put("archive/version", b"3\n");
    w.finish().unwrap().into_inner()
}

/// Pickle program builder (protocol 2).
#[derive(Default)]
struct P(Vec<u8>);

impl P {
    fn new() -> Self {
        P(vec![0x80, 2])
    }
    fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn put(&mut self, k: u32) -> &mut Self {
        self.op(b"r").op(&k.to_le_bytes())
    }
    fn get(&mut self, k: u32) -> &mut Self {
        self.op(b"j").op(&k.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
    }
    fn global(&mut self, m: &str, n: &str) -> &mut Self {
        self.op(b"c").op(m.as_bytes()).op(b"\n").op(n.as_bytes()).op(b"\n")
    }
    /// `{"prelude": [what was pushed so far], "state_dict": <what the closure pushes>, "global_step": 0}` and STOP:
    /// the values built (and memoised) before are kept in a list, so that the stack is empty at STOP.
    fn envelope(self, state_dict: impl FnOnce(&mut P)) -> Vec<u8> {
        let mut p = P::new();
        p.op(b"}(")
            .str("prelude")
            .op(b"](")
            .op(&self.0[2..])
            .op(b"e")
            .str("state_dict");
        state_dict(&mut p);
        p.str("global_step").op(b"K\x00u.");
        p.0
    }
}

/// The issue's reproducer: a list of 400 000 memo references, then 300 000 `set(list)` REDUCEs (2.6 MB).
fn set_bomb() -> Vec<u8> {
    let (n, r) = (400_000, 300_000);
    let mut p = b"\x80\x02Nq\x00](".to_vec();
    p.extend(std::iter::repeat_n(*b"h\x00", n).flatten());
    p.extend_from_slice(b"eq\x01cbuiltins\nset\nq\x02");
    p.extend(std::iter::repeat_n(*b"h\x02h\x01\x85R", r).flatten());
    p.push(b'.');
    p
}

/// Sets inside the list they copy: each round appends `set(L)` to `L`.
fn nested_sets() -> Vec<u8> {
    let mut p = P::new();
    p.op(b"](").op(b"N").put(0).op(b"](");
    for _ in 0..50_000 {
        p.get(0);
    }
    p.op(b"e").put(1).global("builtins", "set").put(2);
    for _ in 0..20_000 {
        // L.append(set(L)): each copy is one item larger than the last.
        p.get(1).get(2).get(1).op(b"\x85Ra");
    }
    p.op(b"e.");
    p.0
}

/// `_codecs.encode` of one memoised 1 MB string, again and again.
fn encode_bomb() -> Vec<u8> {
    let mut p = P::new();
    p.op(b"](")
        .str(&"a".repeat(1 << 20))
        .put(0)
        .str("latin1")
        .put(1)
        .global("_codecs", "encode")
        .put(2);
    for _ in 0..200_000 {
        p.get(2).get(0).get(1).op(b"\x86R");
    }
    p.op(b"e.");
    p.0
}

/// `numpy.dtype(*T)` with a memoised tuple of 400 000 items as arguments, 100 000 times (the arguments are read in
/// place, never copied).
fn dtype_args_bomb() -> Vec<u8> {
    let mut p = P::new();
    p.op(b"](").op(b"(").str("<i8").put(0);
    for _ in 0..400_000 {
        p.get(0);
    }
    p.op(b"t").put(1).global("numpy", "dtype").put(2);
    for _ in 0..100_000 {
        p.get(2).get(1).op(b"R");
    }
    p.op(b"e.");
    p.0
}

/// A gradient whose state_dict says `"metadata"` 200 000 times, each pointing at one metadata dict whose
/// `pages_info` is one list of 100 000 references to a tuple of two 4 KB strings.
fn shared_metadata() -> Vec<u8> {
    let mut p = P::new();
    p.str(&"c".repeat(4096)).put(0).op(b"K\x01").put(1);
    p.get(0).get(1).get(0).op(b"\x87").put(2);
    p.op(b"](");
    for _ in 0..100_000 {
        p.get(2);
    }
    p.op(b"e").put(3);
    p.op(b"}(").str("pages_info").get(3).str("window").op(b"K\x05u").put(4);
    p.str("metadata").put(5);
    p.envelope(|p| {
        p.op(b"}(");
        for _ in 0..200_000 {
            p.get(5).get(4);
        }
        p.op(b"u");
    })
}

/// A debug dict with 200 000 keys that are one memoised 60 KB string ending in `_debug`, each pointing at one list of
/// 100 000 floats.
fn shared_debug_lists() -> Vec<u8> {
    let mut p = P::new();
    p.str(&format!("{}_debug", "k".repeat(60_000))).put(0);
    p.op(b"](");
    for _ in 0..100_000 {
        p.op(b"G?\xf0\x00\x00\x00\x00\x00\x00");
    }
    p.op(b"e").put(1);
    p.envelope(|p| {
        p.op(b"}(");
        for _ in 0..200_000 {
            p.get(0).get(1);
        }
        p.op(b"u");
    })
}

/// An aggregate-shaped dict whose 200 000 keys are one memoised 60 KB string, each pointing at one empty tensor.
/// A program and the storage records it refers to.
type WithStorages = (Vec<u8>, Vec<(&'static str, &'static [u8])>);

fn shared_keys_empty_tensors() -> WithStorages {
    let mut p = P::new();
    p.str(&"p".repeat(60_000)).put(0);
    p.global("torch._utils", "_rebuild_tensor_v2").put(1);
    // _rebuild_tensor_v2((persistent storage, 0, (0,), (1,), False, OrderedDict())): an empty uint8 tensor.
    p.get(1)
        .op(b"((")
        .str("storage")
        .global("torch", "ByteStorage")
        .str("0")
        .str("cpu")
        .op(b"K\x00tQ");
    p.op(b"K\x00K\x00\x85K\x01\x85\x89")
        .global("collections", "OrderedDict")
        .op(b")R")
        .op(b"tR")
        .put(2);
    let program = p.envelope(|p| {
        p.op(b"}(");
        for _ in 0..200_000 {
            p.get(0).get(2);
        }
        p.op(b"u");
    });
    (program, vec![("0", b"")])
}

/// Lists 8 wide and 9 deep, each level 8 references to the one below, and 2000 state_dict keys pointing at the top:
/// a 23 KB file whose fully expanded outline has billions of lines.
fn deep_dag() -> Vec<u8> {
    let mut p = P::new();
    p.op(b"](").op(&[b'N'; 8]).op(b"e").put(0);
    for level in 1..=9u32 {
        p.op(b"](");
        for _ in 0..8 {
            p.get(level - 1);
        }
        p.op(b"e").put(level);
    }
    p.envelope(|p| {
        p.op(b"}(");
        for i in 0..2000 {
            p.str(&format!("k{i}")).get(9);
        }
        p.op(b"u");
    })
}

/// A memoised 1 MB string used as a storage key, and a numpy dtype code, again and again.
fn long_key_and_code() -> Vec<Vec<u8>> {
    let mut key = P::new();
    key.op(b"](").str(&"9".repeat(1 << 20)).put(0);
    for _ in 0..1000 {
        key.op(b"(")
            .str("storage")
            .global("torch", "FloatStorage")
            .get(0)
            .str("cpu")
            .op(b"K\x00tQ");
    }
    key.op(b"e.");
    let mut code = P::new();
    code.op(b"](")
        .str(&"i".repeat(1 << 20))
        .put(0)
        .global("numpy", "dtype")
        .put(1);
    for _ in 0..1000 {
        code.get(1).get(0).op(b"\x85R");
    }
    code.op(b"e.");
    vec![key.0, code.0]
}

/// Every reader on `bytes`, after checking time and heap: the parse error, or the payload readers' errors.
fn run_all(name: &str, bytes: &[u8], limits: &Limits) -> Vec<Option<CodecError>> {
    let m = model();
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let base = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut parsed = None;
    match PtFile::parse(bytes, limits) {
        Ok(f) => {
            let text = f.describe();
            assert!(text.len() <= (1 << 20) + 200, "{name}: outline of {} bytes", text.len());
        }
        Err(e) => parsed = Some(e),
    }
    let results = vec![
        Gradient::read(bytes, &m, limits).err(),
        Aggregate::read(bytes, None, limits).err(),
        Aggregate::read(bytes, Some(&m), limits).err(),
        DebugDict::read(bytes, limits).err(),
    ];
    let elapsed = started.elapsed();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert!(elapsed < MAX_TIME, "{name}: {elapsed:?}");
    assert!(peak < MAX_HEAP, "{name}: peak heap {} MB", peak >> 20);
    eprintln!(
        "{name}: {} KB file, {elapsed:?}, peak heap {} KB",
        bytes.len() >> 10,
        peak >> 10
    );
    match parsed {
        Some(e) => vec![Some(e)],
        None => results,
    }
}

fn limits_for_tiny() -> Limits {
    Limits::for_gradient(model().sparse_bytes() as u64)
}

#[test]
fn memory_bombs_are_refused_in_bounded_time_and_memory() {
    let _serial = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    let (tensors, storages) = shared_keys_empty_tensors();
    /// Name, program, storage records, and what the refusal names.
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a [u8])>, &'a str);
    let mut cases: Vec<Case> = vec![
        (
            "set(list) x 300 000",
            set_bomb(),
            vec![],
            "bytes copied by pickle REDUCEs",
        ),
        ("sets of sets", nested_sets(), vec![], "bytes copied by pickle REDUCEs"),
        (
            "_codecs.encode x 200 000",
            encode_bomb(),
            vec![],
            "bytes copied by pickle REDUCEs",
        ),
        (
            "numpy.dtype(*400 000 args)",
            dtype_args_bomb(),
            vec![],
            "expected a dict",
        ),
        ("shared metadata", shared_metadata(), vec![], "object graph reads"),
        ("shared debug lists", shared_debug_lists(), vec![], "object graph reads"),
        ("shared keys, empty tensors", tensors, storages, "object graph reads"),
    ];
    for (i, p) in long_key_and_code().into_iter().enumerate() {
        cases.push((["long storage key", "long dtype code"][i], p, vec![], "bytes"));
    }
    for (name, program, storages, needle) in cases {
        let bytes = archive(&program, &storages);
        for (gradient_limits, limits) in [(true, limits_for_tiny()), (false, Limits::default())] {
            // Every reader stays within the time and heap bounds (checked by `run_all`); one that does not care
            // about the shape may accept the file (a debug-dict reader ignores "metadata" keys), and the reader the
            // shape aims at refuses it. Under the default limits it reaches the bound it is about; a gradient's
            // tighter limits may refuse it earlier (archive or data.pkl size), which is as good.
            let errors = run_all(name, &bytes, &limits);
            let errors: Vec<&CodecError> = errors.iter().flatten().collect();
            let expected = |e: &&CodecError| {
                e.to_string().contains(needle) || (gradient_limits && matches!(e, CodecError::Limit { .. }))
            };
            assert!(errors.iter().any(expected), "{name}: {errors:?}");
        }
    }
}

#[test]
fn shared_values_are_outlined_once() {
    let _serial = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    let bytes = archive(&deep_dag(), &[]);
    assert!(bytes.len() < 32 << 10, "{} bytes", bytes.len());
    run_all("deep memo DAG", &bytes, &Limits::default());
    let f = PtFile::parse(&bytes, &Limits::default()).unwrap();
    let text = f.describe();
    assert!(text.len() < 128 << 10, "{} bytes:\n{text}", text.len());
    // Each of the ten shared lists is expanded once; every other reference (the 1999 other keys' included) points
    // at it.
    assert_eq!(text.matches("list[8] &").count(), 10, "{text}");
    assert!(text.matches("shown above").count() >= 1999 + 7 * 9, "{text}");
}

/// Entries of `src` rewritten by `edit` (name, data), zipped again (stored).
fn rezip(src: &[u8], edit: impl Fn(&str, &[u8]) -> Vec<(String, Vec<u8>)>) -> Vec<u8> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(src)).unwrap();
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..z.len() {
        let mut e = z.by_index(i).unwrap();
        let name = e.name().unwrap().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        for (n, d) in edit(&name, &data) {
            // The zip crate refuses duplicate names; raw_copy-free route: rename afterwards below.
            w.start_file(n, opts).unwrap();
            w.write_all(&d).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

/// Renames the entry `from` to `to` in place (same length), in both its local header and the central directory:
/// how a duplicate name is made, since zip writers refuse to write one.
fn rename_in_place(mut bytes: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut n = 0;
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(from.len()).position(|w| w == from.as_bytes()) {
        let at = i + pos;
        bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
        i = at + to.len();
        n += 1;
    }
    assert_eq!(n, 2, "{from} appears in one local header and one central entry");
    bytes
}

#[test]
fn archives_torch_refuses_are_refused() {
    let _serial = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    let m = common::model();
    let limits = common::gradient_limits();
    let name = common::gradient_name(3);
    let good = common::read(&name);
    let root = format!("temp_{}", name.trim_end_matches(".pt"));
    let root = root.as_str();
    Gradient::read(&good, &m, &limits).expect("the fixture reads");
    Gradient::read(&rezip(&good, |n, d| vec![(n.into(), d.into())]), &m, &limits).expect("a plain re-zip reads");

    // A second data.pkl (a negated gradient would do; any other program shows it): made by renaming a spare entry.
    let dup_pickle = rename_in_place(
        rezip(&good, |n, d| {
            let mut v = vec![(n.to_string(), d.to_vec())];
            if n.ends_with("/data.pkl") {
                v.push((format!("{root}/data.pkx"), b"\x80\x02N.".to_vec()));
            }
            v
        }),
        &format!("{root}/data.pkx"),
        &format!("{root}/data.pkl"),
    );
    // A second data/0.
    let dup_record = rename_in_place(
        rezip(&good, |n, d| {
            let mut v = vec![(n.to_string(), d.to_vec())];
            if n.ends_with("/data/0") {
                v.push((format!("{root}/data/X"), d.to_vec()));
            }
            v
        }),
        &format!("{root}/data/X"),
        &format!("{root}/data/0"),
    );
    let stray = rezip(&good, |n, d| {
        // One entry under another root folder (a single flipped bit in its name).
        let n = if n.ends_with("/byteorder") {
            n.replacen("temp_", "temp\x5e", 1)
        } else {
            n.to_string()
        };
        vec![(n, d.to_vec())]
    });
    let version = |v: &'static [u8]| {
        rezip(&good, move |n, d| {
            vec![(
                n.to_string(),
                if n.ends_with("/version") {
                    v.to_vec()
                } else {
                    d.to_vec()
                },
            )]
        })
    };
    let no_version = rezip(&good, |n, d| {
        if n.ends_with("/version") {
            vec![]
        } else {
            vec![(n.to_string(), d.to_vec())]
        }
    });
    let byteorder = rezip(&good, |n, d| {
        vec![(
            n.to_string(),
            if n.ends_with("/byteorder") {
                b"littlf".to_vec()
            } else {
                d.to_vec()
            },
        )]
    });
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("duplicate data.pkl", dup_pickle, "same name"),
        ("duplicate data/0", dup_record, "same name"),
        ("entry outside the root", stray, "outside the root folder"),
        ("version s", version(b"s\n"), "not a format version"),
        ("version 11", version(b"11\n"), "outside the 1..=10"),
        ("version 0", version(b"0\n"), "outside the 1..=10"),
        ("no version", no_version, "missing"),
        ("byteorder littlf", byteorder, "only little-endian"),
    ];
    for (name, bytes, needle) in cases {
        let err = Gradient::read(&bytes, &m, &limits).expect_err(name).to_string();
        assert!(err.contains(needle), "{name}: {err}");
    }
    // What torch accepts and we accept too: version "3" without a newline, surrounding whitespace.
    for v in [&b"3"[..], b" 3\n", b"10\n"] {
        let bytes = rezip(&good, |n, d| {
            vec![(
                n.to_string(),
                if n.ends_with("/version") {
                    v.to_vec()
                } else {
                    d.to_vec()
                },
            )]
        });
        Gradient::read(&bytes, &m, &limits).unwrap_or_else(|e| panic!("version {v:?}: {e}"));
    }
}

#[test]
fn a_real_sized_gradient_reads_within_every_budget() {
    let _serial = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    // A legitimate file far below every budget still reads under the gradient limits: the budgets are not tight.
    let m = ModelSpec::preset("templar-1b").unwrap();
    let limits = Limits::for_gradient(m.sparse_bytes() as u64);
    let g = Gradient {
        params: m
            .params
            .iter()
            .map(|p| {
                let n = p.layout.sparse_len();
                Some(aggregator_codec::SparseParam {
                    idxs: vec![0; n],
                    vals: vec![1.0; n],
                })
            })
            .collect(),
        metadata: aggregator_codec::GradientMetadata {
            pages_info: (0..1000)
                .map(|i| (format!("CC-MAIN-{i}"), i, "train".to_string()))
                .collect(),
            window: Some(7),
        },
        global_step: 3,
    };
    let bytes = g.to_bytes(&m).unwrap();
    assert_eq!(Gradient::read(&bytes, &m, &limits).unwrap(), g);
}
