#!/usr/bin/python3
"""Loads a bnlab checkpoint into the equivalent PyTorch module with strict=True (after dropping the
optimizer state, optim.*) and measures its Fashion-MNIST test error with population statistics
(eval mode), to compare with `bnlab eval CKPT`.

usage: /usr/bin/python3 tools/torch_load_check.py CKPT [--data-dir DIR] [--expect ERR]
--expect: exit 1 unless the error equals ERR within 0.05 points (float32 rounding may flip a few
of the 10000 predictions)."""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bnlab_torch import FMNIST_MEAN, FMNIST_STD, ResNet, load_fmnist, load_safetensors  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--expect", type=float)
    a = ap.parse_args()
    tensors, meta = load_safetensors(a.ckpt)
    depth = int(meta["arch"].replace("resnet", ""))
    model = ResNet(depth=depth, width=int(meta["width"]), classes=int(meta["classes"]))
    state = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    model.load_state_dict(state, strict=True)
    model.eval()
    torch.set_num_threads(2)
    img, lab = load_fmnist(a.data_dir, "test")
    x = (torch.from_numpy(img).float().div(255) - FMNIST_MEAN) / FMNIST_STD
    wrong = 0
    with torch.no_grad():
        for s in range(0, len(lab), 1000):
            logits = model(x[s:s + 1000].unsqueeze(1))
            wrong += (logits.argmax(1).numpy() != lab[s:s + 1000]).sum()
    err = 100.0 * wrong / len(lab)
    print(json.dumps({"err": round(err, 4), "n": len(lab), "strict": True, "tensors": len(state)}))
    if a.expect is not None and abs(err - a.expect) > 0.05:
        print("error %.4f differs from the expected %.4f" % (err, a.expect), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
