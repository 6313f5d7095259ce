"""Shared by the tools/ scripts: the PyTorch twin of bnlab's ResNet, and safetensors and
Fashion-MNIST readers/writers by hand (Debian has no safetensors package; tests never need torch)."""
import gzip
import json
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """The CIFAR ResNet (He et al. 2016, section 4.2), depth 6n+2, width w, option-B shortcuts."""

    def __init__(self, depth=20, width=16, classes=10, in_ch=1):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_ch, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        cin, layers = width, []
        for stage in range(3):
            planes = width << stage
            blocks = []
            for j in range(n):
                blocks.append(Block(cin, planes, 2 if stage > 0 and j == 0 else 1))
                cin = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def sgd(model, lr):
    """bnlab's SGD: momentum 0.9, Nesterov, weight decay 5e-4 on conv/linear weights only."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0}],
                           lr=lr, momentum=0.9, nesterov=True)


def save_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        t = t.detach().contiguous()
        dtype = {torch.float64: "F64", torch.float32: "F32", torch.int64: "I64",
                 torch.uint8: "U8"}[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    """Returns ({name: tensor}, metadata)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = blob[8 + n:]
    types = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8}
    out = {}
    for name, e in header.items():
        b, en = e["data_offsets"]
        arr = np.frombuffer(data[b:en], dtype=types[e["dtype"]]).reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out, meta


def load_fmnist(directory, split):
    """(images uint8 [N,28,28], labels int64 [N]) from the IDX gzip files."""
    pre = "train" if split == "train" else "t10k"
    with gzip.open("%s/%s-images-idx3-ubyte.gz" % (directory, pre)) as f:
        img = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28).copy()
    with gzip.open("%s/%s-labels-idx1-ubyte.gz" % (directory, pre)) as f:
        lab = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return img, lab


FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
