#!/usr/bin/python3
"""PyTorch's side of bench_train: the same CIFAR ResNet (tools/bnlab_torch.py), same batch and
threads, SGD as bnlab's recipe; prints 'train IMG_PER_S' and 'infer IMG_PER_S' (medians).
The model and input are channels_last: on this machine that is PyTorch's faster configuration
(oneDNN; resnet20 w=16, 2 threads: 734 vs 539 img/s training, 3060 vs 2236 inference).
usage: torch_train.py DEPTH WIDTH BATCH THREADS STEPS"""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from bnlab_torch import ResNet  # noqa: E402


def median(ts):
    ts = sorted(ts)
    return ts[len(ts) // 2]


def main():
    depth, width, batch, threads, steps = (int(v) for v in sys.argv[1:6])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ResNet(depth=depth, width=width).to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    model.train()
    ts = []
    for i in range(steps + 3):
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 3:
            ts.append(time.perf_counter() - t)
    print("train %.1f" % (batch / median(ts)))
    model.eval()
    ts = []
    with torch.no_grad():
        for i in range(steps + 3):
            t = time.perf_counter()
            model(x)
            if i >= 3:
                ts.append(time.perf_counter() - t)
    print("infer %.1f" % (batch / median(ts)))
    print("torch %s threads %d" % (torch.__version__, torch.get_num_threads()))


if __name__ == "__main__":
    main()
