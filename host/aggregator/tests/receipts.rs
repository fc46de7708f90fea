//! Every window provable, from the outside: the simulator runs the daemon with a weighting selection plugin
//! (`example-rotation`: core peers at 1.0, exploring peers at 0.5), and then
//!
//! * every stored window has a receipt that validates against `host/receipt/receipt-v1.schema.json`;
//! * every aggregate equals an independent recomputation from the stored peer files and the recorded weights (and
//!   differs from the unweighted one: the weights reach the numeric step);
//! * `aggregator replay` passes on every window, on the CPU and on wgpu, from a receipt file or URL, and finds a
//!   replaced plugin in the daemon's policy cache;
//! * flipping one byte of one stored peer file makes it fail naming that uid; flipping one byte of the aggregate
//!   makes it fail naming the aggregate; a forged aggregate with a receipt to match fails naming the parameter;
//! * `aggregator plugin run` on a recorded window prints the same decision for the recorded component and a diff for
//!   another.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aggregator_codec::{Aggregate, Gradient, Limits};
use aggregator_daemon::WindowResult;
use aggregator_kernels::Cpu;
use aggregator_model::ModelSpec;
use aggregator_policy::{EMBEDDED_DEFAULT, EXAMPLE_ROTATION};
use aggregator_receipt::{PeerOutcome, Receipt};
use aggregator_sim::{self as sim, SimOptions};
use aggregator_store::{Endpoint, keys};
use aggregator_window::{PeerInput, aggregate_window};

