#!/usr/bin/python3
"""Writes tests/fixtures/resnet8_w4.safetensors: the PyTorch cross-check of bnlab's engine.

Run with Debian's python3-torch: /usr/bin/python3 tools/gen_resnet_fixture.py tests/fixtures
A resnet8 of width 4 (the CIFAR ResNet, option-B shortcuts; the same module bnlab builds) in
float64, a batch of 4 images (28x28x1), in train mode:
  <name>           the state_dict before the step (conv weights OIHW)
  input, labels    the batch (input NCHW)
  logits, loss     forward in train mode (batch statistics), mean cross-entropy
  grad.<name>      gradient of every parameter
  after.<name>     BN running statistics after that forward (EMA, momentum 0.1)
  step1.<name>     parameters after one SGD step (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4
                   on conv/linear weights only)
  step2.<name>     after a second forward/backward/step on the same batch (momentum buffers used)
safetensors is written by hand (Debian has no safetensors package).
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnlab_torch import ResNet, save_safetensors


def sgd(model):
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0}],
                           lr=0.1, momentum=0.9, nesterov=True)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    torch.manual_seed(8)
    model = ResNet(depth=8, width=4).double()
    with torch.no_grad():  # non-trivial affine parameters so they are exercised
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    x = torch.randn(4, 1, 28, 28).float().double()
    y = torch.tensor([3, 0, 7, 3])
    rec = {k: v.clone() for k, v in model.state_dict().items()}
    rec["input"] = x
    rec["labels"] = y.long()
    opt = sgd(model)
    model.train()
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    rec["logits"] = logits.detach()
    rec["loss"] = loss.detach().reshape(1)
    for n, p in model.named_parameters():
        rec["grad." + n] = p.grad.clone()
    for n, b in model.named_buffers():
        if "running" in n:
            rec["after." + n] = b.clone()
    opt.step()
    for n, p in model.named_parameters():
        rec["step1." + n] = p.detach().clone()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    for n, p in model.named_parameters():
        rec["step2." + n] = p.detach().clone()
    os.makedirs(out, exist_ok=True)
    save_safetensors(os.path.join(out, "resnet8_w4.safetensors"), rec,
                     {"generator": "tools/gen_resnet_fixture.py", "torch": torch.__version__})


if __name__ == "__main__":
    main()
