#!/usr/bin/env python3
"""Writes seed inputs of the shapes that once blew up the reader, scaled down so that the fuzzer mutates them quickly:
memoised values copied or read once per reference (set() of a shared list, sets inside the list they copy,
_codecs.encode of a shared string, numpy.dtype with a huge shared argument tuple, a state_dict whose keys all point
at one shared metadata dict or list, a deep DAG of shared lists), and archives torch refuses (duplicate entry names,
an entry outside the root folder, a bad version record).

Usage: seeds.py read_pt DIR   (whole .pt archives)
       seeds.py pickle DIR    (data.pkl programs only)
"""
import io
import pathlib
import struct
import sys
import zipfile


def u32(n):
    return struct.pack("<I", n)


def put(k):
    return b"r" + u32(k)


def get(k):
    return b"j" + u32(k)


def s(text):
    b = text.encode()
    return b"X" + u32(len(b)) + b


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def envelope(prelude, items):
    """{"prelude": [values built and memoised first], "state_dict": {items}, "global_step": 0}: the stack is empty
    at STOP."""
    return (
        b"\x80\x02}(" + s("prelude") + b"](" + prelude + b"e" + s("state_dict") + b"}(" + items + b"u"
        + s("global_step") + b"K\x00u."
    )


def programs():
    n, r = 2000, 1500
    yield "set_bomb", b"\x80\x02Nq\x00](" + b"h\x00" * n + b"eq\x01cbuiltins\nset\nq\x02" + b"h\x02h\x01\x85R" * r + b"."
    # Each program keeps everything in one list, so that the stack is empty at STOP.
    yield "nested_sets", (
        b"\x80\x02](N" + put(0) + b"](" + get(0) * 500 + b"e" + put(1) + glob("builtins", "set") + put(2)
        + (get(1) + get(2) + get(1) + b"\x85Ra") * 300 + b"e."
    )
    yield "encode_bomb", (
        b"\x80\x02](" + s("a" * 65536) + put(0) + s("latin1") + put(1) + glob("_codecs", "encode") + put(2)
        + (get(2) + get(0) + get(1) + b"\x86R") * 2000 + b"e."
    )
    yield "dtype_args", (
        b"\x80\x02](" + b"(" + s("<i8") + put(0) + get(0) * 4000 + b"t" + put(1) + glob("numpy", "dtype") + put(2)
        + (get(2) + get(1) + b"R") * 1000 + b"e."
    )
    meta = (
        s("c" * 256) + put(0) + b"K\x01" + put(1) + get(0) + get(1) + get(0) + b"\x87" + put(2)
        + b"](" + get(2) * 1000 + b"e" + put(3)
        + b"}(" + s("pages_info") + get(3) + s("window") + b"K\x05u" + put(4) + s("metadata") + put(5)
    )
    yield "shared_metadata", envelope(meta, (get(5) + get(4)) * 2000)
    debug = s("k" * 4096 + "_debug") + put(0) + b"](" + b"G?\xf0\x00\x00\x00\x00\x00\x00" * 1000 + b"e" + put(1)
    yield "shared_debug_lists", envelope(debug, (get(0) + get(1)) * 2000)
    dag = b"](" + b"N" * 8 + b"e" + put(0)
    for level in range(1, 10):
        dag += b"](" + get(level - 1) * 8 + b"e" + put(level)
    yield "deep_dag", envelope(dag, b"".join(s(f"k{i}") + get(9) for i in range(2000)))


def archive(pickle, extra=(), version=b"3\n", root="archive"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", pickle)
        z.writestr(f"{root}/byteorder", "little")
        for name, data in extra:
            z.writestr(name, data)
        if version is not None:
            z.writestr(f"{root}/version", version)
    return buf.getvalue()


def rename_entry(data, old, new):
    """Renames one entry (local header and central directory) in place: a duplicate name, which zipfile refuses to
    write directly."""
    assert len(old) == len(new)
    return data.replace(old.encode(), new.encode())


def main():
    kind, out = sys.argv[1], pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for name, program in programs():
        if kind == "pickle":
            (out / f"seed-{name}.pkl").write_bytes(program)
        else:
            (out / f"seed-{name}.pt").write_bytes(archive(program))
    if kind == "read_pt":
        small = envelope(b"", s("x") + b"K\x01")
        (out / "seed-duplicate-pickle.pt").write_bytes(
            rename_entry(archive(small, [("archive/data.pkx", b"\x80\x02N.")]), "archive/data.pkx", "archive/data.pkl")
        )
        (out / "seed-stray-root.pt").write_bytes(archive(small, [("other/byteorder", b"little")]))
        (out / "seed-bad-version.pt").write_bytes(archive(small, version=b"s\n"))
        (out / "seed-no-version.pt").write_bytes(archive(small, version=None))


if __name__ == "__main__":
    main()
