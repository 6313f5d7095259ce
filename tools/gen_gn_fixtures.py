#!/usr/bin/python3
"""Writes tests/fixtures/gn_*.txt: torch.nn.functional.group_norm references for bnlab's GroupNorm.

Run with Debian's python3-torch:  /usr/bin/python3 tools/gen_gn_fixtures.py tests/fixtures
The format is gen_bn_fixtures.py's (records "NAME COUNT" then the values, NCHW). Inputs are drawn in
float32 and the references computed in float64 on those values: a fixture is the exact answer for
the float32 inputs. Cases: several groups, one group per channel (instance norm), one group (layer
norm), and a 1x1 map where a group holds one channel's single value.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_bn_fixtures import f32, write  # noqa: E402

torch.manual_seed(20213)


def case(path, shape, groups, eps=1e-5):
    n, c, h, w = shape
    x = f32(2.0 + 1.5 * torch.randn(shape)).requires_grad_()
    gamma = f32(1 + 0.5 * torch.randn(c)).requires_grad_()
    beta = f32(0.5 * torch.randn(c)).requires_grad_()
    dy = f32(torch.randn(shape))
    y = F.group_norm(x, groups, gamma, beta, eps)
    y.backward(dy)
    write(path, [("shape", torch.tensor(shape)), ("groups", torch.tensor([groups])),
                 ("eps", torch.tensor([eps])), ("x", x.detach()), ("gamma", gamma.detach()),
                 ("beta", beta.detach()), ("dy", dy), ("y", y.detach()), ("dx", x.grad),
                 ("dgamma", gamma.grad), ("dbeta", beta.grad)])
    with open(path) as f:  # the shared writer names its own script in the header
        text = f.read().replace("gen_bn_fixtures.py", "gen_gn_fixtures.py", 1)
    with open(path, "w") as f:
        f.write(text)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out, exist_ok=True)
    for shape, g in [((3, 8, 4, 5), 2), ((2, 32, 3, 3), 8), ((2, 6, 3, 2), 6), ((4, 4, 2, 2), 1),
                     ((5, 4, 1, 1), 4)]:
        name = "gn_%dx%dx%dx%d_g%d.txt" % (*shape, g)
        case(os.path.join(out, name), shape, g)
        print("wrote", name)


if __name__ == "__main__":
    main()
