//! The receipt's JSON and its schema file agree, and hostile receipts are refused with a reason: unknown fields,
//! another schema version, oversized files.

use aggregator_policy::ComponentId;
use aggregator_policy::golden::{bounds_input, selection_input, weighting_input};
use aggregator_policy::kinds::contribution_weighting::Weighting;
use aggregator_policy::kinds::peer_selection::Selection;
use aggregator_policy::kinds::time_bounds::Bounds;
use aggregator_receipt::record::MAX_RECEIPT_BYTES;
use aggregator_receipt::{
    BucketRecord, ChainRecord, FileRecord, HostRecord, OutputRecord, PeerOutcome, PeerRecord, PolicyCall,
    PolicyRecords, Receipt, ReceiptError, SCHEMA, ShadowAggregate, ShadowCall, ShadowRecords, ShardsRecord, SkipRecord,
    Timings,
};
use aggregator_window::evidence::EvidenceOrder;

fn component() -> ComponentId {
    ComponentId {
        name: "templar-default".into(),
        version: "1.0.0".into(),
        sha256: "ab".repeat(32),
        origin: "embedded:templar-default".into(),
    }
}

fn receipt() -> Receipt {
    let bucket = BucketRecord {
        endpoint: "http://127.0.0.1:8333".into(),
        name: "b1".into(),
        access_key_id: "KEY".into(),
        secret_access_key: "public-read-secret".into(),
    };
    Receipt {
        schema_version: 1,
        window: 1000,
        version: "0.2.73".into(),
        model: "tiny".into(),
        host: HostRecord::this(),
        chain: ChainRecord {
            sync_block: 7007,
            sync_block_hash: Some(format!("0x{}", "cd".repeat(32))),
            timestamp_ms: Some(1_745_000_000_000),
            head: Some(7010),
            metagraph_block: 7007,
        },
        policies: PolicyRecords {
            time_bounds: PolicyCall {
                component: component(),
                fallback: None,
                state_reset: None,
                input: bounds_input(),
                decision: Bounds {
                    not_before_ms: 1,
                    not_after_ms: 2,
                    note: "n".into(),
                },
            },
            peer_selection: PolicyCall {
                component: component(),
                fallback: Some("trap: unreachable".into()),
                state_reset: None,
                input: selection_input(8),
                decision: Selection {
                    peers: vec![1, 2],
                    weights: Some(vec![1.0, 0.5]),
                    state: vec![1, 2, 3],
                    note: String::new(),
                },
            },
            contribution_weighting: Some(PolicyCall {
                component: component(),
                fallback: None,
                state_reset: None,
                input: weighting_input(),
                decision: Weighting {
                    weights: (1..=15).map(|u| if u == 13 || u == 14 { 0.0 } else { 1.0 }).collect(),
                    state: vec![],
                    note: "2 left out".into(),
                },
            }),
            evidence_order: EvidenceOrder::ByParameter,
        },
        peers: vec![
            PeerRecord {
                uid: 1,
                weight: 1.0,
                bucket: Some(bucket.clone()),
                file: Some(FileRecord {
                    key: "gradient-1000-1-v0.2.73.pt".into(),
                    etag: Some("\"e1\"".into()),
                    size: 10,
                    last_modified_ms: 1,
                    sha256: Some("01".repeat(32)),
                }),
                outcome: PeerOutcome::Aggregated,
                skip: None,
                archived: Some("inputs/1000/gradient-1000-1-v0.2.73.pt".into()),
            },
            PeerRecord {
                uid: 2,
                weight: 0.5,
                bucket: Some(bucket),
                file: None,
                outcome: PeerOutcome::Skipped,
                skip: Some(SkipRecord {
                    kind: "missing".into(),
                    reason: "missing".into(),
                }),
                archived: None,
            },
        ],
        backend: "cpu".into(),
        output: OutputRecord {
            key: "aggregator-1000-v0.2.73.pt".into(),
            size: 100,
            sha256: "02".repeat(32),
            timestamp: "2026-12-01T10:00:00.123456+00:00".into(),
        },
        timings_ms: Timings {
            chain: 1,
            gather: 2,
            process: 3,
            put: None,
        },
        shadow: ShadowRecords::default(),
        shards: None,
    }
}

/// A receipt with every shadow record: a candidate that decided differently, one that failed, the shadow aggregate.
fn shadowed() -> Receipt {
    let mut r = receipt();
    let rotation = ComponentId {
        name: "example-rotation".into(),
        ..component()
    };
    let decision = Selection {
        peers: vec![2, 3],
        weights: Some(vec![1.0, 0.5]),
        state: vec![],
        note: "n".into(),
    };
    let comparison = aggregator_policy::Comparison {
        differences: vec!["peers added: [3]".into(), "peers removed: [1]".into()],
        peers_added: vec![3],
        peers_removed: vec![1],
        jaccard: Some(1.0 / 3.0),
        weights_changed: Some(1),
        ..Default::default()
    };
    r.shadow = ShadowRecords {
        time_bounds: Some(ShadowCall {
            component: rotation.clone(),
            input: bounds_input(),
            decision: None,
            error: Some("policy x: ran out of fuel (100000000 units)".into()),
            comparison: None,
            fuel_used: 0,
        }),
        peer_selection: Some(ShadowCall {
            component: rotation,
            input: selection_input(4),
            decision: Some(decision),
            error: None,
            comparison: Some(comparison),
            fuel_used: 1234,
        }),
        aggregate: Some(ShadowAggregate {
            aggregated: vec![2, 3],
            fetched: vec![3],
            bits_compared: 1000,
            bits_agreeing: 900,
            sign_agreement: Some(0.9),
            error: None,
        }),
    };
    r
}

