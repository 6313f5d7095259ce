#!/usr/bin/env python3
"""Prints one SHA-256 per tensor of safetensors files (names sorted, metadata excluded), and one
hash over them all per file, so two builds' checkpoints can be compared bit for bit even when one
writes more metadata than the other.

usage: tools/tensor_hashes.py FILE.safetensors... [--summary]   (standard library only)"""
import hashlib
import json
import struct
import sys


def tensor_hashes(path):
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    data = blob[8 + hlen:]
    out = {}
    for name in sorted(k for k in header if k != "__metadata__"):
        b, e = header[name]["data_offsets"]
        out[name] = hashlib.sha256(data[b:e]).hexdigest()
    return out


def main(argv):
    summary = "--summary" in argv
    files = [a for a in argv if a != "--summary"]
    if not files:
        print(__doc__, file=sys.stderr)
        return 2
    for path in files:
        h = tensor_hashes(path)
        total = hashlib.sha256("".join(f"{k}={v}\n" for k, v in h.items()).encode()).hexdigest()
        if not summary:
            for k, v in h.items():
                print(f"{v}  {k}")
        print(f"{total}  {path} ({len(h)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
