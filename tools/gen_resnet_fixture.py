#!/usr/bin/python3
"""Writes tests/fixtures/resnet8_w4*.safetensors: the PyTorch cross-checks of bnlab's engine.

Run with Debian's python3-torch: /usr/bin/python3 tools/gen_resnet_fixture.py tests/fixtures
A resnet8 of width 4 (the CIFAR ResNet, option-B shortcuts; the same module bnlab builds) in
float64, several SGD steps (momentum 0.9, Nesterov, weight decay 5e-4 on conv/linear
weights only; lr 0.1, 0.01 for FrozenBN, which diverges at 0.1 from this random start), in one of
three BN regimes:
  resnet8_w4              batch statistics over the whole batch of 4, two steps on the same batch
  resnet8_w4_ghost2       ghost groups: BN applied to x.split(2) of batches of 8, three steps on
                          three batches; running statistics by the ghost EMA rule (one update per
                          step from the mean over groups of their means and unbiased variances)
  resnet8_w4_frozen       FrozenBN (population batch in training): every BN in eval mode with
                          population statistics estimated beforehand, convolutions and the affine
                          parameters training, three steps on three batches of 4
Each file holds
  config           [batch, ghost group (0: whole batch), frozen, steps]
  lr               the learning rate
  <name>           the state_dict before the first step (conv weights OIHW)
  input<k>, labels<k>   the batch of step k (input NCHW)
  logits, loss     the first step's forward, mean cross-entropy
  grad.<name>      the first step's gradient of every parameter
  after.<name>     BN running statistics after the first forward
  step<k>.<name>   parameters after step k (1-based)
  final.<name>     BN running statistics after the last step
safetensors is written by hand (Debian has no safetensors package).
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnlab_torch import ResNet, save_safetensors, sgd


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d on x.split(ghost) in training, with bnlab's ghost EMA rule."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        parts = x.split(self.ghost)
        with torch.no_grad():
            mean = torch.stack([p.mean(dim=(0, 2, 3)) for p in parts]).mean(0)
            var = torch.stack([p.var(dim=(0, 2, 3), unbiased=True) for p in parts]).mean(0)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
            self.num_batches_tracked += 1
        return torch.cat([F.batch_norm(p, None, None, self.weight, self.bias, True, 0.0, self.eps)
                          for p in parts])


def bns(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def make_model():
    model = ResNet(depth=8, width=4).double()
    with torch.no_grad():  # non-trivial affine parameters so they are exercised
        for m in bns(model):
            m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
            m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return model


def batch(n):
    return torch.randn(n, 1, 28, 28).float().double(), torch.randint(0, 10, (n,))


def write(path, model, batches, ghost=0, frozen=False, lr=0.1):
    """Runs len(batches) SGD steps on model, recording what the docstring lists."""
    rec = {k: v.clone() for k, v in model.state_dict().items()}
    rec["config"] = torch.tensor([batches[0][0].shape[0], ghost, int(frozen), len(batches)])
    rec["lr"] = torch.tensor([lr], dtype=torch.float64)
    opt = sgd(model, lr)
    model.train()
    if frozen:
        for m in bns(model):
            m.eval()
    for k, (x, y) in enumerate(batches):
        rec["input%d" % k] = x
        rec["labels%d" % k] = y.long()
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        if k == 0:
            rec["logits"] = logits.detach()
            rec["loss"] = loss.detach().reshape(1)
            for n, p in model.named_parameters():
                rec["grad." + n] = p.grad.clone()
            for n, b in model.named_buffers():
                if "running" in n:
                    rec["after." + n] = b.clone()
        opt.step()
        for n, p in model.named_parameters():
            rec["step%d.%s" % (k + 1, n)] = p.detach().clone()
    for n, b in model.named_buffers():
        if "running" in n:
            rec["final." + n] = b.clone()
    save_safetensors(path, rec, {"generator": "tools/gen_resnet_fixture.py", "torch": torch.__version__})


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out, exist_ok=True)

    torch.manual_seed(8)
    model = make_model()
    x, y = batch(4)
    write(os.path.join(out, "resnet8_w4.safetensors"), model, [(x, y), (x, y)])

    torch.manual_seed(9)
    model = make_model()
    for m in bns(model):
        m.__class__ = GhostBatchNorm2d
        m.ghost = 2
    write(os.path.join(out, "resnet8_w4_ghost2.safetensors"), model, [batch(8) for _ in range(3)], ghost=2)

    torch.manual_seed(10)
    model = make_model()
    with torch.no_grad():  # population statistics of 64 images, as PreciseBN would give (one batch)
        for m in bns(model):
            m.momentum = None
            m.reset_running_stats()
        model.train()
        model(batch(64)[0])
        for m in bns(model):
            m.momentum = 0.1
            m.num_batches_tracked.zero_()
    write(os.path.join(out, "resnet8_w4_frozen.safetensors"), model, [batch(4) for _ in range(3)], frozen=True,
          lr=0.01)


if __name__ == "__main__":
    main()
