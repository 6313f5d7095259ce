#!/usr/bin/python3
"""Writes tests/fixtures/crop_head.safetensors: the crop head (src/nn/crop_head.c) in PyTorch, the
anchor of tests/test_crop_head.c.

Run with Debian's python3-torch and python3-torchvision:
    /usr/bin/python3 tools/gen_crop_head_fixture.py tests/fixtures
A 6x6x3 map of 4 images, 5 boxes per image; the head: torchvision's roi_align(aligned=True,
sampling_ratio=1) to 4x4, flattened (4, 4, C) per crop (bnlab's NHWC order) - fc1 (no bias) -
norm - ReLU - fc2 (no bias) - norm - ReLU - cls (bias); the loss: the mean cross-entropy over all
crops, each labelled with its image's class. In float64, four variants of the norm:
  img1   BN over the crops of each image (groups of 1 image: training-mode batch statistics)
  img2   BN over the crops of each pair of images
  shuf2  the rows permuted by `perm` after fc1 (slot s takes row perm[s]), BN over groups of 2
         images' worth of rows, and the logits permuted back
  gn     GroupNorm of each crop (32 groups of 2 channels)
Each variant stores its logits, loss and the gradients of the map and of every parameter."""
import sys

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bnlab_torch import save_safetensors  # noqa: E402

N, C, H, W, K, WIDTH, CLASSES = 4, 3, 6, 6, 5, 64, 4


def bn_groups(z, rows, gamma, beta):
    """Training-mode BN over consecutive groups of `rows` rows (biased variance, eps 1e-5)."""
    out = []
    for g in range(0, z.shape[0], rows):
        out.append(F.batch_norm(z[g:g + rows], None, None, gamma, beta, training=True, eps=1e-5))
    return torch.cat(out)


def head(p, x, boxes, labels, variant, perm):
    y = roi_align(x, boxes, output_size=4, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    z = y.permute(0, 2, 3, 1).reshape(N * K, 16 * C) @ p["head.fc1.weight"].T
    if variant == "shuf2":
        z = z[perm]
    for stage in (1, 2):
        if variant == "gn":
            z = F.group_norm(z, 32, p[f"head.norm{stage}.weight"], p[f"head.norm{stage}.bias"], 1e-5)
        else:
            rows = K * (1 if variant == "img1" else 2)
            z = bn_groups(z, rows, p[f"head.norm{stage}.weight"], p[f"head.norm{stage}.bias"])
        z = F.relu(z)
        if stage == 1:
            z = z @ p["head.fc2.weight"].T
    z = z @ p["head.cls.weight"].T + p["head.cls.bias"]
    if variant == "shuf2":
        z = z[torch.argsort(perm)]
    return z, F.cross_entropy(z, labels.repeat_interleave(K))


def main(out_dir):
    g = torch.Generator().manual_seed(17)
    f64 = torch.float64
    x0 = torch.randn(N, C, H, W, generator=g, dtype=f64)
    boxes = []
    for i in range(N):
        for _ in range(K):
            side = 1.5 + 4.0 * torch.rand(1, generator=g, dtype=f64).item()
            bx, by = (torch.rand(2, generator=g, dtype=f64) * (W - side)).tolist()
            boxes.append([i, bx, by, bx + side, by + side])
    boxes = torch.tensor(boxes, dtype=f64)
    labels = torch.tensor([2, 0, 3, 2])
    perm = torch.randperm(N * K, generator=g)
    params = {
        "head.fc1.weight": torch.randn(WIDTH, 16 * C, generator=g, dtype=f64) * 0.2,
        "head.fc2.weight": torch.randn(WIDTH, WIDTH, generator=g, dtype=f64) * 0.2,
        "head.cls.weight": torch.randn(CLASSES, WIDTH, generator=g, dtype=f64) * 0.2,
        "head.cls.bias": torch.randn(CLASSES, generator=g, dtype=f64) * 0.1,
    }
    for stage in (1, 2):
        params[f"head.norm{stage}.weight"] = 1 + 0.3 * torch.randn(WIDTH, generator=g, dtype=f64)
        params[f"head.norm{stage}.bias"] = 0.2 * torch.randn(WIDTH, generator=g, dtype=f64)
    out = {"x": x0.permute(0, 2, 3, 1).contiguous(), "boxes": boxes, "labels": labels.double(),
           "perm": perm.double()}
    out.update(params)
    for variant in ("img1", "img2", "shuf2", "gn"):
        x = x0.clone().requires_grad_(True)
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        z, loss = head(p, x, boxes, labels, variant, perm)
        loss.backward()
        out[f"{variant}.logits"] = z.detach()
        out[f"{variant}.loss"] = loss.detach().reshape(1)
        out[f"{variant}.dx"] = x.grad.permute(0, 2, 3, 1).contiguous()
        for k, v in p.items():
            out[f"{variant}.grad.{k}"] = v.grad
    save_safetensors(f"{out_dir}/crop_head.safetensors", {k: v.float() for k, v in out.items()},
                     {"source": "tools/gen_crop_head_fixture.py: torchvision roi_align + 2fc head"})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
