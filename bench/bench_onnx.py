#!/usr/bin/python3
"""bnlab against PyTorch on an ONNX model (issue 26's speed figure): a full-width torchvision
resnet18 exported at run time (BN kept; not committed), 3x224x224 images, batch 16, 2 threads.
  eval:    `bnlab eval model.onnx --tensors x.npy --batch 16` against PyTorch eager,
           channels_last, under torch.inference_mode(), on the same model and images
  precise: `bnlab precise ... --batch 16` (one PreciseBN pass) against PyTorch with every BN in
           train mode, no gradients
bnlab's time per image is differential - the command on 80 images minus the command on 16 - so
loading, building and writing are left out, as PyTorch's model construction is. Pairs alternate
which peer runs first. Prints each pair and the median ratio (PyTorch time / bnlab time: > 1 means
bnlab is faster).
usage: /usr/bin/python3 bench/bench_onnx.py BNLAB [PAIRS]   (OPENBLAS_* and OMP_* as the caller set)"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision

B, THREADS = 16, 2


def bnlab_time(bnlab, cmd, model, x16, x80, out):
    def run(x):
        args = [bnlab, cmd, model, "--tensors", x, "--batch", str(B), "--threads", str(THREADS)]
        if cmd == "precise":
            args += ["-o", out, "--in-order", "on"]
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        return time.perf_counter() - t0
    return (run(x80) - run(x16)) / 64


def torch_time(model, x, precise):
    m = model
    if precise:
        m.eval()
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.train()
                mod.momentum = None
    else:
        m.eval()
    ctx = torch.no_grad() if precise else torch.inference_mode()
    with ctx:
        m(x[:B])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, x.shape[0], B):
            m(x[i:i + B])
        return (time.perf_counter() - t0) / x.shape[0]


def main(bnlab, pairs):
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/resnet18.onnx"
        torch.onnx.export(model, torch.zeros(1, 3, 224, 224), path,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          opset_version=13, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}})
        rng = np.random.default_rng(0)
        imgs = rng.integers(0, 256, (80, 3, 224, 224), dtype=np.uint8)
        np.save(f"{d}/x80.npy", imgs)
        np.save(f"{d}/x16.npy", imgs[:16])
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x = ((torch.from_numpy(imgs[16:]).float() / 255 - mean) / std).contiguous(
            memory_format=torch.channels_last)
        model = model.to(memory_format=torch.channels_last)
        for cmd in ("eval", "precise"):
            ratios = []
            for p in range(pairs):
                order = ("bnlab", "torch") if p % 2 == 0 else ("torch", "bnlab")
                t = {}
                for who in order:
                    if who == "bnlab":
                        t[who] = bnlab_time(bnlab, cmd, path, f"{d}/x16.npy", f"{d}/x80.npy",
                                            f"{d}/out.onnx")
                    else:
                        t[who] = torch_time(model, x, cmd == "precise")
                ratios.append(t["torch"] / t["bnlab"])
                print(f"{cmd} pair {p + 1}: bnlab {1e3 * t['bnlab']:.1f} ms/image, PyTorch "
                      f"{1e3 * t['torch']:.1f} ms/image, ratio {ratios[-1]:.2f}x", flush=True)
            print(f"{cmd}: median ratio {statistics.median(ratios):.2f}x over {pairs} pairs "
                  f"(range {min(ratios):.2f}-{max(ratios):.2f})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
