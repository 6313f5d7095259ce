#!/usr/bin/python3
"""Writes tests/fixtures/eltwise.safetensors: PyTorch's broadcasting add, sub, mul and div, the
anchor of bnlab's elementwise layer (src/nn/eltwise.c, bl_net_eltwise).

Run with Debian's python3-torch:
    /usr/bin/python3 tools/gen_eltwise_fixture.py tests/fixtures
Each case k is y = a op b on NHWC tensors of 3 samples, with torch's broadcasting (which is NumPy's
and ONNX's), in float64, and the gradients of sum(dy * y) by autograd. A constant operand has
batch size 1 (one sample for the whole batch) and no gradient. The file holds, per case k:
  k.a, k.b    the operands, (N or 1, h, w, c)
  k.dy, k.y   the output's gradient and the output, (N, h, w, c)
  k.da, k.db  the operands' gradients (none for a constant)
and the metadata "cases": one line per case, "op a_shape b_shape const" (const: a, b or -).
Stored as float32 (bnlab computes in float)."""
import json
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bnlab_torch import save_safetensors  # noqa: E402

N = 3
CASES = [  # op, a's per-sample shape, b's, which is a constant, b kept away from 0 (div)
    ("add", (4, 5, 6), (4, 5, 6), "-"),
    ("sub", (4, 5, 6), (1, 1, 6), "-"),
    ("mul", (4, 5, 6), (1, 1, 6), "-"),   # a squeeze-excitation scale
    ("div", (4, 5, 6), (1, 1, 1), "-"),
    ("mul", (4, 1, 6), (1, 5, 1), "-"),   # both broadcast
    ("add", (4, 5, 6), (1, 1, 6), "b"),   # a bias
    ("div", (1, 1, 6), (4, 5, 6), "a"),   # a constant divided by the batch
    ("sub", (4, 5, 6), (4, 5, 6), "a"),   # a whole-sample constant
    ("mul", (2, 3, 1), (2, 3, 4), "-"),
    ("div", (3, 2, 5), (3, 2, 5), "-"),
]
OPS = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}


def main(out_dir):
    g = torch.Generator().manual_seed(11)
    tensors, lines = {}, []
    for k, (op, sa, sb, const) in enumerate(CASES):
        a = torch.randn((1 if const == "a" else N,) + sa, generator=g, dtype=torch.float64)
        b = torch.randn((1 if const == "b" else N,) + sb, generator=g, dtype=torch.float64)
        if op == "div":  # away from 0, either sign
            b = torch.sign(b) * (0.5 + b.abs())
        a.requires_grad_(const != "a")
        b.requires_grad_(const != "b")
        y = OPS[op](a, b)
        dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        (y * dy).sum().backward()
        out = {"a": a, "b": b, "y": y, "dy": dy}
        if const != "a":
            out["da"] = a.grad
        if const != "b":
            out["db"] = b.grad
        for name, t in out.items():
            tensors[f"{k}.{name}"] = t.detach().float()
        lines.append(f"{op} {','.join(map(str, sa))} {','.join(map(str, sb))} {const}")
    save_safetensors(f"{out_dir}/eltwise.safetensors", tensors,
                     {"source": "torch.add/sub/mul/div broadcasting, float64 autograd",
                      "cases": json.dumps(lines)})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
