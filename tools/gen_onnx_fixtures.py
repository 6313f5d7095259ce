#!/usr/bin/python3
"""Writes tests/fixtures/onnx/: small CNNs exported to ONNX with their BN kept, a shared input, and
PyTorch's references for bnlab's ONNX import (src/onnx).

Run with Debian's python3-torch, python3-torchvision and python3-onnx (scripts/install-deps.sh
fixtures):
    /usr/bin/python3 tools/gen_onnx_fixtures.py tests/fixtures/onnx
Files:
  inputs.npy          uint8 (64, 3, 32, 32) NCHW: Fashion-MNIST test images padded to 32x32, the
                      channels the image, its mirror and its transpose (structured, not noise)
  labels.npy          int64 (64): their Fashion-MNIST labels
  inputs.safetensors  both in one file: "images" and "labels" (bnlab's --tensors reads either)
  NAME.onnx           the model, exported in eval mode with TrainingMode.PRESERVE and no constant
                      folding (opset 13 unless named), so every BatchNormalization stays
  NAME.ref.safetensors
      logits          float32 (64, K): the model's outputs in eval mode on the normalized inputs
      pooled.<init>   float64: PreciseBN over the 64 inputs in batches of 16 - every BN in train
                      mode (batch statistics), each BN's input moments pooled over all samples
                      and pixels with equal weight (mean and biased variance), per initializer name
                      of the BN's mean and var
      sequential.<init>  float64: the layer-by-layer mode - BN k's input moments pooled with the
                      BNs before it already using their new statistics
      metadata f32_{pooled,sequential}_{mean,var}: how far PyTorch's own float32 forward lands
                      from these float64 references (worst channel): what float32 can reach
smallcat_folded.onnx is smallcat exported by default (BN folded into the convolutions): a model
without BN. Inputs are normalized with torchvision's ImageNet mean and std. BN buffers are set to distinct
values before export in every model but `plain_identity`, which keeps the exporter's sharing."""
import copy
import gzip
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torchvision.models import efficientnet, mobilenetv3
from torchvision.models.resnet import BasicBlock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bnlab_torch import save_safetensors  # noqa: E402

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
BATCH = 16


def inputs():
    path = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    img = np.pad(raw[:64], ((0, 0), (2, 2), (2, 2)))
    return np.stack([img, img[:, :, ::-1], img.transpose(0, 2, 1)], axis=1).copy()


class ResNet18Blocks(nn.Module):
    """resnet18's blocks (BasicBlock [2, 2, 2, 2], stem conv7x7/2 + maxpool) at width 8."""

    def __init__(self, width=8, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, inp = [], width
        for i, planes in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inp != planes:
                down = nn.Sequential(nn.Conv2d(inp, planes, 1, stride, bias=False),
                                     nn.BatchNorm2d(planes))
            layers.append(nn.Sequential(BasicBlock(inp, planes, stride, down),
                                        BasicBlock(planes, planes)))
            inp = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inp, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SmallCat(nn.Module):
    """A small CNN whose layout mistakes show: channels concatenated, a 4x4 map flattened (C, H, W
    order), a softmax at the end."""

    def __init__(self, classes=10):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 4, 5, 2, 2, bias=False), nn.BatchNorm2d(4), nn.ReLU6())
        self.c = nn.Sequential(nn.Conv2d(10, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.MaxPool2d(2, 2))
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        return torch.softmax(self.fc(torch.flatten(self.c(y), 1)), 1)


def mobilenet_v2():
    return torchvision.models.mobilenet_v2(width_mult=0.2, num_classes=10)


def mobilenet_v3_small():
    setting, last = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return mobilenetv3.MobileNetV3(setting, last, num_classes=10)


def efficientnet_b0():
    setting, last = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.25,
                                                    depth_mult=0.5)
    return efficientnet.EfficientNet(setting, 0.2, num_classes=10, last_channel=last)


