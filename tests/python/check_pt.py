#!/usr/bin/env python3
"""Loads a .pt file written by the aggregator with the Python standard library only, and checks its structure.

The unpickler mirrors what torch.load(..., weights_only=True) allows for these files: the globals
torch._utils._rebuild_tensor_v2, torch.<X>Storage and collections.OrderedDict, persistent storage ids, and plain
Python values. Any other global is refused, as torch refuses it. (torch itself is too large for CI; it was used to
cross-check the same files by hand.)

Usage: check_pt.py aggregate FILE [--params N] | check_pt.py gradient FILE | check_pt.py debug FILE
"""
import collections
import pickle
import re
import sys
import zipfile

ITEMSIZE = {"ByteStorage": 1, "CharStorage": 1, "ShortStorage": 2, "IntStorage": 4, "LongStorage": 8,
            "HalfStorage": 2, "BFloat16Storage": 2, "FloatStorage": 4, "DoubleStorage": 8, "BoolStorage": 1}


class StorageType:
    def __init__(self, name):
        self.name, self.itemsize = name, ITEMSIZE[name]


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    @property
    def dtype(self):
        return self.storage[0].name

    def numel(self):
        n = 1
        for d in self.size:
            n *= d
        return n


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
    assert requires_grad is False and isinstance(backward_hooks, collections.OrderedDict)
    return Tensor(storage, offset, size, stride)


class WeightsOnlyUnpickler(pickle.Unpickler):
    def __init__(self, fileobj, archive, root):
        super().__init__(fileobj)
        self.archive, self.root = archive, root

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in ITEMSIZE:
            return StorageType(name)
        raise pickle.UnpicklingError(f"weights_only load refuses global {module}.{name}")

    def persistent_load(self, pid):
        tag, stype, key, location, numel = pid
        assert tag == "storage" and isinstance(stype, StorageType) and location == "cpu", pid
        data = self.archive.read(f"{self.root}/data/{key}")
        assert len(data) == numel * stype.itemsize, (key, len(data), numel)
        return (stype, data)


def load(path):
    z = zipfile.ZipFile(path)
    roots = [n[: -len("/data.pkl")] for n in z.namelist() if n.endswith("/data.pkl")]
    assert len(roots) == 1, roots
    root = roots[0]
    assert z.read(f"{root}/version") == b"3\n"
    assert z.read(f"{root}/byteorder") == b"little"
    for info in z.infolist():
        assert info.compress_type == zipfile.ZIP_STORED, info.filename
    with z.open(f"{root}/data.pkl") as f:
        return WeightsOnlyUnpickler(f, z, root).load(), root


def check_envelope(obj):
    assert isinstance(obj, dict) and list(obj) == ["state_dict", "global_step"], list(obj)
    assert type(obj["global_step"]) is int
    return obj["state_dict"]


def check_aggregate(obj, params=None):
    sd = check_envelope(obj)
    assert obj["global_step"] == 0
    keys = list(sd)
    meta = ["timestamp", "window", "version", "skipped_uids", "success_rate"]
    assert keys[-5:] == meta, keys[-5:]
    tensors = keys[:-5]
    for k in tensors:
        t = sd[k]
        assert isinstance(t, Tensor) and t.dtype == "ByteStorage" and len(t.size) == 1, k
        assert t.offset == 0 and t.stride == (1,) and len(t.storage[1]) == t.size[0], k
    if params is not None:
        assert len(tensors) == params, (len(tensors), params)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00", sd["timestamp"]), sd["timestamp"]
    assert type(sd["window"]) is int and type(sd["version"]) is str
    assert type(sd["skipped_uids"]) is list and all(type(u) is int for u in sd["skipped_uids"])
    assert type(sd["success_rate"]) is float and 0.0 <= sd["success_rate"] <= 1.0
    return f"{len(tensors)} packed parameters, window {sd['window']}, skipped {sd['skipped_uids']}, success rate {sd['success_rate']}"


def check_gradient(obj):
    sd = check_envelope(obj)
    names = [k for k in sd if k != "metadata"]
    for k in names:
        t = sd[k]
        assert isinstance(t, Tensor), k
        assert (k.endswith("idxs") and t.dtype == "ShortStorage") or (k.endswith("vals") and t.dtype == "FloatStorage"), k
    meta = sd["metadata"]
    assert isinstance(meta, dict) and all(isinstance(p, tuple) and len(p) == 3 for p in meta["pages_info"])
    return f"{len(names) // 2} parameters, metadata {sorted(meta)}"


def check_debug(obj):
    sd = check_envelope(obj)
    for k, v in sd.items():
        if k.endswith("_debug"):
            assert type(v) is list and all(type(x) is float for x in v), k
        else:
            assert k in ("successful_peers", "skipped_peers") and all(type(u) is int for u in v), k
    return f"{sum(k.endswith('_debug') for k in sd)} sampled parameters"


def main(argv):
    kind, path = argv[1], argv[2]
    obj, root = load(path)
    if kind == "aggregate":
        params = int(argv[argv.index("--params") + 1]) if "--params" in argv else None
        summary = check_aggregate(obj, params)
    elif kind == "gradient":
        summary = check_gradient(obj)
    elif kind == "debug":
        summary = check_debug(obj)
    else:
        raise SystemExit(f"unknown kind {kind}")
    print(f"OK {kind} {path} (root {root}/): {summary}")


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Exception as e:  # one line, exit 1
        print(f"FAIL {sys.argv[1:]}: {type(e).__name__}: {e}")
        sys.exit(1)
