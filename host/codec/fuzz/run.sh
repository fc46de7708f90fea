#!/usr/bin/env bash
# Fuzzes the .pt reader. Usage: host/codec/fuzz/run.sh [read_pt|pickle] [seconds]
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds come from ../shared/fixtures and
# from seeds.py (the shapes of past memory bombs and of archives torch refuses). Limits: 256 MB of RSS and 10 s per
# input; either is a finding.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:-read_pt}
seconds=${2:-600}
fixtures=../../../../shared/fixtures/templar-0.2.73
mkdir -p "corpus/$target"
if [ "$target" = read_pt ]; then
  cp -n "$fixtures"/*.pt "$fixtures"/bad/*.pt "corpus/$target/" 2>/dev/null || true
else
  python3 - "$fixtures" "corpus/$target" <<'PY'
import sys, zipfile, pathlib
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for f in list(src.glob("*.pt")) + list(src.glob("bad/*.pt")):
    try:
        z = zipfile.ZipFile(f)
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        (dst / (f.stem + ".pkl")).write_bytes(z.read(name))
    except Exception:
        pass
PY
fi
python3 seeds.py "$target" "corpus/$target"
# ASan keeps up to 256 MB of freed memory resident (its quarantine), which counts against -rss_limit_mb and after a
# minute or two trips it with no input at fault (the fuzzer's own bookkeeping then allocates past the limit). A small
# quarantine keeps the RSS limit about what one input costs; -malloc_limit_mb catches any single large allocation.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=16}"
exec cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=256 -malloc_limit_mb=256 -timeout=10 \
  -print_final_stats=1
