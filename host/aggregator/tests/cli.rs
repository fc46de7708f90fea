//! The `aggregator` binary as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn aggregator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
}

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

#[test]
fn vectors_check_passes_the_shared_vectors() {
    let out = aggregator()
        .args(["vectors", "check"])
        .arg(shared().join("vectors"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().last(), Some("44 passed, 0 failed"));
}

#[test]
fn vectors_check_reports_failures_and_exits_1() {
    // A manifest whose split case expects a wrong chunk.
    let dir = std::env::temp_dir().join(format!("cli-vectors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = shared().join("vectors");
    let manifest = std::fs::read_to_string(src.join("manifest.json")).unwrap();
    let tampered = manifest.replacen(
        r#""n": 65,
     "target_chunk": 64,
     "chunk": 13"#,
        r#""n": 65,
     "target_chunk": 64,
     "chunk": 5"#,
        1,
    );
    assert_ne!(tampered, manifest, "the split entry for n=65 is in the manifest");
    std::fs::write(dir.join("manifest.json"), tampered).unwrap();
    std::fs::copy(src.join("tensors.safetensors"), dir.join("tensors.safetensors")).unwrap();
    let out = aggregator().args(["vectors", "check"]).arg(&dir).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL split (split): split(65, 64) = 13, expected 5"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("43 passed, 1 failed"));
}

#[test]
fn vectors_check_on_a_missing_directory_is_a_clear_error() {
    let out = aggregator()
        .args(["vectors", "check", "/nonexistent/vectors"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a runtime error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/vectors/manifest.json"), "{stderr}");
}

#[test]
fn bench_process_prints_a_table() {
    let out = aggregator()
        .args([
            "bench",
            "process",
            "--model",
            "tiny",
            "--peers",
            "3",
            "--runs",
            "2",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for needle in ["256x64", "total", "peak RSS", "load average", "identical in all 2 runs"] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

/// Runs `bench window` with `args` (two runs) against a real SeaweedFS from the tests' venv; its stdout and the two
/// rows of its table.
fn bench_window_rows(args: &[&str]) -> (String, Vec<String>) {
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("seaweedfs-venv");
    let out = aggregator()
        .args(["--device", "cpu", "bench", "window", "--runs", "2"])
        .args(args)
        .arg("--seaweed-venv")
        .arg(&venv)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<String> = stdout
        .lines()
        .filter(|l| l.split_whitespace().next().is_some_and(|w| w == "1" || w == "2"))
        .map(String::from)
        .collect();
    assert_eq!(rows.len(), 2, "one row per run:\n{stdout}");
    (stdout, rows)
}

/// `bench window` against a real SeaweedFS (the tests' venv): every phase timed, both critical-path figures printed.
#[test]
fn bench_window_times_every_phase_against_seaweedfs() {
    let (stdout, rows) = bench_window_rows(&["--model", "tiny", "--peers", "3"]);
    for row in rows {
        let cols: Vec<f64> = row.split_whitespace().skip(1).map(|c| c.parse().unwrap()).collect();
        assert_eq!(cols.len(), 7, "{row}");
        // whole = gather + process + encode + put; per-peer = last file + process + encode + put (rounding aside).
        assert!(
            (cols[5] - (cols[0] + cols[2] + cols[3] + cols[4])).abs() < 0.003,
            "{row}"
        );
        assert!(
            (cols[6] - (cols[1] + cols[2] + cols[3] + cols[4])).abs() < 0.003,
            "{row}"
        );
    }
    for needle in [
        "3 peers x",
        "whole window after the last upload",
        "with per-peer gather",
        "peak RSS",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

/// `bench window --memory-budget-mib`: the daemon's budgeted window (`RangedWindow`) on random top-k peers, one row
/// per run whose whole is its phases, a peak RSS per run and the verdict against the budget.
#[test]
fn bench_window_within_a_budget_reports_the_peak_against_it() {
    let (stdout, rows) = bench_window_rows(&[
        "--model",
        "small",
        "--peers",
        "3",
        "--synthesis",
        "random",
        "--memory-budget-mib",
        "300",
    ]);
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        // run, groups, judge, write, complete, whole, peak RSS ("N MiB").
        assert_eq!(cols.len(), 8, "{row}");
        let t: Vec<f64> = cols[2..6].iter().map(|c| c.parse().unwrap()).collect();
        assert!((t[3] - (t[0] + t[1] + t[2])).abs() < 0.003, "{row}");
        // The budget leaves nothing beyond the fixed overhead for `small`: one parameter per group.
        assert_eq!(cols[1], "39", "{row}");
        let peak: u64 = cols[6].parse().unwrap();
        assert!(peak > 0 && peak <= 300, "{row}");
    }
    assert!(stdout.contains("3 peers x"), "{stdout}");
    assert!(stdout.contains("budget 300 MiB in 39 groups"), "{stdout}");
    assert!(stdout.contains("(within the budget;"), "{stdout}");
}

/// `bench catchup --dir` keeps the aggregates it replayed where `scripts/bench-compare --catchup` reads them.
#[test]
fn bench_catchup_keeps_its_aggregates_with_dir() {
    let dir = std::env::temp_dir().join(format!("cli-bench-catchup-{}", std::process::id()));
    let out = aggregator()
        .args(["bench", "catchup", "--model", "tiny", "--windows", "3", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("3 windows of tiny"), "{stdout}");
    for w in 1..=3 {
        let file = dir.join(format!("aggregates/aggregator-{w}-v0.2.73.pt"));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let model = aggregator_model::ModelSpec::load("tiny").unwrap();
        let agg =
            aggregator_codec::Aggregate::read(&bytes, Some(&model), &aggregator_codec::Limits::default()).unwrap();
        assert_eq!(agg.window, w);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `aggregator aggregate` on the fixture gradients reproduces the fixture aggregate: every parameter's packed bytes
/// (bits at the reference's near-zero positions may differ), the metadata keys in order and their types, and it loads
/// in Python under torch's `weights_only` rules.
#[test]
fn aggregate_reproduces_the_reference_aggregate() {
    use aggregator_codec::{Aggregate, Limits, PtFile};
    let fixtures = shared().join("fixtures/templar-0.2.73");
    let out_dir = std::env::temp_dir().join(format!("cli-aggregate-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let out_file = out_dir.join("aggregator-100203-v0.2.73.pt");
    let mut cmd = aggregator();
    cmd.args(["aggregate", "--model"]).arg(fixtures.join("model.json"));
    cmd.args(["--window", "100203", "--peers", "3,7,11,19", "--out"])
        .arg(&out_file);
    for uid in [3, 7, 11] {
        cmd.arg(fixtures.join(format!("gradient-100203-{uid}-v0.2.73.pt")));
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}{stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("uid 19: skipped: missing"), "{stderr}");

    let ours_bytes = std::fs::read(&out_file).unwrap();
    let reference_bytes = std::fs::read(fixtures.join("aggregator-100203-v0.2.73.pt")).unwrap();
    let limits = Limits::default();
    let ours = Aggregate::read(&ours_bytes, None, &limits).unwrap();
    let reference = Aggregate::read(&reference_bytes, None, &limits).unwrap();
    assert_eq!(
        (ours.window, &ours.version, &ours.skipped_uids),
        (100203, &"0.2.73".to_string(), &vec![19])
    );
    assert_eq!(
        (ours.success_rate, ours.global_step),
        (reference.success_rate, reference.global_step)
    );

    // Packed bytes, parameter by parameter, against the expected tensors and their near-zero positions.
    let expected_bytes = std::fs::read(fixtures.join("aggregator-100203-v0.2.73.expected.safetensors")).unwrap();
    let expected = safetensors::SafeTensors::deserialize(&expected_bytes).unwrap();
    let names: Vec<&str> = ours.params.iter().map(|(n, _)| n.as_str()).collect();
    let ref_names: Vec<&str> = reference.params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ref_names, "same parameters in the same order");
    for (name, packed) in &ours.params {
        let want = expected.tensor(name).unwrap();
        let mut mask = vec![0u8; packed.len()];
        if let Ok(nz) = expected.tensor(&format!("near_zero/{name}")) {
            for p in nz
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
            {
                mask[p / 8] |= 1 << (p % 8);
            }
        }
        let differing: usize = packed
            .iter()
            .zip(want.data())
            .zip(&mask)
            .map(|((a, b), m)| ((a ^ b) & !m).count_ones() as usize)
            .sum();
        assert_eq!(
            differing, 0,
            "{name}: {differing} bits differ outside the near-zero positions"
        );
    }

    // Metadata keys in the same order, with the same types (numpy int64 scalars read as ints).
    let outline = |bytes: &[u8]| -> Vec<(String, &'static str)> {
        let f = PtFile::parse(bytes, &limits).unwrap();
        let sd = f.get(f.root(), "state_dict", "root").unwrap().unwrap();
        let items = f.dict(sd, "state_dict").unwrap().to_vec();
        items
            .into_iter()
            .map(|(k, v)| {
                let kind = match f.node(v) {
                    aggregator_codec::pickle::Node::List(items) => items.first().map_or("list", |&i| match f.node(i) {
                        aggregator_codec::pickle::Node::Int(_) => "list[int]",
                        _ => "list[other]",
                    }),
                    other => other.kind(),
                };
                (f.str(k, "key").unwrap().to_string(), kind)
            })
            .collect()
    };
    assert_eq!(outline(&ours_bytes), outline(&reference_bytes));

    let py = Command::new("python3")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/check_pt.py"))
        .args(["aggregate", out_file.to_str().unwrap(), "--params", "21"])
        .output()
        .expect("python3 (standard library only) runs the structure check");
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stdout));
    std::fs::remove_dir_all(&out_dir).ok();
}

#[test]
fn aggregate_skips_bad_files_with_reasons() {
    let fixtures = shared().join("fixtures/templar-0.2.73");
    let dir = std::env::temp_dir().join(format!("cli-aggregate-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A malformed peer file under a proper name: it is skipped with its reason; the others are aggregated.
    std::fs::copy(
        fixtures.join("bad/vals-nan.pt"),
        dir.join("gradient-100203-5-v0.2.73.pt"),
    )
    .unwrap();
    std::fs::copy(
        fixtures.join("bad/forbidden-global.pt"),
        dir.join("gradient-100203-6-v0.2.73.pt"),
    )
    .unwrap();
    let out_file = dir.join("out.pt");
    let out = aggregator()
        .args(["aggregate", "--model"])
        .arg(fixtures.join("model.json"))
        .args(["--window", "100203", "--out"])
        .arg(&out_file)
        .arg(fixtures.join("gradient-100203-3-v0.2.73.pt"))
        .arg(dir.join("gradient-100203-5-v0.2.73.pt"))
        .arg(dir.join("gradient-100203-6-v0.2.73.pt"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("uid 5: skipped:") && stderr.contains("vals[11] = NaN"),
        "{stderr}"
    );
    assert!(
        stderr.contains("uid 6: skipped:") && stderr.contains("posix.system"),
        "{stderr}"
    );
    let a = aggregator_codec::Aggregate::read(&std::fs::read(&out_file).unwrap(), None, &Default::default()).unwrap();
    assert_eq!(a.skipped_uids, [5, 6]);
    assert!((a.success_rate - 1.0 / 3.0).abs() < 1e-12);
    // Only bad files: exit 1 and no output file.
    let none = dir.join("none.pt");
    let out = aggregator()
        .args(["aggregate", "--model"])
        .arg(fixtures.join("model.json"))
        .args(["--window", "100203", "--out"])
        .arg(&none)
        .arg(dir.join("gradient-100203-5-v0.2.73.pt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!none.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn codec_inspect_reports_bad_files_in_one_line() {
    let fixtures = shared().join("fixtures/templar-0.2.73");
    let ok = aggregator()
        .args(["codec", "inspect"])
        .arg(fixtures.join("gradient-100203-3-v0.2.73.pt"))
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("tensor int16 [4, 1, 32]"));
    let bad = aggregator()
        .args(["codec", "inspect", "--model"])
        .arg(fixtures.join("model.json"))
        .arg(fixtures.join("bad/idxs-out-of-range.pt"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("idxs[7] = 4096"), "{stderr}");
}

#[test]
fn plugin_check_gives_a_verdict_and_an_exit_status() {
    let out_dir = std::env::temp_dir().join(format!("cli-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let good = out_dir.join("example.wasm");
    std::fs::write(&good, aggregator_policy::EXAMPLE_ROTATION).unwrap();
    let out = aggregator().args(["plugin", "check"]).arg(&good).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("implements: world peer-selector of templar:policy@1.1.0"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("verdict: ok"));
    // The contribution-weighting example: its world, and its answer to the host's golden input.
    let robust = out_dir.join("robust.wasm");
    std::fs::write(&robust, aggregator_policy::EXAMPLE_ROBUST).unwrap();
    let out = aggregator()
        .args(["plugin", "check", "--world", "contribution-weigher"])
        .arg(&robust)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("implements: world contribution-weigher of templar:policy@1.1.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("contribution-weighting: 15 weights, 3 zero"),
        "{stdout}"
    );
    let wrong_world = aggregator()
        .args(["plugin", "check", "--world", "bundle"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(wrong_world.status.code(), Some(1));
    let garbage = out_dir.join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x0d\0\x01\0 truncated").unwrap();
    let out = aggregator().args(["plugin", "check"]).arg(&garbage).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("verdict: refused: "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::remove_dir_all(&out_dir).ok();
}

#[test]
fn devnet_help_documents_the_seed_format_and_the_devnet_serves() {
    let help = aggregator().args(["devnet", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success());
    for needle in [
        "Seed file (JSON",
        "\"neurons\"",
        "\"raw_commitments\"",
        "\"commitment\"",
        "--block-time",
    ] {
        assert!(text.contains(needle), "help lacks {needle}: {text}");
    }

    let dir = std::env::temp_dir().join(format!("cli-devnet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = dir.join("seed.json");
    std::fs::write(
        &seed,
        r#"{"netuid": 3, "neurons": [{"uid": 0, "stake": 1}, {"uid": 1, "stake": 2}]}"#,
    )
    .unwrap();
    let mut child = aggregator()
        .args(["devnet", "--listen", "127.0.0.1:0", "--block-time", "0.2", "--seed"])
        .arg(&seed)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.starts_with("devnet ready at ws://127.0.0.1:") && line.contains("subnet 3, 2 neurons"),
        "{line}"
    );

    std::fs::write(&seed, r#"{"netuid": 3, "neurons": [{"uid": 0, "hotkey": "0x12"}]}"#).unwrap();
    let bad = aggregator().args(["devnet", "--seed"]).arg(&seed).output().unwrap();
    assert_eq!(bad.status.code(), Some(1), "a runtime error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("neurons[0].hotkey"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_refuses_an_unknown_device_in_the_config_file() {
    let dir = std::env::temp_dir().join(format!("cli-run-device-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("aggregator.toml");
    std::fs::write(&config, "model = \"tiny\"\ndevice = \"gpu\"\n").unwrap();
    let out = aggregator().args(["run", "--config"]).arg(&config).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("device \"gpu\" must be one of cpu, wgpu, cuda, auto"),
        "{stderr}"
    );
}
