"""Templar's process step and ours, side by side in one run on the same gradient files (`scripts/bench-compare`).

The peers' files are written once by torch in Templar's format (`gradient-{w}-{uid}-v0.2.73.pt`: top-k of random
block-DCT coefficients, indices as `torch.topk` returns them) and cached in the work directory. Then, for each run:

* Templar: the files are loaded with `torch.load(weights_only=True)` and normalised as its gather does (not timed,
  as gather is not part of the process step), then `neurons/aggregator.py`'s process loop is timed: per parameter
  `CompressDCT.batch_decompress`, `TransformDCT.decode`, `.sign()` and `tplr.neurons.pack_binary_tensor`, all taken
  from the Templar checkout (compress.py imported, pack_binary_tensor's source read out of neurons.py: importing the
  `tplr` package would pull in its whole dependency tree).
* Ours: `aggregator aggregate --timings` on the same files; its `aggregate` phase is the same step (normalise,
  scatter-mean, inverse DCT, sign, pack); the end-to-end time (read and check the files, aggregate, write the output)
  is printed as well.

Finally the packed bits of every parameter are compared (ours from the written `.pt`, read with torch). Prints a
table and exits 1 if any parameter differs.

With `--catchup N`, catch-up instead: `aggregator bench catchup --windows N --dir D` writes N random aggregates of
the model under `D/aggregates/` and times our replay of them (read + decode + apply per window); then Templar's
catch-up step is timed on the same files: `torch.load(weights_only=True)` (as `comms.s3_get_object` reads the
downloaded file), `neurons.process_loaded_data` (its `unpack_binary_tensor` per parameter; both read out of
neurons.py with `ast`), the grads set and `SGD.step()` (miner.py and validator.py: `SGD(params, lr=learning_rate)`,
weight decay 0). The bits of the result are checked by the catch-up tests against torch, not here.
"""

import argparse
import ast
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

MODELS = {
    # vocab, hidden, layers, heads, intermediate (the presets of host/model)
    "tiny": (256, 64, 2, 4, 128),
    "small": (32000, 512, 4, 8, 2048),
    "templar-1b": (32000, 2048, 16, 8, 8192),
}
WINDOW = 1000
VERSION = "0.2.73"


def parameters(model):
    """Names and shapes in LlamaForCausalLM.named_parameters() order (untied lm_head, kv heads = heads)."""
    vocab, h, layers, _, inter = MODELS[model]
    out = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(layers):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.self_attn.q_proj.weight", (h, h)),
            (f"{p}.self_attn.k_proj.weight", (h, h)),
            (f"{p}.self_attn.v_proj.weight", (h, h)),
            (f"{p}.self_attn.o_proj.weight", (h, h)),
            (f"{p}.mlp.gate_proj.weight", (inter, h)),
            (f"{p}.mlp.up_proj.weight", (inter, h)),
            (f"{p}.mlp.down_proj.weight", (h, inter)),
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
        ]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]


def load_templar(root):
    """Templar's compress module and pack_binary_tensor, from a checkout at `root`."""
    spec = importlib.util.spec_from_file_location("templar_compress", root / "src/tplr/compress.py")
    compress = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compress)
    source = (root / "src/tplr/neurons.py").read_text()
    node = next(
        n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "pack_binary_tensor"
    )
    namespace = {"torch": torch, "DeviceLikeType": object}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "neurons.py", "exec"), namespace)
    return compress, namespace["pack_binary_tensor"]


class Model(torch.nn.Module):
    """Parameters with the model's shapes (TransformDCT only reads `named_parameters()` for their shapes)."""

    def __init__(self, params):
        super().__init__()
        self.ps = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(s)) for _, s in params])


def synthesise(args, params, transform, work):
    """The peers' gradient files, written once per (model, peers, seed)."""
    stamp = work / "inputs.json"
    want = {"model": args.model, "peers": args.peers, "seed": args.seed, "version": VERSION}
    files = [work / f"gradient-{WINDOW}-{uid}-v{VERSION}.pt" for uid in range(1, args.peers + 1)]
    if stamp.exists() and json.loads(stamp.read_text()) == want and all(f.exists() for f in files):
        print(f"inputs: reusing {len(files)} files in {work}", file=sys.stderr)
        return files
    g = torch.Generator().manual_seed(args.seed)
    for uid, path in zip(range(1, args.peers + 1), files):
        started = time.time()
        state = {}
        for name, shape in params:
            enc = transform.encode(torch.randn(shape, generator=g))
            flat = enc.reshape(*enc.shape[:-2], -1) if enc.dim() > 2 else enc
            idx = torch.topk(flat.abs(), k=min(32, flat.shape[-1]), dim=-1, largest=True, sorted=False).indices
            state[name + "idxs"] = idx.to(torch.int16)
            state[name + "vals"] = torch.gather(flat, -1, idx).contiguous()
        state["metadata"] = {"pages_info": [], "window": WINDOW}
        torch.save({"state_dict": state, "global_step": 0}, path)
        print(f"inputs: peer {uid}/{args.peers} written in {time.time() - started:.1f} s", file=sys.stderr)
    stamp.write_text(json.dumps(want))
    return files


