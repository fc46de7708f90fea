//! Hostile uploads through the real binary, measured from outside: peak RSS and CPU time of the process, read with
//! `wait4`. The memory bomb of a single 2.6 MB upload (300 000 `set()` copies of a 400 000-item list) once drove
//! `codec inspect` and `aggregate` past 3 GB; it must now be refused in well under a second and 100 MB.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What a finished child used.
struct Measured {
    code: i32,
    stdout: String,
    stderr: String,
    max_rss_bytes: u64,
    cpu: Duration,
}

/// Runs `cmd` to its end with stdout and stderr in files under `dir`, and returns its peak RSS and CPU time.
fn measure(mut cmd: Command, dir: &Path) -> Measured {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    cmd.stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    // Reaped by wait4 below, which std's Child cannot do while keeping the rusage.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    let mut status = 0;
    // SAFETY: plain FFI; `rusage` is zeroed, fully written by the kernel on success.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    let tv = |t: libc::timeval| Duration::from_micros(t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64);
    Measured {
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        stdout: std::fs::read_to_string(out).unwrap(),
        stderr: std::fs::read_to_string(err).unwrap(),
        // Linux reports ru_maxrss in KiB.
        max_rss_bytes: usage.ru_maxrss as u64 * 1024,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
    }
}

/// The issue's reproducer, in a complete torch-shaped archive (with `version` and `byteorder`, so that it reaches the
/// pickle machine): written by Python's `zipfile`, as an attacker would.
fn write_bomb(path: &Path) {
    let script = r#"
import sys, zipfile
N, R = 400_000, 300_000
pkl = b"\x80\x02Nq\x00](" + b"h\x00" * N + b"eq\x01cbuiltins\nset\nq\x02" + b"h\x02h\x01\x85R" * R + b"."
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("archive/data.pkl", pkl)
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
"#;
    let ok = Command::new("python3").args(["-c", script]).arg(path).status().unwrap();
    assert!(ok.success());
    let size = std::fs::metadata(path).unwrap().len();
    assert!((2_500_000..2_800_000).contains(&size), "{size} bytes");
}

#[test]
fn one_hostile_upload_costs_under_a_second_and_100_mb() {
    let dir = tmp("cli-bomb");
    let bomb = dir.join("gradient-100203-5-v0.2.73.pt");
    write_bomb(&bomb);
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/templar-0.2.73");
    let good = fixtures.join("gradient-100203-3-v0.2.73.pt");
    let model = fixtures.join("model.json");

    let mut inspect = Command::new(env!("CARGO_BIN_EXE_aggregator"));
    inspect.args(["codec", "inspect"]).arg(&bomb).args(["--model", "tiny"]);
    let mut aggregate = Command::new(env!("CARGO_BIN_EXE_aggregator"));
    aggregate
        .args(["--device", "cpu", "aggregate", "--model"])
        .arg(&model)
        .args(["--window", "100203", "--out"])
        .arg(dir.join("aggregator-100203-v0.2.73.pt"))
        .arg(&good)
        .arg(&bomb);
    for (name, cmd, expect) in [("codec inspect", inspect, 1), ("aggregate", aggregate, 0)] {
        let m = measure(cmd, &dir);
        eprintln!(
            "{name}: exit {}, peak RSS {} MB, CPU {:?}",
            m.code,
            m.max_rss_bytes >> 20,
            m.cpu
        );
        assert_eq!(m.code, expect, "{name}: {}\n{}", m.stdout, m.stderr);
        assert!(
            m.max_rss_bytes < 100 << 20,
            "{name}: peak RSS {} MB",
            m.max_rss_bytes >> 20
        );
        assert!(m.cpu < Duration::from_secs(1), "{name}: CPU {:?}", m.cpu);
        // `codec inspect` reads under the default limits, so the program reaches the pickle machine and its copy
        // budget; `aggregate` reads under a gradient's limits, whose data.pkl size limit may refuse it first.
        let text = format!("{}{}", m.stdout, m.stderr);
        assert!(
            text.contains("bytes copied by pickle REDUCEs") || (name == "aggregate" && text.contains("data.pkl size")),
            "{name}: {text}"
        );
    }
    // The good peer was aggregated, the bomb skipped with its reason.
    assert!(dir.join("aggregator-100203-v0.2.73.pt").is_file());

    std::fs::remove_dir_all(&dir).ok();
}
