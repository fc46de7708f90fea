//! Every key of the daemon's configuration can be set three ways: in the TOML file, by a flag, and by an environment
//! variable. The keys are enumerated from the configuration itself (`aggregator run --check-config` prints every key),
//! so a key added without its flag or variable fails here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn aggregator() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_aggregator"));
    // Only what each case sets: no AGGREGATOR_* from the environment running the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("AGGREGATOR_") || k.starts_with("R2_") {
            c.env_remove(k);
        }
    }
    c
}

/// The effective configuration as `run --check-config` prints it, flattened to `section.key` → value.
fn check_config(cmd: &mut Command) -> BTreeMap<String, toml::Value> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let mut flat = BTreeMap::new();
    flatten("", &table, &mut flat);
    flat
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            // `policy.settings` is a map of free keys: one configuration key.
            toml::Value::Table(t) if key != "policy.settings" => flatten(&key, t, out),
            v => {
                out.insert(key, v.clone());
            }
        }
    }
}

/// A valid, non-default value per key: (TOML text for the file, the flag's argument, what `--check-config` prints).
/// A key missing here fails the test: give it a value, a flag and a variable.
fn values(dir: &std::path::Path) -> BTreeMap<&'static str, (String, String, toml::Value)> {
    let s = |v: &str| (format!("{v:?}"), v.to_string(), toml::Value::String(v.to_string()));
    let i = |v: i64| (v.to_string(), v.to_string(), toml::Value::Integer(v));
    let f = |v: f64| (format!("{v:?}"), v.to_string(), toml::Value::Float(v));
    let d = dir.display().to_string();
    BTreeMap::from([
        ("chain_url", s("wss://chain.example:443")),
        ("netuid", i(7)),
        ("blocks_per_window", i(11)),
        ("version", s("0.2.74")),
        ("model", s("tiny")),
        ("state_dir", s(&format!("{d}/state"))),
        ("max_backfill", i(5)),
        ("retention_windows", i(50)),
        ("peer_endpoint", s("http://127.0.0.1:8333")),
        ("output.endpoint", s(&format!("{d}/out"))),
        ("output.name", s("my-bucket")),
        ("output.access_key_id", s("AKID")),
        (
            "output.secret",
            (
                "\"hunter2\"".into(),
                "hunter2".into(),
                toml::Value::String("<redacted>".into()),
            ),
        ),
        ("gather.timeout_s", f(12.5)),
        ("gather.concurrency", i(3)),
        ("policy.peer_selection", s(&format!("{d}/sel.wasm"))),
        ("policy.time_bounds", s(&format!("{d}/tb.wasm"))),
        ("policy.catchup_verification", s(&format!("{d}/cv.wasm"))),
        ("policy.contribution_weighting", s(&format!("{d}/cw.wasm"))),
        (
            "policy.settings",
            (
                "{ time_window_delta_seconds = \"12\" }".into(),
                "time_window_delta_seconds=12".into(),
                toml::Value::Table(toml::Table::from_iter([(
                    "time_window_delta_seconds".to_string(),
                    toml::Value::String("12".into()),
                )])),
            ),
        ),
        ("metrics", s("127.0.0.1:9100")),
        ("health.stale_blocks", i(9)),
        ("health.block_time_s", f(6.5)),
        ("status_windows", i(50)),
        ("policy_cache", s(&format!("{d}/cache"))),
        ("device", s("cpu")),
        ("chain_timeout_s", f(7.5)),
        ("storage_timeout_s", f(60.0)),
        (
            "archive_inputs",
            ("true".into(), "true".into(), toml::Value::Boolean(true)),
        ),
        ("memory_budget_mib", i(2048)),
        ("shards", i(4)),
        ("shard_wait_s", f(30.0)),
        ("policy.shadow.peer_selection", s(&format!("{d}/shadow-sel.wasm"))),
        ("policy.shadow.time_bounds", s(&format!("{d}/shadow-tb.wasm"))),
        (
            "policy.shadow_aggregate",
            ("true".into(), "true".into(), toml::Value::Boolean(true)),
        ),
    ])
}

/// The flag of a key: its path with `-` for `_` and `.`; the policy components drop `policy.`, and
/// `policy.settings` is the repeatable `--policy-setting`.
fn flag(key: &str) -> String {
    let name = match key {
        "policy.settings" => "policy-setting".to_string(),
        // `--version` is the server's own; the key `version` is the Templar version in object names.
        "version" => "templar-version".to_string(),
        k => k.strip_prefix("policy.").unwrap_or(k).replace(['.', '_'], "-"),
    };
    format!("--{name}")
}

/// The environment variable of a key: `AGGREGATOR_` and the flag's name in capitals (`AGGREGATOR_POLICY_SETTINGS`
/// takes `k=v,k2=v2`).
fn env_var(key: &str) -> String {
    let name = match key {
        "policy.settings" => "policy-settings".to_string(),
        k => flag(k).trim_start_matches('-').to_string(),
    };
    format!("AGGREGATOR_{}", name.replace('-', "_").to_uppercase())
}

