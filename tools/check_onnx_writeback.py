#!/usr/bin/python3
"""Acceptance check of ONNX write-back against PyTorch (not a test: needs torch): for each fixture
model, `bnlab precise MODEL.onnx --tensors inputs.npy -o fixed.onnx --save-stats stats` then
`bnlab eval fixed.onnx --outputs out.npy`, the PyTorch model (rebuilt as tools/gen_onnx_fixtures.py
builds it) loaded with load_state_dict(stats, strict=False), and its outputs compared with bnlab's.
usage: /usr/bin/python3 tools/check_onnx_writeback.py BNLAB [FIXTURE_DIR]"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_onnx_fixtures as G  # noqa: E402
from bnlab_torch import load_safetensors  # noqa: E402


def models():
    g = torch.Generator().manual_seed(5)
    out = {}
    for name, make, _, distinct in [("resnet18_w8", G.ResNet18Blocks, 13, True),
                                    ("mobilenet_v2_w02", G.mobilenet_v2, 13, True),
                                    ("mobilenet_v3_small_w025", G.mobilenet_v3_small, 14, True),
                                    ("efficientnet_b0_w025", G.efficientnet_b0, 13, True),
                                    ("smallcat", G.SmallCat, 13, True),
                                    ("plain_identity", G.SmallCat, 13, False)]:
        torch.manual_seed(5)
        m = make()
        if distinct:
            G.distinct_buffers(m, g)
        out[name] = m.eval()
    return out


def main(bnlab, fx):
    raw = np.load(f"{fx}/inputs.npy")
    x = (torch.from_numpy(raw).float() / 255 - torch.tensor(G.MEAN).view(1, 3, 1, 1)) / \
        torch.tensor(G.STD).view(1, 3, 1, 1)
    worst_all = 0
    with tempfile.TemporaryDirectory() as d:
        for name, model in models().items():
            subprocess.run([bnlab, "precise", f"{fx}/{name}.onnx", "--tensors", f"{fx}/inputs.npy",
                            "-o", f"{d}/f.onnx", "--save-stats", f"{d}/s.safetensors",
                            "--batch", "16"], check=True, capture_output=True)
            subprocess.run([bnlab, "eval", f"{d}/f.onnx", "--tensors", f"{fx}/inputs.npy",
                            "--outputs", f"{d}/o.npy"], check=True, capture_output=True)
            stats = {k: v.float() for k, v in load_safetensors(f"{d}/s.safetensors")[0].items()}
            missing = [k for k in stats if k not in model.state_dict()]
            model.load_state_dict(stats, strict=False)
            with torch.no_grad():
                ref = model(x).numpy()
            got = np.load(f"{d}/o.npy")
            worst = float(np.abs(got - ref).max() / np.abs(ref).max())
            worst_all = max(worst_all, worst if not missing else 0)
            print(f"{name}: {len(stats)} statistics loaded ({len(missing)} not state_dict keys): "
                  f"PyTorch with them vs bnlab's eval of the patched model: {worst:.3g}"
                  + (" (shared statistics: not comparable)" if missing else ""))
    print(f"worst over the comparable models: {worst_all:.3g}")
    return 0 if worst_all <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/onnx"))
