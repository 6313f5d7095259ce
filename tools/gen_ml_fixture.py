#!/usr/bin/python3
"""Writes tests/fixtures/ml_*.safetensors: the PyTorch cross-checks of bnlab's multi-level head.

Run with Debian's python3-torch: /usr/bin/python3 tools/gen_ml_fixture.py tests/fixtures
The model "resnet8-ml", in float64: the backbone is a resnet8 of width 4 on 12x12 single-channel
images without its fc (keys conv1.*, bn1.*, layer1.* ... as in resnet8_w4.safetensors); its
stage outputs after layer1, layer2, layer3 (4, 8, 16 channels; 12x12, 6x6, 3x3) are the levels
0, 1, 2. Each level goes through lateral.<k> (1x1 conv to the head width H = 8, no bias) and then
through one head whose weights are shared over the levels:
  head.conv1 (3x3, pad 1, no bias), head.norm1, ReLU, head.conv2, head.norm2, ReLU,
  head.cls (1x1 conv to 10 classes, no bias), global average pool -> logits.<k>
loss = mean over the levels of the cross-entropy of logits.<k>; logits = mean over the levels.
The head's norm is one of
  bn    head.normX holds 3 BatchNorm2d children (head.normX.<k>.running_mean/var/num_batches_tracked,
        and .weight/.bias when the affine is per level), the pooled running statistics
        head.normX.running_mean/var/num_batches_tracked, and head.normX.weight/bias when the
        affine is shared. Training with
          sgd shared  BN over the levels' pixels pooled (one batch of N*sum_k H_k W_k rows), the
                      pooled running statistics updated by it; each child's running statistics
                      updated from its level's own moments (unbiased variance)
          sgd level   each level normalized with its own batch statistics (the child's running
                      statistics updated by it); the pooled running statistics updated from the
                      moments of all levels' pixels pooled (unbiased variance)
        momentum 0.1, eps 1e-5; every num_batches_tracked (pooled and per level) += 1 per forward.
        Eval with population "shared" (the pooled running statistics) or "level" (level k's).
  gn    head.normX = GroupNorm(H // 4, H), eps 1e-5 (affine shared), or a ModuleList of three
        (affine per level: head.normX.{k}.weight)
  none  no norm (conv -> ReLU)
Two SGD steps (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4 on conv weights only) on two
batches of 4, the whole model in training mode. Scenarios:
  ml_sss    bn, sgd shared, affine shared
  ml_dds    bn, sgd level, affine shared
  ml_ddd    bn, sgd level, affine per level
  ml_ssd    bn, sgd shared, affine per level
  ml_gn     GroupNorm
  ml_gnd    GroupNorm, affine per level
  ml_none   no norm
Each file holds
  config           [batch, sgd_level, affine_level, norm (0 bn, 1 gn, 2 none), head_width, height,
                   width, steps]
  lr               the learning rate
  <name>           the state_dict before the first step (conv weights OIHW)
  input<k>, labels<k>   the batch of step k (input NCHW)
  logits, loss     the first step's forward (logits: mean over the levels), mean cross-entropy
                   over the levels
  logits.<k>       the first step's logits of level k
  grad.<name>      the first step's gradient of every parameter
  after.<name>     running statistics (every buffer named *running*) after the first forward
  step<k>.<name>   parameters after step k (1-based)
  final.<name>     running statistics after the last step
  eval_shared.logits, eval_shared.logits.<k>, eval_level.logits, eval_level.logits.<k>
                   (bn only) after the last step, the whole model in eval mode on input0, the
                   head's BN with the pooled / the per-level running statistics
safetensors is written by hand (Debian has no safetensors package).
"""
import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnlab_torch import ResNet, save_safetensors, sgd

H = 8  # head width
LEVELS = 3
NORMS = {"bn": 0, "gn": 1, "none": 2}


