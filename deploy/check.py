#!/usr/bin/env python3
"""Checks of the deployment artifacts under deploy/, run by host/aggregator/tests/operations.rs (and so by .ci/run).

  check.py static --binary PATH   hadolint on the Dockerfiles, kubernetes-validate (strict) on deploy/k8s, and
                                  `systemd-analyze verify` on the unit (in a scratch root holding PATH as its
                                  ExecStart and the machine's own system units). Any finding fails.
  check.py promql --scrape FILE   every PromQL expression of the Grafana dashboard and the alert rules parses
                                  (promql-parser, the Rust parser's Python binding) and names only series present in
                                  FILE (a /metrics scrape of the daemon), with label names and values that occur
                                  on them there. Prometheus's own `up` is allowed.

The tools come from PyPI (scripts/deploy-tools installs them into target/deploy-venv).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
# Series Prometheus itself adds to every target.
SYNTHETIC = {"up": {"job", "instance"}}


def fail(msg):
    print(f"FAIL {msg}", file=sys.stderr)
    return 1


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return r.returncode, (r.stdout + r.stderr).strip()


def static(binary):
    errors = 0
    # Dockerfiles: any hadolint finding fails (the default threshold).
    for f in sorted(DEPLOY.glob("Dockerfile*")):
        rc, out = run([str(BIN / "hadolint"), str(f)])
        if rc != 0 or out:
            errors += fail(f"hadolint {f.name}: {out}")
        else:
            print(f"ok   hadolint {f.name}")
    # Kubernetes manifests against the API schemas, rejecting unknown fields.
    manifests = sorted((DEPLOY / "k8s").glob("*.yaml"))
    rc, out = run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", *map(str, manifests)])
    if rc != 0 or out:
        errors += fail(f"kubernetes-validate: {out}")
    else:
        print(f"ok   kubernetes-validate --strict: {', '.join(m.name for m in manifests)}")
    # A sharded StatefulSet: one pod per shard (`replicas` equal to AGGREGATOR_SHARDS), shard_index left to the pod's
    # ordinal (no AGGREGATOR_SHARD_INDEX), and its serviceName a headless Service among the manifests.
    import yaml

    docs = [d for m in manifests for d in yaml.safe_load_all(m.read_text()) if d]
    headless = {d["metadata"]["name"] for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"}
    for d in docs:
        if d["kind"] != "StatefulSet":
            continue
        name = d["metadata"]["name"]
        env = {e["name"]: e.get("value") for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
        if "AGGREGATOR_SHARDS" not in env:
            continue
        shards, replicas = int(env["AGGREGATOR_SHARDS"]), d["spec"]["replicas"]
        if shards != replicas:
            errors += fail(f"{name}: {replicas} replicas for AGGREGATOR_SHARDS={shards}")
        elif "AGGREGATOR_SHARD_INDEX" in env:
            errors += fail(f"{name}: AGGREGATOR_SHARD_INDEX set for every pod (leave it to the pod's ordinal)")
        elif d["spec"]["serviceName"] not in headless:
            errors += fail(f"{name}: serviceName {d['spec']['serviceName']} is not a headless Service here")
        else:
            print(f"ok   {name}: {replicas} shards, one per pod, headless service {d['spec']['serviceName']}")
    # The systemd unit, with its ExecStart present in a scratch root (systemd-analyze checks that it is executable)
    # and the machine's system units beside it (for the targets it orders against).
    unit = DEPLOY / "systemd" / "aggregator.service"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        errors += fail("systemd-analyze is not installed (Debian: systemd)")
    else:
        exec_start = re.search(r"^ExecStart=(\S+)", unit.read_text(), re.M).group(1)
        with tempfile.TemporaryDirectory() as root:
            r = Path(root)
            target = r / exec_start.lstrip("/")
            target.parent.mkdir(parents=True)
            try:
                os.link(binary, target)
            except OSError:
                shutil.copy(binary, target)
            (r / "etc/systemd/system").mkdir(parents=True)
            shutil.copy(unit, r / "etc/systemd/system" / unit.name)
            (r / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
            os.symlink("/lib/systemd/system", r / "usr/lib/systemd/system")
            rc, out = run([analyze, "verify", f"--root={root}", "--man=no", unit.name])
        if rc != 0 or out:
            errors += fail(f"systemd-analyze verify {unit.name}: {out}")
        else:
            print(f"ok   systemd-analyze verify {unit.name}")
    return errors


def parse_scrape(text):
    """{series name: {label name: set of values}} from the text exposition."""
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
        if not m:
            continue
        labels = series.setdefault(m.group(1), {})
        for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""):
            labels.setdefault(k, set()).add(v)
    return series


def selectors(node):
    """Every VectorSelector in a parsed expression."""
    import promql_parser as p

    if isinstance(node, p.VectorSelector):
        yield node
        return
    for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield from selectors(child)
    for arg in getattr(node, "args", None) or []:
        yield from selectors(arg)


def expressions():
    import yaml

    dash = json.loads((DEPLOY / "grafana" / "aggregator.json").read_text())
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            yield f"dashboard panel {panel['title']!r} {t['refId']}", t["expr"]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]


def promql(scrape):
    import promql_parser as p

    series = parse_scrape(Path(scrape).read_text())
    if not any(name.startswith("aggregator_") for name in series):
        return fail(f"{scrape}: no aggregator_ series (not a scrape of the daemon?)")
    errors = checked = 0
    for where, expr in expressions():
        checked += 1
        try:
            tree = p.parse(expr)
        except Exception as e:  # the parser's error names the position
            errors += fail(f"{where}: does not parse: {e}: {expr}")
            continue
        for sel in selectors(tree):
            name = sel.name
            if name is None:
                errors += fail(f"{where}: a selector without a metric name: {expr}")
                continue
            if name in SYNTHETIC:
                known = {k: None for k in SYNTHETIC[name]}
            elif name in series:
                known = series[name]
            else:
                errors += fail(f"{where}: {name} is not exported by the daemon: {expr}")
                continue
            for m in sel.matchers.matchers:
                if m.name == "__name__":
                    continue
                if m.name not in known:
                    errors += fail(f"{where}: {name} has no label {m.name!r} (it has {sorted(known)})")
                elif known[m.name] is not None and str(m.op).endswith("Equal") and "Not" not in str(m.op) \
                        and m.value not in known[m.name]:
                    errors += fail(f"{where}: {name}{{{m.name}={m.value!r}}} never occurs (values: {sorted(known[m.name])})")
    print(f"ok   {checked} PromQL expressions checked against {len(series)} series" if errors == 0 else "")
    return errors


def main(argv):
    if len(argv) == 3 and argv[0] == "static" and argv[1] == "--binary":
        return static(argv[2])
    if len(argv) == 3 and argv[0] == "promql" and argv[1] == "--scrape":
        return promql(argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