def distinct_buffers(model, g):
    """BN statistics unlike the export defaults (0 and 1), and unlike each other."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))


def bns(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def moments_of(model, x, which):
    """Each BN's (or one BN's) input sum and sum of squares per channel, in float64."""
    acc = {}

    def hook(name):
        def f(mod, inp):
            v = inp[0].double()
            s = acc.setdefault(name, [0, 0, 0])
            s[0] = s[0] + v.sum((0, 2, 3))
            s[1] = s[1] + (v * v).sum((0, 2, 3))
            s[2] += v.shape[0] * v.shape[2] * v.shape[3]
        return f

    hs = [m.register_forward_pre_hook(hook(n)) for n, m in bns(model) if which is None or n == which]
    with torch.no_grad():
        for b in range(0, x.shape[0], BATCH):
            model(x[b:b + BATCH])
    for h in hs:
        h.remove()
    return {n: (s[0] / s[2], s[1] / s[2] - (s[0] / s[2]) ** 2) for n, s in acc.items()}


def references(model, x, dtype=torch.float64):
    m64 = copy.deepcopy(model).to(dtype)
    x = x.to(dtype)
    m64.eval()  # pooled: every BN with its batch's statistics, the rest (dropout, stochastic
    for _, bn in bns(m64):  # depth) as at inference
        bn.train()
    pooled = moments_of(m64, x, None)
    m64 = copy.deepcopy(model).to(dtype)
    m64.eval()
    seq = {}
    for name, bn in bns(m64):  # layer by layer, each BN before it with its new statistics
        mean, var = moments_of(m64, x, name)[name]
        bn.running_mean.copy_(mean.to(dtype))
        bn.running_var.copy_(var.to(dtype))
        seq[name] = (mean, var)
    return pooled, seq


def export(model, path, opset=13):
    x = torch.zeros(2, 3, 32, 32)
    torch.onnx.export(model, x, path, training=torch.onnx.TrainingMode.PRESERVE,
                      do_constant_folding=False, opset_version=opset,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def write(out_dir, name, model, raw, opset=13):
    model.eval()
    x = (torch.from_numpy(raw).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / \
        torch.tensor(STD).view(1, 3, 1, 1)
    export(model, f"{out_dir}/{name}.onnx", opset)
    with torch.no_grad():
        logits = model(x)
    pooled, seq = references(model, x)
    # PyTorch's own float32 forward against the float64 reference: the precision a float32
    # engine can reach on this model (the tests' bar is the larger of 1e-5 and twice this)
    p32, s32 = references(model, x, torch.float32)
    f32 = {}
    for tag, ref, got in (("pooled", pooled, p32), ("sequential", seq, s32)):
        em = ev = 0.0
        for n in ref:
            sd = ref[n][1].sqrt()
            em = max(em, ((got[n][0] - ref[n][0]).abs() / sd).max().item())
            ev = max(ev, ((got[n][1] - ref[n][1]).abs() / ref[n][1]).max().item())
        f32[f"f32_{tag}_mean"], f32[f"f32_{tag}_var"] = f"{em:.3g}", f"{ev:.3g}"
    t = {"logits": logits}
    for n, _ in bns(model):
        for tag, d in (("pooled", pooled), ("sequential", seq)):
            t[f"{tag}.{n}.running_mean"] = d[n][0]
            t[f"{tag}.{n}.running_var"] = d[n][1]
    save_safetensors(f"{out_dir}/{name}.ref.safetensors", t,
                     {"mean": ",".join(map(str, MEAN)), "std": ",".join(map(str, STD)),
                      "batch": str(BATCH), **f32})


def save_npy_u8(path, a):
    np.save(path, a)


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    raw = inputs()
    save_npy_u8(f"{out_dir}/inputs.npy", raw)
    # the same images with their Fashion-MNIST labels, as .npy and as one safetensors file
    with gzip.open("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:64].astype(np.int64)
    np.save(f"{out_dir}/labels.npy", labels)
    save_safetensors(f"{out_dir}/inputs.safetensors", {"images": torch.from_numpy(raw),
                                                        "labels": torch.from_numpy(labels)})
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    models = [("resnet18_w8", ResNet18Blocks, 13, True),
              ("mobilenet_v2_w02", mobilenet_v2, 13, True),
              ("mobilenet_v3_small_w025", mobilenet_v3_small, 14, True),  # HardSwish, training_mode
              ("efficientnet_b0_w025", efficientnet_b0, 13, True),       # SiLU, SE, eps 1e-3
              ("smallcat", SmallCat, 13, True),
              ("plain_identity", SmallCat, 13, False)]  # fresh buffers: the exporter shares them
    for name, make, opset, distinct in models:
        torch.manual_seed(5)
        m = make()
        if distinct:
            distinct_buffers(m, g)
        write(out_dir, name, m, raw, opset)
        if name == "smallcat":  # the default export folds BN away: a model without BN
            torch.onnx.export(m.eval(), torch.zeros(2, 3, 32, 32), f"{out_dir}/smallcat_folded.onnx",
                              opset_version=13, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/onnx")
