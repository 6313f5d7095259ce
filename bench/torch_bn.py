#!/usr/bin/python3
"""PyTorch's BatchNorm2d timed the way bench_bn times bnlab: median ms of train forward,
train forward+backward and eval forward. Called by bench_bn in the same run; prints
'PASS MS' lines. usage: torch_bn.py N,C,H,W nchw|nhwc THREADS REPS"""
import sys
import time

import torch


def median_ms(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return 1e3 * ts[len(ts) // 2]


def main():
    n, c, h, w = (int(v) for v in sys.argv[1].split(","))
    layout, threads, reps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
    dy = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
    bn = torch.nn.BatchNorm2d(c)
    bn.train()

    def train_fwd():
        with torch.no_grad():
            bn(x)

    xg = x.clone().requires_grad_()

    def train_fwd_bwd():
        xg.grad = None
        bn.zero_grad(set_to_none=True)
        bn(xg).backward(dy)

    print("train_fwd %.4f" % median_ms(train_fwd, reps))
    print("train_fwd_bwd %.4f" % median_ms(train_fwd_bwd, reps))
    bn.eval()
    print("eval_fwd %.4f" % median_ms(train_fwd, reps))
    print("torch %s threads %d" % (torch.__version__, torch.get_num_threads()))


if __name__ == "__main__":
    main()