class SharedBN(nn.ModuleList):
    """BN of one head norm over the levels: pooled and per-level running statistics, the affine
    shared (own weight/bias) or per level (the children's)."""

    def __init__(self, c, sgd_level, affine_level, momentum=0.1, eps=1e-5):
        super().__init__([nn.BatchNorm2d(c, eps=eps, momentum=momentum, affine=bool(affine_level))
                          for _ in range(LEVELS)])
        self.sgd_level, self.affine_level = sgd_level, affine_level
        self.momentum, self.eps = momentum, eps
        self.population = "shared"  # which running statistics eval uses: "shared" or "level"
        if affine_level:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        else:
            self.weight = nn.Parameter(torch.ones(c))
            self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def affine(self, k):
        if self.affine_level:
            return self[k].weight, self[k].bias
        return self.weight, self.bias

    def forward(self, xs):
        m, eps = self.momentum, self.eps
        if not self.training:
            out = []
            for k, x in enumerate(xs):
                w, b = self.affine(k)
                if self.population == "shared":
                    rm, rv = self.running_mean, self.running_var
                else:
                    rm, rv = self[k].running_mean, self[k].running_var
                out.append(F.batch_norm(x, rm, rv, w, b, False, 0.0, eps))
            return out
        if not self.sgd_level:
            rows = [x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) for x in xs]
            xhat = F.batch_norm(torch.cat(rows), self.running_mean, self.running_var, None, None, True, m, eps)
            self.num_batches_tracked += 1
            out = []
            for k, (x, part) in enumerate(zip(xs, xhat.split([r.shape[0] for r in rows]))):
                n, c, h, wd = x.shape
                w, b = self.affine(k)
                out.append(part.reshape(n, h, wd, c).permute(0, 3, 1, 2) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1))
            with torch.no_grad():
                for k, x in enumerate(xs):
                    child = self[k]
                    child.running_mean.mul_(1 - m).add_(m * x.mean(dim=(0, 2, 3)))
                    child.running_var.mul_(1 - m).add_(m * x.var(dim=(0, 2, 3), unbiased=True))
                    child.num_batches_tracked += 1
            return out
        out = []
        for k, x in enumerate(xs):
            w, b = self.affine(k)
            child = self[k]
            out.append(F.batch_norm(x, child.running_mean, child.running_var, w, b, True, m, eps))
            child.num_batches_tracked += 1
        with torch.no_grad():
            cat = torch.cat([x.transpose(0, 1).reshape(x.shape[1], -1) for x in xs], 1)
            self.running_mean.mul_(1 - m).add_(m * cat.mean(1))
            self.running_var.mul_(1 - m).add_(m * cat.var(1, unbiased=True))
            self.num_batches_tracked += 1
        return out


