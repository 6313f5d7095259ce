#!/usr/bin/python3
"""Writes tests/fixtures/import_layers.safetensors: PyTorch's conv2d (asymmetric pads through
F.pad, strides, dilations, groups, depthwise with a multiplier, bias), max and average pooling
(pads, dilation, ceil_mode, count_include_pad), the activations (hardtanh as Clip, sigmoid,
hardsigmoid, hardswish, leaky relu) and the softmax: the anchors of the layers bnlab builds
imported graphs from (src/nn/conv_general.c, pool.c, unary.c, reshape.c).

Run with Debian's python3-torch:
    /usr/bin/python3 tools/gen_import_layers_fixture.py tests/fixtures
Per case NAME: NAME.x (N, H, W, C) NHWC, NAME.y NHWC, NAME.w OIHW and NAME.b for convolutions;
the metadata "cases" holds one JSON object per case with its parameters. float64 reference,
stored as float32."""
import json
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bnlab_torch import save_safetensors  # noqa: E402

g = torch.Generator().manual_seed(13)


def rnd(*shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous().float()


def main(out_dir):
    tensors, cases = {}, []
    convs = [  # name, cin, h, w, cout, kh, kw, stride, dil, pads (t, l, b, r), groups, bias
        ("conv_asym", 3, 9, 8, 5, 3, 2, (2, 1), (1, 1), (1, 0, 2, 1), 1, True),
        ("conv_dil", 4, 10, 9, 6, 3, 3, (1, 2), (2, 1), (2, 1, 2, 1), 1, False),
        ("conv_group", 6, 7, 7, 4, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1), 2, True),
        ("conv_dw", 5, 8, 6, 5, 3, 3, (2, 2), (1, 1), (1, 1, 1, 1), 5, False),
        ("conv_dw_mult", 3, 6, 7, 6, 5, 3, (1, 1), (1, 2), (2, 2, 2, 2), 3, True),
        ("conv_1x1_s2", 4, 7, 7, 3, 1, 1, (2, 2), (1, 1), (0, 0, 0, 0), 1, False),
    ]
    for name, cin, h, w, cout, kh, kw, st, dil, pads, grp, bias in convs:
        x, wt = rnd(2, cin, h, w), rnd(cout, cin // grp, kh, kw)
        b = rnd(cout) if bias else None
        xp = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        y = F.conv2d(xp, wt, b, stride=st, dilation=dil, groups=grp)
        tensors.update({f"{name}.x": nhwc(x), f"{name}.y": nhwc(y), f"{name}.w": wt.float()})
        if bias:
            tensors[f"{name}.b"] = b.float()
        cases.append({"name": name, "kind": "conv", "cout": cout, "k": [kh, kw],
                      "stride": list(st), "dil": list(dil), "pads": list(pads), "groups": grp,
                      "bias": bias})
    pools = [  # name, max, c, h, w, k, stride, pads (symmetric per axis: torch), dil, ceil, incl
        ("max_3s2p1", 1, 3, 9, 9, (3, 3), (2, 2), (1, 1), (1, 1), 0, 0),
        ("max_ceil", 1, 2, 8, 7, (3, 2), (2, 2), (0, 0), (1, 1), 1, 0),
        ("max_dil", 1, 2, 9, 9, (2, 2), (1, 1), (1, 0), (2, 2), 0, 0),
        ("avg_incl", 0, 3, 7, 8, (3, 3), (2, 2), (1, 1), (1, 1), 0, 1),
        ("avg_excl", 0, 3, 7, 8, (3, 3), (2, 2), (1, 1), (1, 1), 0, 0),
        ("avg_ceil_excl", 0, 2, 8, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1, 0),
        ("avg_ceil_incl", 0, 2, 8, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1, 1),
    ]
    for name, mx, c, h, w, k, st, p, dil, ceil, incl in pools:
        x = rnd(2, c, h, w)
        if mx:
            y = F.max_pool2d(x, k, st, p, dil, ceil_mode=bool(ceil))
        else:
            y = F.avg_pool2d(x, k, st, p, ceil_mode=bool(ceil), count_include_pad=bool(incl))
        tensors.update({f"{name}.x": nhwc(x), f"{name}.y": nhwc(y)})
        cases.append({"name": name, "kind": "pool", "max": mx, "k": list(k), "stride": list(st),
                      "pads": [p[0], p[1], p[0], p[1]], "dil": list(dil), "ceil": ceil,
                      "incl": incl})
    x = 4 * rnd(2, 5, 3, 4)
    acts = [("clip", lambda t: torch.clamp(t, -1.5, 6.0), -1.5, 6.0),
            ("relu6", lambda t: torch.clamp(t, 0.0, 6.0), 0.0, 6.0),
            ("sigmoid", torch.sigmoid, 0, 0),
            ("hardsigmoid", lambda t: torch.clamp(0.2 * t + 0.5, 0, 1), 0.2, 0.5),
            ("hardswish", F.hardswish, 0, 0),
            ("leaky_relu", lambda t: F.leaky_relu(t, 0.1), 0.1, 0),
            ("softmax", lambda t: torch.softmax(t, 1), 0, 0)]
    for name, f, a, b in acts:
        tensors.update({f"{name}.x": nhwc(x), f"{name}.y": nhwc(f(x))})
        cases.append({"name": name, "kind": "act", "a": a, "b": b})
    save_safetensors(f"{out_dir}/import_layers.safetensors", tensors,
                     {"source": "torch conv2d/max_pool2d/avg_pool2d/activations, float64",
                      "cases": json.dumps(cases)})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
