//! Raw `data.pkl` programs, wrapped in a valid archive with a few storage records, so that mutations reach the
//! pickle machine and the payload readers instead of dying in the zip layer.
#![no_main]

use std::io::Write;
use std::sync::LazyLock;

use aggregator_codec::{Aggregate, DebugDict, Gradient, Limits, PtFile};
use aggregator_model::ModelSpec;
use libfuzzer_sys::fuzz_target;
use zip::write::SimpleFileOptions;

static MODEL: LazyLock<ModelSpec> = LazyLock::new(|| ModelSpec::preset("tiny").expect("tiny preset"));

fn archive(pickle: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("f/data.pkl", opts).unwrap();
    w.write_all(pickle).unwrap();
    w.start_file("f/byteorder", opts).unwrap();
    w.write_all(b"little").unwrap();
    for key in 0..48 {
        // Storages of 1 KiB: enough for any tensor of the tiny model's gradients (4 x 32 x 4 bytes).
        w.start_file(format!("f/data/{key}"), opts).unwrap();
        w.write_all(&[(key as u8).wrapping_mul(37); 1024]).unwrap();
    }
    w.start_file("f/version", opts).unwrap();
    w.write_all(b"3\n").unwrap();
    w.finish().unwrap().into_inner()
}

fuzz_target!(|data: &[u8]| {
    let bytes = archive(data);
    let limits = Limits { max_objects: 200_000, ..Limits::for_gradient(MODEL.sparse_bytes() as u64) };
    if let Ok(f) = PtFile::parse(&bytes, &limits) {
        let _ = f.describe();
    }
    let _ = Gradient::read(&bytes, &MODEL, &limits);
    let _ = Aggregate::read(&bytes, Some(&MODEL), &limits);
    let _ = DebugDict::read(&bytes, &limits);
});
