//! The shared golden vectors from the reference implementation drive the numeric core's tests.

use std::path::PathBuf;

use aggregator_kernels::{Cpu, Isa};

fn shared_vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors")
}

fn run(cpu: Cpu) {
    let outcomes = aggregator_vectors::check_dir(&shared_vectors(), &cpu).expect("shared vectors load");
    assert!(outcomes.len() >= 40, "only {} cases", outcomes.len());
    let failed = aggregator_vectors::failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} failing cases on {}:\n{}",
        failed.len(),
        cpu.isa().name(),
        failed.join("\n")
    );
}

#[test]
fn every_case_passes_on_the_detected_isa() {
    run(Cpu::new());
}

#[test]
fn every_case_passes_on_the_baseline_isa() {
    run(Cpu::with_isa(Isa::Baseline));
}

#[test]
fn a_tampered_vector_fails() {
    // The runner must be able to fail: flip one packed byte of a copy of the vectors.
    let dir = std::env::temp_dir().join(format!("vectors-tampered-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = shared_vectors();
    std::fs::copy(src.join("manifest.json"), dir.join("manifest.json")).unwrap();
    let bytes = std::fs::read(src.join("tensors.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let target = owned
        .iter_mut()
        .find(|t| t.0 == "agg_64x64/packed")
        .expect("agg_64x64/packed");
    target.3[7] ^= 0x10;
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("tensors.safetensors")).unwrap();
    let outcomes = aggregator_vectors::check_dir(&dir, &Cpu::new()).unwrap();
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed()).collect();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(failed.len(), 1, "exactly the tampered case fails");
    assert_eq!(failed[0].name, "agg_64x64");
    assert!(failed[0].failures[0].contains("element 60"), "{:?}", failed[0].failures);
}

/// This project's own vectors, from Templar's code under torch (`host/vectors/gen/overflow.py`): a peer whose float32
/// sum of squares overflows (norm `inf`, normalised values 0), nearly does, or underflows.
#[test]
fn norm_overflow_cases_match_the_reference() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/overflow");
    for cpu in [Cpu::new(), Cpu::with_isa(Isa::Baseline)] {
        let outcomes = aggregator_vectors::check_dir(&dir, &cpu).expect("overflow vectors load");
        assert_eq!(outcomes.len(), 4);
        let failed = aggregator_vectors::failures(&outcomes);
        assert!(failed.is_empty(), "on {}:\n{}", cpu.isa().name(), failed.join("\n"));
    }
}
