#!/usr/bin/python3
"""Loads a bnlab checkpoint into the equivalent PyTorch module with strict=True (after dropping the
optimizer state, optim.*) and measures its Fashion-MNIST test error with population statistics
(eval mode), to compare with `bnlab eval CKPT`.

usage: /usr/bin/python3 tools/torch_load_check.py CKPT [--data-dir DIR] [--expect ERR]
                                                  [--batch N] [--threads N]
--expect: exit 1 unless the error equals ERR within 0.05 points (float32 rounding may flip a few
of the 10000 predictions). bench/bench_eval.sh times it as a whole process against `bnlab eval`
(channels_last and inference_mode: PyTorch's faster configuration here)."""
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
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    tensors, meta = load_safetensors(a.ckpt)
    depth = int(meta["arch"].replace("resnet", ""))
    model = ResNet(depth=depth, width=int(meta["width"]), classes=int(meta["classes"]))
    state = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    model.load_state_dict(state, strict=True)
    model.eval()
    model = model.to(memory_format=torch.channels_last)
    torch.set_num_threads(a.threads)
    img, lab = load_fmnist(a.data_dir, "test")
    x = (torch.from_numpy(img).float().div(255) - FMNIST_MEAN) / FMNIST_STD
    wrong = 0
    b = a.batch
    with torch.inference_mode():
        for s in range(0, len(lab), b):
            xb = x[s:s + b].unsqueeze(1).contiguous(memory_format=torch.channels_last)
            wrong += (model(xb).argmax(1).numpy() != lab[s:s + b]).sum()
    err = 100.0 * wrong / len(lab)
    print(json.dumps({"err": round(err, 4), "n": len(lab), "strict": True, "tensors": len(state)}))
    if a.expect is not None and abs(err - a.expect) > 0.05:
        print("error %.4f differs from the expected %.4f" % (err, a.expect), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