def templar_inputs(files, params):
    """What Templar's gather hands the process step: per key, the valid peers' tensors, vals normalised."""
    lists = {}
    for path in files:
        sd = torch.load(path, weights_only=True)["state_dict"]
        for name, _ in params:
            v = sd[name + "vals"]
            lists.setdefault(name + "idxs", []).append(sd[name + "idxs"])
            lists.setdefault(name + "vals", []).append(v / (torch.norm(v) + 1e-8))
    return lists


def templar_process(params, model, transform, compressor, pack, lists, shapes, totalks):
    """aggregator.py's process loop (20c293e4, lines 296-325)."""
    out = {}
    for (name, _), param in zip(params, model.ps):
        decompressed = compressor.batch_decompress(
            param, lists[name + "idxs"], lists[name + "vals"], shapes[name], totalks[name]
        )
        out[name] = pack(transform.decode(decompressed).sign().to("cpu"), device="cpu").cpu()
    return out


def differences(params, model, transform, compressor, lists, shapes, totalks, written, reference):
    """Bits that differ, and the largest |value| Templar decoded at one of them.

    Templar decodes with `einsum` (dense matrix products), we with Lee's fast DCT, so values within rounding of zero
    may take either sign (the reference fixtures list such positions as `near_zero`: `|x| < 1e-6`)."""
    count, worst = 0, 0.0
    for (name, _), param in zip(params, model.ps):
        a, b = written[name], reference[name]
        if torch.equal(a, b):
            continue
        pos = np.nonzero(np.unpackbits((a ^ b).numpy(), bitorder="little")[: param.numel()])[0]
        decoded = transform.decode(
            compressor.batch_decompress(param, lists[name + "idxs"], lists[name + "vals"], shapes[name], totalks[name])
        ).reshape(-1)
        count += len(pos)
        worst = max(worst, decoded[torch.from_numpy(pos)].abs().max().item())
    return count, worst


def neurons_functions(root, names):
    """Top-level functions of Templar's neurons.py by name, compiled alone (the tplr package is not imported)."""
    source = (root / "src/tplr/neurons.py").read_text()
    nodes = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name in names]

    class Quiet:
        def __getattr__(self, _):
            return lambda *a, **k: None

    namespace = {"torch": torch, "DeviceLikeType": object, "logger": Quiet(), "nn": torch.nn}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), "neurons.py", "exec"), namespace)
    return [namespace[n] for n in names]


def catchup(args, params):
    """Our catch-up replay and Templar's catch-up step on the same aggregate files."""
    process_loaded_data, _ = neurons_functions(Path(args.templar), ["process_loaded_data", "unpack_binary_tensor"])
    work = Path(args.work) / f"catchup-{args.model}"
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    cmd = [args.aggregator, "bench", "catchup", "--model", args.model, "--windows", str(args.catchup)]
    run = subprocess.run(cmd + ["--dir", str(work)], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"aggregator failed ({run.returncode}):\n{run.stderr}")
    rows = [l.split() for l in run.stdout.splitlines()]
    ours_t = [float(r[1]) / 1e3 for r in rows if len(r) == 2 and r[0].isdigit()]
    (work / "checkpoint-0.safetensors").unlink(missing_ok=True)

    class Named:
        def __init__(self):
            self.ps = [(n, torch.nn.Parameter(torch.zeros(s))) for n, s in params]

        def named_parameters(self):
            return iter(self.ps)

    model = Named()
    optimizer = torch.optim.SGD([p for _, p in model.ps], lr=4e-4)
    theirs_t = []
    for w in range(1, args.catchup + 1):
        started = time.time()
        agg = torch.load(work / "aggregates" / f"aggregator-{w}-v{VERSION}.pt", weights_only=True)
        d = process_loaded_data(model, agg)
        for name, p in model.ps:
            p.grad = d["tensors"][name]
        optimizer.step()
        theirs_t.append(time.time() - started)
        del agg, d
        print(f"window {w}: Templar {theirs_t[-1]:.2f} s, ours {ours_t[w - 1]:.3f} s", file=sys.stderr)
    numel = sum(p.numel() for _, p in model.ps)
    t_med, o_med = statistics.median(theirs_t), statistics.median(ours_t)
    print(f"\nmodel {args.model} ({numel} parameters), {args.catchup} windows, {args.threads} threads, torch "
          f"{torch.__version__}; load average before the runs {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'per window (read + decode + apply)':38}{'median s':>10}{'min s':>10}")
    print(f"{'Templar catch-up step (torch)':38}{t_med:>10.3f}{min(theirs_t):>10.3f}")
    print(f"{'ours: aggregator bench catchup':38}{o_med:>10.3f}{min(ours_t):>10.3f}")
    print(f"ratio (median): {t_med / o_med:.1f}x")


