#!/usr/bin/python3
"""Writes tests/fixtures/torch_resnet8_w4*.safetensors: a checkpoint as PyTorch users write it.

Run with Debian's python3-torch: /usr/bin/python3 tools/gen_torch_state_dict.py tests/fixtures
(the pyenv python3 on PATH has no torch). Proves bnlab reads a plain state_dict, with no bnlab metadata.

  torch_resnet8_w4.safetensors         model.state_dict() of a resnet8 of width 4 (float32, conv
                                       weights OIHW, num_batches_tracked I64 shape []), laid out
                                       byte for byte as safetensors.torch.save_file(sd, path) writes
                                       it (no __metadata__); trained on Fashion-MNIST until the
                                       eval-mode test error is under 20%
  torch_resnet8_w4_logits.safetensors  logits    F32 [256,10]  eval-mode logits of the first 256 test images
                                       labels    I64 [256]
                                       test_err  F64 [1]       eval-mode error in % over the 10000 test images
                                       data_mean, data_std F64 [1]  0.5, 0.5: the input normalization
                                       logits_double F64 [256,10]  the same from a float64 copy of the model
                                                                   (same float32 inputs)
The normalization (x/255 - 0.5)/0.5 is deliberately not bnlab's default, so the C side must be
given --data-mean 0.5 --data-std 0.5.
"""
import copy
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from bnlab_torch import ResNet, load_fmnist, save_safetensors

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.5, 0.5

# The safetensors Dtype enum is declared in increasing alignment order, and the writer sorts by
# (dtype descending, name ascending): the enum position is the sort key, not the byte size.
ST_DTYPES = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
             "F32", "F64", "I64", "U64"]
TORCH_TO_ST = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
ST_TO_NUMPY = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def save_file_like_safetensors(path, tensors):
    """What safetensors.torch.save_file(tensors, path) writes (no metadata)."""
    items = sorted(((name, t.detach().cpu().contiguous()) for name, t in tensors.items()),
                   key=lambda kv: (-ST_DTYPES.index(TORCH_TO_ST[kv[1].dtype]), kv[0]))
    header, blobs, off = {}, [], 0
    for name, t in items:
        data = t.numpy().tobytes()  # little-endian on every machine we run on
        header[name] = {"dtype": TORCH_TO_ST[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    # serde_json's compact form; ensure_ascii is harmless as the names are ASCII
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    """Parses the file back independently, checking the layout the C reader may rely on."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    assert n % 8 == 0
    header = json.loads(blob[8:8 + n])
    assert "__metadata__" not in header
    data, end, out = blob[8 + n:], 0, {}
    for name, e in header.items():  # json keeps file order: offsets must be contiguous in it
        b, en = e["data_offsets"]
        assert b == end, name
        arr = np.frombuffer(data[b:en], dtype=ST_TO_NUMPY[e["dtype"]]).reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
        end = en
    assert end == len(data)
    return out, header, blob[8:8 + n].decode()


def normalize(img):
    # float32 throughout, the same operations as bnlab's (img / 255.0f - mean) / std
    return ((torch.from_numpy(img).float() / 255 - MEAN) / STD).unsqueeze(1)


@torch.no_grad()
def test_error(model, x, y):
    wrong = sum((model(x[i:i + 1000]).argmax(1) != y[i:i + 1000]).sum().item() for i in range(0, len(x), 1000))
    return 100.0 * wrong / len(x)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic, and leaves the other core free

    img, lab = load_fmnist(FMNIST_DIR, "train")
    x_train, y_train = normalize(img), torch.from_numpy(lab)
    img, lab = load_fmnist(FMNIST_DIR, "test")
    x_test, y_test = normalize(img), torch.from_numpy(lab)

    # Stock PyTorch everything (BN momentum 0.1, eps 1e-5; no weight decay, no augmentation): the
    # point is a checkpoint from someone who never heard of bnlab, not a good model.
    model = ResNet(depth=8, width=4, classes=10, in_ch=1).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(1, 6):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(x_train))
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
        model.eval()
        err = test_error(model, x_test, y_test)
        print("epoch %d: test error %.2f%% (%.0f s)" % (epoch, err, time.time() - t0))
        if err < 20:
            break
    assert err < 20, "did not reach 20% test error"

    sd_path = os.path.join(out, "torch_resnet8_w4.safetensors")
    save_file_like_safetensors(sd_path, model.state_dict())

    with torch.no_grad():
        x, y = x_test[:256], y_test[:256]
        logits = model(x)
        model64 = copy.deepcopy(model).double()
        logits64 = model64(x.double())  # same float32 inputs: only the model's arithmetic differs

        # Round trip through the file into a fresh model: bit-identical logits or the file is wrong
        sd, header, hjson = read_safetensors(sd_path)
        fresh = ResNet(depth=8, width=4, classes=10, in_ch=1)
        fresh.load_state_dict(sd, strict=True)
        fresh.eval()
        rt = (fresh(x) - logits).abs().max().item()

    lg_path = os.path.join(out, "torch_resnet8_w4_logits.safetensors")
    save_safetensors(lg_path, {
        "logits": logits, "labels": y.long(),
        "test_err": torch.tensor([err], dtype=torch.float64),
        "data_mean": torch.tensor([MEAN], dtype=torch.float64),
        "data_std": torch.tensor([STD], dtype=torch.float64),
        "logits_double": logits64})

    print("test error (eval mode, 10000 images): %.2f%%" % err)
    for p in (sd_path, lg_path):
        print("%s: %d bytes" % (p, os.path.getsize(p)))
    assert os.path.getsize(sd_path) < 200_000
    print("max |float32 - float64| logit: %.3g" % (logits.double() - logits64).abs().max().item())
    print("round trip through %s: max |logit diff| = %g" % (sd_path, rt))
    assert rt == 0
    print("header (%d bytes): %s" % (len(hjson), hjson[:400]))
    for name, e in header.items():
        print("  %-40s %s %s" % (name, e["dtype"], e["shape"]))


if __name__ == "__main__":
    main()
