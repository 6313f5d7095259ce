#!/usr/bin/python3
"""The PyTorch side of results/onnx-workflow (run.sh calls it): a small torchvision-style CNN
(torchvision's own BasicBlock) trained on Fashion-MNIST read as an image folder, with weight
averaging (torch.optim.swa_utils.AveragedModel over the last epochs) whose BN statistics are left
stale, as AveragedModel leaves them; exported with BN kept; and PyTorch's own repair,
swa_utils.update_bn, on the same images bnlab's precise uses, for comparison.

Needs Debian's python3-torch and python3-torchvision (scripts/install-deps.sh fixtures).
usage: /usr/bin/python3 tools/onnx_workflow.py train DATA_DIR OUT_DIR [--epochs E] [--seed S]
       /usr/bin/python3 tools/onnx_workflow.py update_bn OUT_DIR DATA_DIR N
DATA_DIR holds train/ and test/ image folders (bnlab corrupt --corruption clean --format png).
train writes OUT_DIR/swa_stale.onnx, OUT_DIR/swa.pt (the averaged model) and prints the test
error of the last model and of the averaged one with its stale statistics; update_bn prints the
averaged model's test error after update_bn on the first N training images (all 60000 in the
workflow, as bnlab precise --samples 0 takes them), in shuffled batches of 200."""
import json
import sys

import torch
import torch.nn as nn
import torchvision
from torchvision import transforms
from torchvision.models.resnet import BasicBlock

MEAN, STD = 0.2860, 0.3530


class SmallResNet(nn.Module):
    """A stem and three torchvision BasicBlocks (16, 32, 64 channels), pooled, linear."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True))

        def down(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))
        self.blocks = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2, down(16, 32)),
                                    BasicBlock(32, 64, 2, down(32, 64)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def folder(path, train):
    tf = [transforms.Grayscale(1)]
    if train:
        tf += [transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip()]
    tf += [transforms.ToTensor(), transforms.Normalize([MEAN], [STD])]
    return torchvision.datasets.ImageFolder(path, transforms.Compose(tf))


def error(model, loader):
    model.eval()
    wrong = n = 0
    with torch.no_grad():
        for x, y in loader:
            wrong += (model(x).argmax(1) != y).sum().item()
            n += len(y)
    return 100.0 * wrong / n


def export(model, path):
    model.eval()
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), path, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                      opset_version=13)


def train(data, out, epochs=6, seed=1):
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    tr = torch.utils.data.DataLoader(folder(f"{data}/train", True), batch_size=128, shuffle=True,
                                     num_workers=0)
    te = torch.utils.data.DataLoader(folder(f"{data}/test", False), batch_size=500)
    model = SmallResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(tr))
    swa, swa_from = None, epochs // 2
    for epoch in range(epochs):
        model.train()
        for x, y in tr:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        # weight averaging over the second half; AveragedModel copies the model once and then
        # averages parameters only, so its BN buffers stay those of that copy
        if epoch >= swa_from:
            if swa is None:
                swa = torch.optim.swa_utils.AveragedModel(model)
            else:
                swa.update_parameters(model)
        print(f"epoch {epoch + 1}: test error {error(model, te):.2f}%", file=sys.stderr)
    res = {"epochs": epochs, "swa_from_epoch": swa_from + 1, "seed": seed,
           "err_last": error(model, te), "err_swa_stale": error(swa.module, te)}
    export(swa.module, f"{out}/swa_stale.onnx")
    torch.save(swa.module.state_dict(), f"{out}/swa.pt")
    print(json.dumps(res))


def update_bn(out, data, n):
    torch.set_num_threads(2)
    model = SmallResNet()
    model.load_state_dict(torch.load(f"{out}/swa.pt"))
    ds = torch.utils.data.Subset(folder(f"{data}/train", False), range(n))
    # shuffled as a training loader is: in ImageFolder order a batch holds one class, and
    # update_bn's average of per-batch variances would miss the variance between classes
    loader = torch.utils.data.DataLoader(ds, batch_size=200, shuffle=True,
                                         generator=torch.Generator().manual_seed(1))
    torch.optim.swa_utils.update_bn(loader, model)
    te = torch.utils.data.DataLoader(folder(f"{data}/test", False), batch_size=500)
    print(json.dumps({"update_bn_samples": n, "err_swa_update_bn": error(model, te)}))


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "train" and len(a) >= 3:
        kw = {}
        for flag, key in (("--epochs", "epochs"), ("--seed", "seed")):
            if flag in a:
                kw[key] = int(a[a.index(flag) + 1])
        train(a[1], a[2], **kw)
    elif a and a[0] == "update_bn" and len(a) == 4:
        update_bn(a[1], a[2], int(a[3]))
    else:
        sys.exit(__doc__)
