"""Writes sgd-steps.pt: torch's own catch-up step, the reference for `apply_aggregate` (tests/sgd.rs).

Per window, as Templar's catch-up does it (neurons.py, spec §7.2): unpack the aggregate's bits to ±1 (bit i of byte
j is element 8j+i, set = +1; truncated to the parameter's size, as unpack_binary_tensor from 994c8215 on), `p *= 1 -
lr*wd` when wd > 0, `p.grad = ±1`, `SGD(lr).step()`. 1003 elements, so the last byte is partly padding.

    python make_sgd_steps.py   # with torch; writes next to this file
"""

from pathlib import Path

import torch

N, LRS, WD = 1003, [4e-5, 4.144e-5, 3.9e-4, 1e-3], 0.1


def unpack(packed, n):
    bits = (packed.to(torch.int64)[:, None] >> torch.arange(8)) & 1
    return bits.reshape(-1)[:n].to(torch.float32) * 2 - 1


def replay(p0, bits, wd):
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.SGD([p], lr=LRS[0])
    for lr, packed in zip(LRS, bits):
        opt.param_groups[0]["lr"] = lr
        with torch.no_grad():
            if wd > 0:
                p.mul_(1 - lr * wd)
        p.grad = unpack(packed, N)
        opt.step()
    return p.detach().clone()


g = torch.Generator().manual_seed(73)
p0 = torch.randn(N, generator=g) * 0.02
bits = torch.randint(0, 256, (len(LRS), (N + 7) // 8), generator=g, dtype=torch.uint8)
torch.save(
    {
        "p0": p0,
        "bits": bits,
        "lrs": LRS,
        "weight_decay": WD,
        "after": replay(p0, bits, 0.0),
        "after_weight_decay": replay(p0, bits, WD),
    },
    Path(__file__).with_name("sgd-steps.pt"),
)
