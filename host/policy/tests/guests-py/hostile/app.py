"""A Python peer selector that passes its checks, then misbehaves when its config says ``misbehave = ...`` and it
already has peers (``current`` is not empty): the host's golden inputs never show it, real windows do."""

import wit_world
from componentize_py_types import Err
from wit_world.exports import describe, peer_selection


class Describe(wit_world.exports.Describe):
    def describe(self):
        return describe.Info(name="python-hostile", version="0.1.0", policies=["peer-selection"])

    def self_check(self):
        return None


class PeerSelection(wit_world.exports.PeerSelection):
    def select(self, input):
        mode = dict(input.config).get("misbehave", "") if input.current else ""
        if mode == "spin":
            x = 0
            while True:
                x += 1
        if mode == "oom":
            hog = []
            for _ in range(4096):
                hog.append(bytearray(1 << 20))
            raise Err(f"allocated {len(hog)} MiB")
        if mode == "fs":
            with open("/etc/passwd") as f:
                raise Err(f"read {len(f.read())} bytes of /etc/passwd")
        if mode == "net":
            import socket
            socket.create_connection(("127.0.0.1", 22), timeout=1)
            raise Err("connected")
        if mode == "raise":
            raise ValueError("hostile python policy raises on purpose")
        peers = [n.uid for n in input.neurons if n.has_bucket][:3]
        return peer_selection.Selection(peers=peers, weights=None, state=b"", note="first three with buckets")