def ours(args, files, model_json, out):
    cmd = [args.aggregator, "--device", "cpu", "aggregate", "--timings", "--model", str(model_json)]
    cmd += ["--window", str(WINDOW), "--out", str(out)] + [str(f) for f in files]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    started = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - started
    if run.returncode != 0:
        sys.exit(f"aggregator failed ({run.returncode}):\n{run.stderr}")
    line = next(l for l in run.stderr.splitlines() if l.startswith("timings:"))
    aggregate = float(line.split("aggregate ")[1].split(" s")[0])
    return aggregate, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aggregator", required=True, help="the aggregator binary (release build)")
    ap.add_argument("--templar", default=os.environ.get("TEMPLAR"), help="Templar checkout at 20c293e4 ($TEMPLAR)")
    ap.add_argument("--model", default="templar-1b", choices=sorted(MODELS))
    ap.add_argument("--peers", type=int, default=15)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch and for ours")
    ap.add_argument("--seed", type=int, default=2073)
    ap.add_argument("--work", default="target/bench-compare", help="where the inputs are cached")
    ap.add_argument("--catchup", type=int, metavar="N", help="compare catch-up over N windows instead")
    args = ap.parse_args()
    if not args.templar:
        sys.exit("--templar (or TEMPLAR) must name a checkout of github.com/tplr-ai/templar at commit 20c293e4")
    torch.set_num_threads(args.threads)
    if args.catchup:
        return catchup(args, parameters(args.model))
    compress, pack = load_templar(Path(args.templar))
    params = parameters(args.model)
    model = Model(params)
    transform, compressor = compress.TransformDCT(model, 64), compress.CompressDCT()
    work = Path(args.work) / f"{args.model}-{args.peers}"
    work.mkdir(parents=True, exist_ok=True)
    model_json = work / "model.json"
    model_json.write_text(
        json.dumps({"target_chunk": 64, "topk": 32, "parameters": [{"name": n, "shape": list(s)} for n, s in params]})
    )
    files = synthesise(args, params, transform, work)
    shapes, totalks = {}, {}
    for (name, _), p in zip(params, model.ps):
        enc = transform.encode(torch.zeros_like(p))
        shapes[name] = enc.shape
        totalks[name] = enc.shape[-1] * enc.shape[-2] if enc.dim() > 2 else enc.shape[-1]
    lists = templar_inputs(files, params)
    load = os.getloadavg()
    theirs_t, ours_t, ours_wall, reference = [], [], [], None
    out = work / f"aggregator-{WINDOW}-v{VERSION}.pt"
    for run in range(args.runs):
        started = time.time()
        reference = templar_process(params, model, transform, compressor, pack, lists, shapes, totalks)
        theirs_t.append(time.time() - started)
        a, w = ours(args, files, model_json, out)
        ours_t.append(a)
        ours_wall.append(w)
        print(
            f"run {run + 1}: Templar {theirs_t[-1]:.2f} s, ours {a:.3f} s (end to end {w:.2f} s)",
            file=sys.stderr,
        )
    written = torch.load(out, weights_only=True)["state_dict"]
    count, worst = differences(params, model, transform, compressor, lists, shapes, totalks, written, reference)
    digest = hashlib.sha256(b"".join(written[n].numpy().tobytes() for n, _ in params)).hexdigest()
    numel = sum(p.numel() for p in model.ps)
    t_med, o_med = statistics.median(theirs_t), statistics.median(ours_t)
    print(f"\nmodel {args.model} ({numel} elements), {args.peers} peers, {args.threads} threads, torch "
          f"{torch.__version__}; load average before the runs {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'':34}{'median s':>10}{'min s':>10}")
    print(f"{'Templar process step (torch)':34}{t_med:>10.3f}{min(theirs_t):>10.3f}")
    print(f"{'ours: aggregate':34}{o_med:>10.3f}{min(ours_t):>10.3f}")
    print(f"{'ours: end to end (read..write)':34}{statistics.median(ours_wall):>10.3f}{min(ours_wall):>10.3f}")
    print(f"ratio (median, process step): {t_med / o_med:.1f}x; end to end vs Templar's process step alone: "
          f"{t_med / statistics.median(ours_wall):.1f}x")
    if count == 0:
        print(f"packed bits: identical to Templar's in every parameter; ours sha256 {digest[:16]}")
    else:
        print(f"packed bits: {count} of {numel} differ from Templar's, all where its value is within {worst:.1e} of "
              f"zero; ours sha256 {digest[:16]}")
    if worst >= 1e-6:
        sys.exit("a bit differs where Templar's value is not within rounding of zero")


if __name__ == "__main__":
    main()
