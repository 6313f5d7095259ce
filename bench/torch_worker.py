#!/usr/bin/python3
"""PyTorch's side of bench_train --rounds: one persistent process, so the rounds alternate with
bnlab without paying Python's start-up or oneDNN's first-call costs again. Reads commands on stdin,
answers one line each on stdout:
  train K  -> 'ok IMG_PER_S'  K training steps (zero_grad(set_to_none=True), forward, loss,
                               backward, SGD), the median step
  infer K  -> 'ok IMG_PER_S'  K eager forwards under inference_mode (eval mode)
  jit K    -> 'ok IMG_PER_S'  K forwards of torch.jit.optimize_for_inference(script(model.eval()))
                               (BN folded into the convolutions, oneDNN's fused ReLU)
  quit
The model and input are channels_last (this machine's faster layout for PyTorch), the threads as
given. usage: torch_worker.py DEPTH WIDTH BATCH THREADS"""
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
    depth, width, batch, threads = (int(v) for v in sys.argv[1:5])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ResNet(depth=depth, width=width).to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0}],
                          lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    jit = None
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        k = int(cmd[1]) if len(cmd) > 1 else 10
        ts = []
        if cmd[0] == "train":
            model.train()
            for _ in range(k):
                t = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
                ts.append(time.perf_counter() - t)
        elif cmd[0] == "infer":
            model.eval()
            with torch.inference_mode():
                for _ in range(k):
                    t = time.perf_counter()
                    model(x)
                    ts.append(time.perf_counter() - t)
        elif cmd[0] == "jit":
            if jit is None:
                model.eval()
                jit = torch.jit.optimize_for_inference(torch.jit.script(model.eval()))
                with torch.inference_mode():
                    for _ in range(3):  # the profiling runs of the JIT
                        jit(x)
            with torch.inference_mode():
                for _ in range(k):
                    t = time.perf_counter()
                    jit(x)
                    ts.append(time.perf_counter() - t)
        else:
            print("error unknown command %s" % cmd[0], flush=True)
            continue
        print("ok %.1f" % (batch / median(ts)), flush=True)


if __name__ == "__main__":
    main()
