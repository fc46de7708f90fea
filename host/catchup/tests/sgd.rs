//! `apply_aggregate` against torch's own catch-up step: `tests/data/sgd-steps.pt` holds a parameter, four windows'
//! packed signs with their learning rates, and the parameter torch's `SGD.step()` left after them, without and with
//! weight decay (written by `tests/data/make_sgd_steps.py`). The parameter has 1003 elements, so the last byte of
//! each window's signs is partly padding.

use aggregator_catchup::{Checkpoint, apply_aggregate};
use aggregator_codec::{Aggregate, Limits, PtFile};

struct Reference {
    p0: Vec<f32>,
    bits: Vec<Vec<u8>>,
    lrs: Vec<f64>,
    weight_decay: f64,
    after: Vec<f32>,
    after_weight_decay: Vec<f32>,
}

fn reference() -> Reference {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sgd-steps.pt")).unwrap();
    let file = PtFile::parse(&bytes, &Limits::default()).unwrap();
    let root = file.root();
    let get = |k: &str| file.get(root, k, "root").unwrap().unwrap();
    let f32s = |k: &str| file.tensor::<f32>(file.tensor_meta(get(k), k).unwrap(), k).unwrap();
    let bits_meta = file.tensor_meta(get("bits"), "bits").unwrap();
    let width = bits_meta.shape[1];
    let bits = file.tensor::<u8>(bits_meta, "bits").unwrap();
    Reference {
        p0: f32s("p0"),
        bits: bits.chunks(width).map(<[u8]>::to_vec).collect(),
        lrs: file
            .seq(get("lrs"), "lrs")
            .unwrap()
            .iter()
            .map(|&id| file.float(id, "lrs").unwrap())
            .collect(),
        weight_decay: file.float(get("weight_decay"), "weight_decay").unwrap(),
        after: f32s("after"),
        after_weight_decay: f32s("after_weight_decay"),
    }
}

fn replay(r: &Reference, weight_decay: f64) -> Vec<f32> {
    let mut ckpt = Checkpoint {
        window: 0,
        start_window: 0,
        params: vec![("w".into(), r.p0.clone())],
    };
    for (bits, &lr) in r.bits.iter().zip(&r.lrs) {
        let aggregate = Aggregate {
            params: vec![("w".into(), bits.clone())],
            timestamp: String::new(),
            window: 1,
            version: "0.2.73".into(),
            skipped_uids: vec![],
            success_rate: 1.0,
            global_step: 0,
        };
        assert_eq!(apply_aggregate(&mut ckpt, &aggregate, lr, weight_decay), 1);
    }
    ckpt.params.remove(0).1
}

fn assert_bits(ours: &[f32], torch: &[f32]) {
    assert_eq!(ours.len(), torch.len());
    for (i, (a, b)) in ours.iter().zip(torch).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "element {i}: ours {a}, torch {b}");
    }
}

#[test]
fn apply_equals_torch_sgd_bit_for_bit() {
    let r = reference();
    assert_eq!(r.p0.len(), 1003);
    assert_bits(&replay(&r, 0.0), &r.after);
}

#[test]
fn apply_with_weight_decay_equals_torch_bit_for_bit() {
    let r = reference();
    assert!(r.weight_decay > 0.0);
    assert_bits(&replay(&r, r.weight_decay), &r.after_weight_decay);
}
