"""Generates host/vectors/data/overflow: `aggregate` cases (templar-vectors/1, as ../shared/vectors) where a peer's
float32 sum of squares overflows, or nearly does, or underflows, computed with Templar 0.2.73's own code.

Usage (torch 2.6, einops, safetensors; TEMPLAR = a checkout of tplr-ai/templar at 20c293e4):
    python host/vectors/gen/overflow.py $TEMPLAR host/vectors/data/overflow

The reference steps are Templar's: gather normalisation `v / (torch.norm(v) + 1e-8)` (src/tplr/comms.py:1042-1057),
`CompressDCT.batch_decompress` (scatter-mean), `TransformDCT.decode`, and `pack_binary_tensor(g.sign())`
(src/tplr/neurons.py:476), loaded from the checkout's files; nothing here re-implements them.
"""

import ast
import importlib.util
import json
import pathlib
import sys

import torch
from safetensors.torch import save_file

templar, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
spec = importlib.util.spec_from_file_location("compress", templar / "src/tplr/compress.py")
compress = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compress)
# pack_binary_tensor alone (neurons.py imports the whole node): its source, executed with torch only.
tree = ast.parse((templar / "src/tplr/neurons.py").read_text())
fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "pack_binary_tensor")
fn.args.args[1].annotation = None
ns = {"torch": torch}
exec(compile(ast.Module(body=[fn], type_ignores=[]), "neurons.py", "exec"), ns)
pack_binary_tensor = ns["pack_binary_tensor"]

TARGET_CHUNK, TOPK = 64, 32
torch.manual_seed(20250101)

# (case, shape, per-peer scale of the uploaded vals, note). A scale multiplies an honest peer's top-k values.
CASES = [
    ("agg_overflow_square", [64], [1.0, 1e20, 1.0],
     "peer1's squares overflow float32: torch.norm is inf, its normalised values are all 0 (signed)"),
    ("agg_overflow_sum", [128], [1.0, 1.0, "sum"],
     "peer2's 32 values of about 4e18 each square finitely but sum past f32::MAX: torch.norm is inf"),
    ("agg_large_finite", [64, 64], [1.0, 1e17, 1.0],
     "peer1's values near 1e17: a large, finite norm; normalised as usual"),
    ("agg_underflow", [64], [1.0, 1e-30, 1.0],
     "peer1's squares underflow float32: torch.norm is 0, the +1e-8 sets the scale"),
]


class One(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(shape))


tensors, cases = {}, []
for name, shape, scales, note in CASES:
    model = One(shape)
    transform, compressor = compress.TransformDCT(model, TARGET_CHUNK), compress.CompressDCT()
    idxs, vals, normed = [], [], []
    for i, scale in enumerate(scales):
        x = torch.randn(shape)
        enc = transform.encode(x)
        idx, val, xshape, totalk = compressor.compress(enc, TOPK)
        if scale == "sum":
            val = torch.sign(val) * torch.empty_like(val).uniform_(3.9e18, 4.1e18)
        else:
            val = val * scale
        assert torch.isfinite(val).all()
        norm = torch.norm(val)
        n = val / (norm + 1e-8)  # comms.py gather
        idxs.append(idx)
        vals.append(val)
        normed.append(n)
        tensors[f"{name}/peer{i}/idxs"] = idx.contiguous()
        tensors[f"{name}/peer{i}/vals"] = val.contiguous()
        tensors[f"{name}/peer{i}/normalized_vals"] = n.contiguous()
        print(f"{name} peer{i}: norm {norm.item():.6g}")
    dense = compressor.batch_decompress(model.p, idxs, normed, xshape, totalk)
    decoded = transform.decode(dense)
    packed = pack_binary_tensor(decoded.sign(), "cpu")
    near = ((decoded.abs() > 0) & (decoded.abs() < 1e-6)).flatten().nonzero().flatten().to(torch.int64)
    tensors[f"{name}/dense"] = dense.contiguous()
    tensors[f"{name}/decoded"] = decoded.contiguous()
    tensors[f"{name}/packed"] = packed.contiguous()
    fields = {}
    for i in range(len(scales)):
        for f in ("idxs", "vals", "normalized_vals"):
            t = tensors[f"{name}/peer{i}/{f}"]
            fields[f"peer{i}/{f}"] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    for f in ("dense", "decoded", "packed"):
        t = tensors[f"{name}/{f}"]
        fields[f] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    if len(near):
        tensors[f"{name}/near_zero"] = near.contiguous()
        fields["near_zero"] = {"dtype": "int64", "shape": [len(near)]}
    cases.append({
        "name": name,
        "kind": "aggregate",
        "shape": shape,
        "xshape": list(xshape),
        "totalk": totalk,
        "chunk": [transform.shape_dict[s] for s in shape],
        "topk_effective": min(TOPK, totalk),
        "n_peers": len(scales),
        "numel": decoded.numel(),
        "packed_len": packed.numel(),
        "fields": fields,
        "reference_pack": "ok",
        "exact_zeros_in_decoded": int((decoded == 0).sum()),
        "near_zero_count": len(near),
        "note": note,
        "tolerance": {
            "peer*/normalized_vals": {"abs": 1e-06},
            "dense": {"abs": 1e-06},
            "decoded": {"abs": 1e-05},
            "packed": {"compare": "exact_except_near_zero"},
        },
    })

out.mkdir(parents=True, exist_ok=True)
save_file(tensors, out / "tensors.safetensors")
manifest = {
    "format": "templar-vectors/1",
    "generated_with": f"host/vectors/gen/overflow.py with Templar 20c293e4's compress.py and neurons.py, torch {torch.__version__}",
    "target_chunk": TARGET_CHUNK,
    "topk": TOPK,
    "tensors": "tensors.safetensors",
    "near_zero_threshold": 1e-06,
    "cases": cases,
}
(out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
print(f"{len(cases)} cases written to {out}")