class Head(nn.Module):
    def __init__(self, norm, sgd_level=0, affine_level=0):
        super().__init__()
        self.conv1 = nn.Conv2d(H, H, 3, 1, 1, bias=False)
        self.norm1 = self.make_norm(norm, sgd_level, affine_level)
        self.conv2 = nn.Conv2d(H, H, 3, 1, 1, bias=False)
        self.norm2 = self.make_norm(norm, sgd_level, affine_level)
        self.cls = nn.Conv2d(H, 10, 1, bias=False)
        self.conv1_weights = None  # for the self-check: one clone of conv1.weight per level

    @staticmethod
    def make_norm(norm, sgd_level, affine_level):
        if norm == "bn":
            return SharedBN(H, sgd_level, affine_level)
        if norm == "gn" and affine_level:  # one GroupNorm (its affine) per level
            return nn.ModuleList([nn.GroupNorm(H // 4, H, eps=1e-5) for _ in range(3)])
        if norm == "gn":
            return nn.GroupNorm(H // 4, H, eps=1e-5)
        return None

    def norm(self, m, xs):
        if m is None:
            return xs
        if isinstance(m, SharedBN):
            return m(xs)
        if isinstance(m, nn.ModuleList):
            return [mk(x) for mk, x in zip(m, xs)]
        return [m(x) for x in xs]

    def forward(self, xs):
        ws = self.conv1_weights or [self.conv1.weight] * len(xs)
        xs = [F.conv2d(x, w, None, 1, 1) for x, w in zip(xs, ws)]
        xs = [F.relu(x) for x in self.norm(self.norm1, xs)]
        xs = [self.conv2(x) for x in xs]
        xs = [F.relu(x) for x in self.norm(self.norm2, xs)]
        return [torch.flatten(F.adaptive_avg_pool2d(self.cls(x), 1), 1) for x in xs]


class MultiLevel(ResNet):
    """resnet8-ml: the ResNet backbone (no fc), lateral 1x1 convs, one head over the levels."""

    def __init__(self, norm, sgd_level=0, affine_level=0):
        super().__init__(depth=8, width=4, in_ch=1)
        del self.fc
        self.lateral = nn.ModuleList([nn.Conv2d(c, H, 1, bias=False) for c in (4, 8, 16)])
        self.head = Head(norm, sgd_level, affine_level)

    def forward(self, x):
        """The list of the levels' logits."""
        out = F.relu(self.bn1(self.conv1(x)))
        f0 = self.layer1(out)
        f1 = self.layer2(f0)
        f2 = self.layer3(f1)
        return self.head([lat(f) for lat, f in zip(self.lateral, (f0, f1, f2))])


def loss_of(logits, y):
    return sum(F.cross_entropy(lk, y) for lk in logits) / len(logits)


def shared_bns(model):
    return [m for m in model.modules() if isinstance(m, SharedBN)]


def make_model(norm, sgd_level=0, affine_level=0):
    model = MultiLevel(norm, sgd_level, affine_level).double()
    with torch.no_grad():  # non-trivial affine parameters so they are exercised
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, SharedBN)) and m.weight is not None:
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return model


def batch(n):
    return torch.randn(n, 1, 12, 12).double(), torch.randint(0, 10, (n,))


def close(a, b, what, tol=1e-12):
    err = (a - b).abs().max().item()
    scale = max(1.0, b.abs().max().item())
    assert err <= tol * scale, "self-check failed: %s (max abs error %.3g)" % (what, err)


def check_first_forward(model, x, y, tied_grad):
    """The self-checks, on a copy of the model before the first step (tied_grad: the first step's
    gradient of head.conv1.weight)."""
    model = copy.deepcopy(model)
    model.train()
    seen = {}
    before = {id(m): {n: b.clone() for n, b in m.named_buffers()} for m in shared_bns(model)}
    hooks = [m.register_forward_hook(lambda m, args, out: seen.__setitem__(id(m), (args[0], out)))
             for m in shared_bns(model)]
    # head.conv1's gradient is the sum over the levels of its per-application gradients
    ws = [model.head.conv1.weight.detach().clone().requires_grad_(True) for _ in range(LEVELS)]
    model.head.conv1_weights = ws
    logits = model(x)
    loss_of(logits, y).backward()
    for h in hooks:
        h.remove()
    close(sum(w.grad for w in ws), tied_grad, "head.conv1.weight gradient = sum of the per-level gradients")
    for m in shared_bns(model):
        xs, out = seen[id(m)]
        xs = [t.detach() for t in xs]
        b0 = before[id(m)]
        cat = torch.cat([t.transpose(0, 1).reshape(H, -1) for t in xs], 1)
        # the pooled running mean from zero after one forward: 0.1 * the mean over all levels' pixels
        assert b0["running_mean"].abs().max().item() == 0
        close(m.running_mean, 0.1 * cat.mean(1), "pooled running mean = 0.1 * mean over all levels' pixels")
        close(m.running_var, 0.9 * b0["running_var"] + 0.1 * cat.var(1, unbiased=True),
              "pooled running var = EMA of the unbiased variance over all levels' pixels")
        assert m.num_batches_tracked.item() == b0["num_batches_tracked"].item() + 1
        for k, t in enumerate(xs):
            ref = nn.BatchNorm2d(H, momentum=0.1, eps=1e-5, affine=False).double().train()
            ref.running_mean.copy_(b0["%d.running_mean" % k])
            ref.running_var.copy_(b0["%d.running_var" % k])
            ref(t)
            close(m[k].running_mean, ref.running_mean, "level %d running mean" % k)
            close(m[k].running_var, ref.running_var, "level %d running var" % k)
            assert m[k].num_batches_tracked.item() == b0["%d.num_batches_tracked" % k].item() + 1
        if not m.sgd_level:
            # BN over the levels pooled = BatchNorm1d over the concatenation of their pixels
            ref = nn.BatchNorm1d(H, momentum=0.1, eps=1e-5, affine=False).double().train()
            ref.running_mean.copy_(b0["running_mean"])
            ref.running_var.copy_(b0["running_var"])
            xhat = ref(cat.t()).t()
            close(m.running_mean, ref.running_mean, "pooled running mean = BatchNorm1d's")
            close(m.running_var, ref.running_var, "pooled running var = BatchNorm1d's")
            off = 0
            for k, (t, o) in enumerate(zip(xs, out)):
                n, c, h, wd = t.shape
                part = xhat[:, off:off + n * h * wd].reshape(c, n, h, wd).transpose(0, 1)
                off += n * h * wd
                w, b = m.affine(k)
                close(o.detach(), part * w.detach().view(1, -1, 1, 1) + b.detach().view(1, -1, 1, 1),
                      "level %d output = BatchNorm1d over the concatenation, then the affine" % k)
        else:
            for k, (t, o) in enumerate(zip(xs, out)):
                w, b = m.affine(k)
                ref = F.batch_norm(t, None, None, w.detach(), b.detach(), True, 0.0, 1e-5)
                close(o.detach(), ref, "level %d output = BN with the level's own batch statistics" % k)


def write(path, model, batches, norm, sgd_level=0, affine_level=0, lr=0.1):
    """Runs len(batches) SGD steps on model, recording what the docstring lists."""
    n, _, h, w = batches[0][0].shape
    rec = {k: v.clone() for k, v in model.state_dict().items()}
    rec["config"] = torch.tensor([n, sgd_level, affine_level, NORMS[norm], H, h, w, len(batches)])
    rec["lr"] = torch.tensor([lr], dtype=torch.float64)
    start = copy.deepcopy(model)
    opt = sgd(model, lr)
    model.train()
    for k, (x, y) in enumerate(batches):
        rec["input%d" % k] = x
        rec["labels%d" % k] = y.long()
        opt.zero_grad()
        logits = model(x)
        loss = loss_of(logits, y)
        loss.backward()
        if k == 0:
            rec["logits"] = torch.stack(logits).mean(0).detach()
            for j, lj in enumerate(logits):
                rec["logits.%d" % j] = lj.detach()
            rec["loss"] = loss.detach().reshape(1)
            for name, p in model.named_parameters():
                rec["grad." + name] = p.grad.clone()
            for name, b in model.named_buffers():
                if "running" in name:
                    rec["after." + name] = b.clone()
            check_first_forward(start, x, y, model.head.conv1.weight.grad)
        opt.step()
        for name, p in model.named_parameters():
            rec["step%d.%s" % (k + 1, name)] = p.detach().clone()
    for name, b in model.named_buffers():
        if "running" in name:
            rec["final." + name] = b.clone()
    if norm == "bn":
        state = {name: b.clone() for name, b in model.named_buffers()}
        model.eval()
        with torch.no_grad():
            for pop in ("shared", "level"):
                for m in shared_bns(model):
                    m.population = pop
                logits = model(batches[0][0])
                rec["eval_%s.logits" % pop] = torch.stack(logits).mean(0)
                for j, lj in enumerate(logits):
                    rec["eval_%s.logits.%d" % (pop, j)] = lj
        for m in shared_bns(model):
            m.population = "shared"
        for name, b in model.named_buffers():
            assert torch.equal(b, state[name]), "eval changed " + name
        # the two populations differ (else the eval fixtures would not tell them apart)
        assert not torch.allclose(rec["eval_shared.logits"], rec["eval_level.logits"])
    # computed in float64, stored as float32 (half the size; the C side compares in float32)
    rec = {k: (v.float() if v.dtype == torch.float64 else v) for k, v in rec.items()}
    save_safetensors(path, rec, {"generator": "tools/gen_ml_fixture.py", "torch": torch.__version__})


SCENARIOS = [  # name, seed, norm, sgd_level, affine_level
    ("ml_sss", 20, "bn", 0, 0),
    ("ml_dds", 21, "bn", 1, 0),
    ("ml_ddd", 22, "bn", 1, 1),
    ("ml_ssd", 23, "bn", 0, 1),
    ("ml_gn", 24, "gn", 0, 0),
    ("ml_gnd", 26, "gn", 0, 1),
    ("ml_none", 25, "none", 0, 0),
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out, exist_ok=True)
    for name, seed, norm, sgd_level, affine_level in SCENARIOS:
        torch.manual_seed(seed)
        model = make_model(norm, sgd_level, affine_level)
        write(os.path.join(out, name + ".safetensors"), model, [batch(4) for _ in range(2)], norm, sgd_level,
              affine_level)


if __name__ == "__main__":
    main()