#[test]
fn shadow_records_round_trip_and_validate_and_are_absent_without_a_shadow() {
    let json = shadowed().to_json();
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let errors: Vec<String> = validator().iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(Receipt::from_json(&json, "r").unwrap().to_json(), json);
    let mut bad = value.clone();
    bad["shadow"]["aggregate"]["sign_agreement"] = serde_json::json!(1.5);
    assert!(!validator().is_valid(&bad));
    let plain: serde_json::Value = serde_json::from_slice(&receipt().to_json()).unwrap();
    assert!(plain.get("shadow").is_none(), "no shadow, no field: {plain}");
    assert!(plain.get("shards").is_none(), "one process, no field: {plain}");
}

#[test]
fn a_sharded_receipt_names_its_shards_and_validates() {
    let mut r = receipt();
    r.shards = Some(ShardsRecord {
        count: 4,
        attempt: 1,
        rounds: 2,
        judging: vec![[0, 3], [3, 5], [5, 9], [9, 12]],
    });
    let json = r.to_json();
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let errors: Vec<String> = validator().iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(Receipt::from_json(&json, "r").unwrap().shards, r.shards);
    for (path, bad) in [
        ("/shards/count", serde_json::json!(0)),
        ("/shards/judging/0", serde_json::json!([1])),
        ("/shards/extra", serde_json::json!(1)),
    ] {
        let mut v = value.clone();
        match v.pointer_mut(path) {
            Some(slot) => *slot = bad,
            None => v["shards"]["extra"] = bad,
        }
        assert!(!validator().is_valid(&v), "{path}");
    }
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

#[test]
fn a_receipt_round_trips_and_validates_against_its_schema() {
    let r = receipt();
    let json = r.to_json();
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let errors: Vec<String> = validator().iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let back = Receipt::from_json(&json, "r").unwrap();
    assert_eq!(back.to_json(), json);
    assert_eq!(back.selection_weights(), vec![1.0, 0.5]);
    // The evidence's order: written, and chunk order where a receipt of an earlier host has none.
    assert_eq!(value["policies"]["evidence_order"], "by-parameter");
    let mut legacy = value.clone();
    legacy["policies"].as_object_mut().unwrap().remove("evidence_order");
    assert!(validator().is_valid(&legacy));
    let old = Receipt::from_json(&serde_json::to_vec(&legacy).unwrap(), "r").unwrap();
    assert_eq!(old.policies.evidence_order, EvidenceOrder::ByChunk);
    let mut bad = value.clone();
    bad["policies"]["evidence_order"] = serde_json::json!("by-shard");
    assert!(!validator().is_valid(&bad));
    assert!(Receipt::from_json(&serde_json::to_vec(&bad).unwrap(), "r").is_err());
}

#[test]
fn hostile_receipts_are_refused_by_reader_and_schema() {
    let json = receipt().to_json();
    let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    // A field neither knows.
    value["peers"][0]["extra"] = serde_json::json!(1);
    assert!(!validator().is_valid(&value));
    let err = Receipt::from_json(&serde_json::to_vec(&value).unwrap(), "r.json").unwrap_err();
    assert!(
        matches!(err, ReceiptError::Invalid { .. }) && err.to_string().contains("extra"),
        "{err}"
    );
    // A weight the kernels refuse, an aggregated peer without a hash, a bad output hash: the schema says no.
    for (path, bad) in [
        ("/peers/0/weight", serde_json::json!(-1.0)),
        ("/peers/0/file/sha256", serde_json::Value::Null),
        ("/output/sha256", serde_json::json!("xyz")),
    ] {
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        *v.pointer_mut(path).unwrap() = bad;
        assert!(!validator().is_valid(&v), "{path}");
    }
    // Another schema version.
    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["schema_version"] = serde_json::json!(2);
    let err = Receipt::from_json(&serde_json::to_vec(&v).unwrap(), "r.json").unwrap_err();
    assert!(matches!(err, ReceiptError::Version { found: 2, .. }), "{err}");
    // Too large, before parsing; not JSON at all.
    let big = vec![b' '; MAX_RECEIPT_BYTES + 1];
    assert!(matches!(
        Receipt::from_json(&big, "r").unwrap_err(),
        ReceiptError::TooLarge { .. }
    ));
    let err = Receipt::from_json(b"\x00\x01", "r.json").unwrap_err();
    assert!(err.to_string().starts_with("r.json: not a receipt"), "{err}");
}