fn aggregator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.env("RUST_LOG", "warn").output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// `replay --window W` against the simulator's bucket, with extra arguments.
fn replay(store: &Path, w: u64, extra: &[&str]) -> (Output, String) {
    run(aggregator()
        .args(["replay", "--window", &w.to_string(), "--store"])
        .arg(store)
        .args(["--bucket", sim::OUTPUT_BUCKET])
        .args(extra))
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn receipts_replay_and_plugin_run() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("receipts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The example plugin as a third party's file: its bytes plus a custom section, so that it is not the copy the
    // binary embeds (replay must find it by its recorded path, or in the policy cache).
    let rotation = dir.join("example_rotation.wasm");
    let mut wasm = EXAMPLE_ROTATION.to_vec();
    wasm.extend([0x00, 0x03, 0x01, b'x', 0x00]);
    std::fs::write(&rotation, wasm).unwrap();
    let outcome = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sim::run(SimOptions {
            windows: 3,
            peers: 6,
            faults: true,
            data_dir: Some(dir.join("sim")),
            verbose: false,
            peer_selection: Some(rotation.clone()),
            // Three core peers at 1.0, the others exploring at 0.5; uid 0 is the validator (no gradients).
            policy_settings: vec![
                ("core".into(), "3".into()),
                ("max_peers".into(), "6".into()),
                ("blacklist".into(), "0".into()),
            ],
            ..SimOptions::default()
        }))
        .unwrap();
    let store = dir.join("sim").join("store");
    let out_dir = store.join(sim::OUTPUT_BUCKET);
    let model = ModelSpec::preset("tiny").unwrap();
    let schema: serde_json::Value = serde_json::from_str(aggregator_receipt::SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");

    let mut stored = vec![];
    let mut weighted_differs = false;
    for r in &outcome.reports {
        let w = r.window;
        if r.result != WindowResult::Stored {
            continue;
        }
        stored.push(w);
        let text = std::fs::read(out_dir.join(keys::receipt(w, sim::VERSION))).expect("a stored window has a receipt");
        let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "window {w}: receipt against the schema: {errors:#?}");
        let receipt = Receipt::from_json(&text, "receipt").unwrap();
        assert_eq!(receipt.policies.peer_selection.component.name, "example-rotation");
        assert_eq!(receipt.output.sha256, *r.output_sha256.as_ref().unwrap());
        let weights: Vec<f32> = receipt.peers.iter().map(|p| p.weight).collect();
        assert!(
            weights.contains(&0.5) && weights.contains(&1.0),
            "window {w}: weights {weights:?}"
        );

        // The independent recomputation: the stored files by hand, the recorded weights.
        let stored_bytes = std::fs::read(out_dir.join(keys::aggregate(w, sim::VERSION))).unwrap();
        let limits = Limits::for_gradient(model.sparse_bytes() as u64);
        let mut weighted = vec![];
        let mut unweighted = vec![];
        for p in &receipt.peers {
            if p.outcome == PeerOutcome::Skipped {
                weighted.push((p.uid, PeerInput::Skipped(())));
                unweighted.push((p.uid, PeerInput::Skipped(())));
                continue;
            }
            let bytes = std::fs::read(
                store
                    .join(sim::bucket_name(p.uid))
                    .join(keys::gradient(w, p.uid, sim::VERSION)),
            )
            .unwrap();
            let g = || Gradient::read(&bytes, &model, &limits).unwrap();
            weighted.push((
                p.uid,
                PeerInput::Valid {
                    gradient: g(),
                    weight: p.weight,
                },
            ));
            unweighted.push((p.uid, PeerInput::valid(g())));
        }
        let recompute = |inputs: &[(u16, PeerInput<()>)]| {
            aggregate_window(
                &model,
                &Cpu::new(),
                w as i64,
                sim::VERSION,
                inputs,
                receipt.output.timestamp.clone(),
            )
            .unwrap()
            .file
            .unwrap()
        };
        let expected = recompute(&weighted);
        let file = Aggregate::read(&stored_bytes, Some(&model), &Limits::default()).unwrap();
        assert_eq!(
            file.params, expected.params,
            "window {w}: the recorded weights' aggregate"
        );
        assert_eq!(expected.to_bytes().unwrap(), stored_bytes, "window {w}: byte for byte");
        weighted_differs |= recompute(&unweighted).params != file.params;

        // The replay command, on the CPU.
        let (o, text) = replay(&store, w, &["--device", "cpu"]);
        assert!(o.status.success(), "window {w}: {text}");
        assert!(text.contains(&format!("verdict: window {w} replays")), "{text}");
        assert!(text.contains("policy peer-selection (example-rotation"), "{text}");
        assert!(!text.contains("skipped  policy"), "both components were found: {text}");
    }
    assert!(stored.len() >= 2, "{:?}", outcome.reports);
    assert!(weighted_differs, "the weights changed at least one aggregate");
    let w = *stored.last().unwrap();

    // On wgpu, bit for bit.
    let (o, text) = replay(&store, w, &["--device", "wgpu"]);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("recomputed on wgpu"), "{text}");

    // A receipt file and the aggregate as a file give the same verdict.
    let receipt_file = out_dir.join(keys::receipt(w, sim::VERSION));
    let (o, text) = run(aggregator()
        .args(["replay", "--receipt"])
        .arg(&receipt_file)
        .args(["--store"])
        .arg(&store)
        .args(["--bucket", sim::OUTPUT_BUCKET]));
    assert!(o.status.success(), "{text}");

    // Over HTTP, as a validator reads a public bucket: the receipt's URL, the aggregate beside it.
    let port = aggregator_testkit::free_port();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&out_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 (the storage tests need it too)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "http.server did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{port}/{}", keys::receipt(w, sim::VERSION));
    let (o, text) = run(aggregator().args(["replay", "--receipt", &url]));
    server.kill().ok();
    server.wait().ok();
    assert!(o.status.success(), "{text}");
    assert!(text.contains(&format!("verdict: window {w} replays")), "{text}");

    // `plugin run`: the recorded component decides the same; the default decides otherwise.
    let (o, text) = run(aggregator()
        .args(["plugin", "run"])
        .arg(&rotation)
        .arg("--receipt")
        .arg(&receipt_file));
    assert!(o.status.success(), "{text}");
    assert!(text.contains("same decision as recorded"), "{text}");
    let default = dir.join("templar_default.wasm");
    std::fs::write(&default, EMBEDDED_DEFAULT).unwrap();
    let (o, text) = run(aggregator()
        .args(["plugin", "run"])
        .arg(&default)
        .arg("--receipt")
        .arg(&receipt_file));
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("peer-selection:") && text.contains("time-bounds:"),
        "{text}"
    );
    assert!(
        text.contains("peers added") || text.contains("peers removed") || text.contains("weight of uid"),
        "a different selection is shown as a diff: {text}"
    );

    // The plugin file gone (replaced on the server, say): without it the policy check is skipped, not failed; with
    // the daemon's policy cache, which keeps every component it ran by SHA-256, it runs again.
    std::fs::remove_file(&rotation).unwrap();
    let (o, text) = replay(&store, w, &[]);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("skipped  policy peer-selection (example-rotation") && text.contains("--components"),
        "{text}"
    );
    let cache = dir.join("sim").join("state").join("policy-cache");
    let (o, text) = replay(&store, w, &["--components", cache.to_str().unwrap()]);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("ok       policy peer-selection (example-rotation"),
        "{text}"
    );

    // One byte of one aggregated peer file: replay fails naming that uid.
    let receipt = Receipt::from_json(&std::fs::read(&receipt_file).unwrap(), "receipt").unwrap();
    let victim = receipt
        .peers
        .iter()
        .find(|p| p.outcome == PeerOutcome::Aggregated)
        .unwrap();
    let bucket = victim.bucket.as_ref().unwrap();
    let Ok(Endpoint::Local(root)) = bucket.endpoint.parse::<Endpoint>() else {
        panic!("a local endpoint: {}", bucket.endpoint)
    };
    let file = root.join(&bucket.name).join(&victim.file.as_ref().unwrap().key);
    let original = std::fs::read(&file).unwrap();
    flip_byte(&file, original.len() / 2);
    let (o, text) = replay(&store, w, &[]);
    assert_eq!(o.status.code(), Some(1), "{text}");
    let verdict = text.lines().find(|l| l.starts_with("verdict:")).unwrap();
    assert!(verdict.contains(&format!("uid {} input", victim.uid)), "{verdict}");
    std::fs::write(&file, &original).unwrap();

    // A server that stores a wrong aggregate with a receipt to match (its SHA-256 and size updated): the
    // recomputation names the parameter that differs.
    let aggregate = out_dir.join(keys::aggregate(w, sim::VERSION));
    let honest = std::fs::read(&aggregate).unwrap();
    let mut forged = Aggregate::read(&honest, Some(&model), &Limits::default()).unwrap();
    let (name, bits) = &mut forged.params[3];
    bits[0] ^= 1;
    let name = name.clone();
    let forged = forged.to_bytes().unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&receipt_file).unwrap()).unwrap();
    json["output"]["sha256"] = aggregator_receipt::sha256_hex(&forged).into();
    json["output"]["size"] = forged.len().into();
    let honest_receipt = std::fs::read(&receipt_file).unwrap();
    std::fs::write(&receipt_file, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    std::fs::write(&aggregate, &forged).unwrap();
    let (o, text) = replay(&store, w, &[]);
    assert_eq!(o.status.code(), Some(1), "{text}");
    let verdict = text.lines().find(|l| l.starts_with("verdict:")).unwrap();
    assert!(
        verdict.contains("recomputed on cpu") && verdict.contains(&format!("parameter {name} (#3): packed byte 0")),
        "{verdict}"
    );
    std::fs::write(&receipt_file, honest_receipt).unwrap();
    std::fs::write(&aggregate, honest).unwrap();

    // One byte of the aggregate: replay fails naming it.
    flip_byte(&aggregate, std::fs::metadata(&aggregate).unwrap().len() as usize - 100);
    let (o, text) = replay(&store, w, &[]);
    assert_eq!(o.status.code(), Some(1), "{text}");
    let verdict = text.lines().find(|l| l.starts_with("verdict:")).unwrap();
    assert!(verdict.contains(&keys::aggregate(w, sim::VERSION)), "{verdict}");
    std::fs::remove_dir_all(&dir).ok();
}