#[test]
fn every_configuration_key_is_settable_by_file_flag_and_environment() {
    let dir = tempfile::Builder::new()
        .prefix("config-keys-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let defaults = check_config(aggregator().args(["run", "--check-config"]));
    let values = values(dir.path());
    let keys: Vec<&String> = defaults.keys().collect();
    let missing: Vec<&&String> = keys.iter().filter(|k| !values.contains_key(k.as_str())).collect();
    assert!(
        missing.is_empty(),
        "keys without a test value (and maybe a flag): {missing:?}"
    );
    assert!(keys.len() >= 20, "only {} keys: {keys:?}", keys.len());

    let file: PathBuf = dir.path().join("config.toml");
    for key in keys {
        let (in_file, arg, shown) = &values[key.as_str()];
        assert_ne!(&defaults[key], shown, "{key}: the test value is the default");
        // A key that is only valid with another (an output endpoint needs a bucket name) is set with it, by flag.
        let companion: &[&str] = match key.as_str() {
            "output.endpoint" => &["--output-name", "my-bucket"],
            "policy.shadow_aggregate" => &["--shadow-peer-selection", "cand.wasm"],
            _ => &[],
        };
        let check = |how: &str, cmd: &mut Command| {
            let got = check_config(cmd.args(companion));
            assert_eq!(&got[key], shown, "{key} set by {how}");
            for (other, v) in &got {
                if other != key && !(companion.len() == 2 && flag(other) == companion[0]) {
                    assert_eq!(v, &defaults[other], "setting {key} by {how} changed {other}");
                }
            }
        };
        // The file: `section.key` as a key in its table.
        let text = match key.rsplit_once('.') {
            Some((section, k)) => format!("[{section}]\n{k} = {in_file}\n"),
            None => format!("{key} = {in_file}\n"),
        };
        std::fs::write(&file, text).unwrap();
        check(
            "file",
            aggregator().args(["run", "--check-config", "--config"]).arg(&file),
        );
        check("flag", aggregator().args(["run", "--check-config", &flag(key), arg]));
        check(
            "environment",
            aggregator().args(["run", "--check-config"]).env(env_var(key), arg),
        );
    }
}

/// `shard_index` is absent by default (a shard then takes the ordinal ending its host name): set by file, flag or
/// environment beside `shards`, it is shown; one at or above `shards` is refused, naming both.
#[test]
fn shard_index_is_settable_and_checked_against_shards() {
    let dir = tempfile::Builder::new()
        .prefix("config-shard-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "shards = 4\nshard_index = 2\n").unwrap();
    let shown = |cmd: &mut Command| check_config(cmd).get("shard_index").cloned();
    assert_eq!(shown(aggregator().args(["run", "--check-config"])), None);
    assert_eq!(
        shown(aggregator().args(["run", "--check-config", "--config"]).arg(&file)),
        Some(toml::Value::Integer(2))
    );
    assert_eq!(
        shown(aggregator().args(["run", "--check-config", "--shards", "4", "--shard-index", "3"])),
        Some(toml::Value::Integer(3))
    );
    assert_eq!(
        shown(
            aggregator()
                .args(["run", "--check-config", "--shards", "4"])
                .env("AGGREGATOR_SHARD_INDEX", "1")
        ),
        Some(toml::Value::Integer(1))
    );
    let out = aggregator()
        .args(["run", "--check-config", "--shards", "4", "--shard-index", "4"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("shard_index 4") && err.contains("shards (4)"),
        "{err}"
    );
}

/// `policy.limits` is a table per policy kind (absent by default): the file's table, `--policy-limit KIND.FIELD=V`
/// (repeatable) and `AGGREGATOR_POLICY_LIMITS` (comma-separated) all set it; a kind or field that does not exist is
/// refused, naming it.
#[test]
fn policy_limits_are_settable_by_file_flag_and_environment() {
    let dir = tempfile::Builder::new()
        .prefix("config-limits-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[policy.limits.peer_selection]\nmemory_mib = 256\nfuel = 2000000000\n",
    )
    .unwrap();
    let want = |got: &BTreeMap<String, toml::Value>| {
        assert_eq!(
            got["policy.limits.peer_selection.memory_mib"],
            toml::Value::Integer(256)
        );
        assert_eq!(
            got["policy.limits.peer_selection.fuel"],
            toml::Value::Integer(2_000_000_000)
        );
    };
    want(&check_config(
        aggregator().args(["run", "--check-config", "--config"]).arg(&file),
    ));
    want(&check_config(aggregator().args([
        "run",
        "--check-config",
        "--policy-limit",
        "peer_selection.memory_mib=256",
        "--policy-limit",
        "peer_selection.fuel=2000000000",
    ])));
    want(&check_config(aggregator().args(["run", "--check-config"]).env(
        "AGGREGATOR_POLICY_LIMITS",
        "peer_selection.memory_mib=256,peer_selection.fuel=2000000000",
    )));
    for (arg, needle) in [
        ("peer_selektion.fuel=1", "peer_selektion"),
        ("peer_selection.stack=1", "stack"),
        ("peer_selection.memory_mib=99999", "memory_mib"),
    ] {
        let out = aggregator()
            .args(["run", "--check-config", "--policy-limit", arg])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{arg}: {err}");
    }
}
