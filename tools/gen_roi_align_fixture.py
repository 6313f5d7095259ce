#!/usr/bin/python3
"""Writes tests/fixtures/roi_align.safetensors: torchvision's roi_align, the anchor of bnlab's crop
sampling (src/nn/roi_align.c).

Run with Debian's python3-torch and python3-torchvision:
    /usr/bin/python3 tools/gen_roi_align_fixture.py tests/fixtures
torchvision.ops.roi_align(x, boxes, output_size=4, spatial_scale=1, sampling_ratio=1,
aligned=True) in float64 on a random map x of 3 images, 5 channels, 7 rows, 6 columns, with boxes
inside the map (the crop head's), at its borders and partly outside (torchvision's border rules),
thin ones, and its gradient for a random dy by autograd. The file holds
  x      (3, 7, 6, 5)  NHWC (bnlab's layout; torchvision's NCHW transposed)
  boxes  (K, 5)        image index, x0, y0, x1, y1
  y      (K, 4, 4, 5)  NHWC
  dy     (K, 4, 4, 5)
  dx     (3, 7, 6, 5)  the gradient of sum(dy * y) with respect to x
stored as float32 (bnlab computes in float)."""
import sys

import torch
from torchvision.ops import roi_align

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bnlab_torch import save_safetensors  # noqa: E402


def main(out_dir):
    g = torch.Generator().manual_seed(7)
    n, c, h, w = 3, 5, 7, 6
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).requires_grad_(True)
    boxes = [
        [0, 0.0, 0.0, 6.0, 7.0],      # the whole map
        [0, 1.3, 2.1, 5.2, 6.0],      # inside
        [1, 0.5, 0.25, 4.5, 4.25],    # inside, square
        [1, 2.0, 3.0, 2.4, 3.3],      # thin: several bins in one pixel
        [2, 4.1, 5.0, 6.0, 7.0],      # against the right and bottom borders
        [2, -0.8, -0.6, 2.0, 2.5],    # partly left of and above the map (clamped samples)
        [2, 4.0, 5.5, 8.5, 9.0],      # partly outside, some bins beyond -> 0
        [0, 0.0, 0.0, 1.0, 1.0],      # one pixel
    ]
    b = torch.tensor(boxes, dtype=torch.float64)
    y = roi_align(x, b, output_size=4, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (y * dy).sum().backward()
    nhwc = lambda t: t.detach().permute(0, 2, 3, 1).contiguous().float()  # noqa: E731
    save_safetensors(f"{out_dir}/roi_align.safetensors", {
        "x": nhwc(x), "boxes": b.float(), "y": nhwc(y), "dy": nhwc(dy), "dx": nhwc(x.grad),
    }, {"source": "torchvision.ops.roi_align aligned=True sampling_ratio=1 output_size=4"})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
