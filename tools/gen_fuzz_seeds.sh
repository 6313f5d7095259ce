#!/usr/bin/env bash
# Writes the fuzz targets' seed corpora (tests/fuzz/corpus/TARGET/): small valid inputs of every
# kind each target reads, so fuzzing starts from the real formats. Needs a built bnlab and the
# dataset (the checkpoints are one-step trainings of tiny models).
# usage: tools/gen_fuzz_seeds.sh [BNLAB]
set -euo pipefail
cd "$(dirname "$0")/.."
bnlab=${1:-build/bnlab}
c=tests/fuzz/corpus
mkdir -p $c/fuzz_checkpoint $c/fuzz_idx $c/fuzz_options $c/fuzz_onnx $c/fuzz_npy
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# checkpoints: a mode byte (fuzz_checkpoint.c), then the file
i=0
for m in "resnet8 --width 2" "resnet8-ml --width 2 --head-width 4" \
         "resnet8-ml --width 2 --head-width 4 --head-norm gn" \
         "resnet8-crops --width 2 --head-width 8 --crops 2"; do
  "$bnlab" train --model $m --batch 8 --epochs 1 --max-steps 1 --final-precise-bn off \
    --eval-every 0 --out "$tmp/$i" >/dev/null
  for mode in 0 2 3; do
    { printf "\\x0$mode"; cat "$tmp/$i/last.safetensors"; } > $c/fuzz_checkpoint/seed-$i-mode$mode
  done
  i=$((i + 1))
done
{ printf '\x01'; cat tests/fixtures/torch_resnet8_w4.safetensors; } > $c/fuzz_checkpoint/seed-torch-mode1
# every dtype the reader converts, and metadata
python3 - "$c/fuzz_checkpoint/seed-dtypes-mode3" <<'PY'
import json, struct, sys
data = struct.pack('<2f', 1.5, -2) + struct.pack('<2d', 3.25, 4) + struct.pack('<2q', 5, -6) + bytes([7, 8])
hdr = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
       "b": {"dtype": "F64", "shape": [1, 2], "data_offsets": [8, 24]},
       "c": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]},
       "d": {"dtype": "U8", "shape": [2, 1], "data_offsets": [40, 42]},
       "__metadata__": {"format": "pt", "k": "v"}}
h = json.dumps(hdr).encode()
open(sys.argv[1], "wb").write(b'\x03' + struct.pack('<Q', len(h)) + h + data)
PY

# IDX pairs: flags byte, 2-byte images length, images, labels (fuzz_idx.c)
python3 - "$c/fuzz_idx" <<'PY'
import gzip, struct, sys
d = sys.argv[1]
def pair(n, h, w, gz_flags, name, labels=None):
    img = struct.pack('>4I', 0x803, n, h, w) + bytes((i * 37) % 256 for i in range(n * h * w))
    lab = struct.pack('>2I', 0x801, n) + bytes(labels if labels else [i % 10 for i in range(n)])
    open(f"{d}/{name}", "wb").write(bytes([gz_flags]) + struct.pack('<H', len(img)) + img + lab)
pair(3, 4, 4, 0, "seed-raw")
pair(2, 28, 28, 0, "seed-raw-28")
pair(3, 4, 4, 3, "seed-gzip-flags")
pair(1, 1, 1, 1, "seed-one")
# the bytes themselves a gzip stream (flags 0): corrupt deflate data reaches zlib
img = gzip.compress(struct.pack('>4I', 0x803, 2, 3, 3) + bytes(range(18)))
lab = gzip.compress(struct.pack('>2I', 0x801, 2) + bytes([1, 9]))
open(f"{d}/seed-gzip-raw", "wb").write(b'\x00' + struct.pack('<H', len(img)) + img + lab)
PY

# command lines: arguments separated by NUL (fuzz_options.c)
opts=fuzz_options
printf -- '--epochs\0 3\0--lr\0 0.05\0-o\0out' | tr -d ' ' > $c/$opts/seed-basic
printf -- '--seed\0 18446744073709551615\0--max-steps\0 1e3\0--eval-minibatch\0--schedule\0step' | tr -d ' ' > $c/$opts/seed-types
printf -- '--data-mean\0 0.5\0--data-std\0 0.25\0--model\0resnet20\0--width\0 8\0--head-pop\0level' | tr -d ' ' > $c/$opts/seed-foreign
printf -- 'resnet20-ml\0{"norm":"bn","sgd":"level","width":32}' > $c/$opts/seed-names
printf -- 'bad cfg.norm_batch and (cfg.lr\0contrast' > $c/$opts/seed-error
echo "seeds in $c: $(ls $c/fuzz_checkpoint | wc -l) checkpoints, $(ls $c/fuzz_idx | wc -l) IDX pairs, $(ls $c/$opts | wc -l) command lines"

# ONNX models: the small fixtures (tools/gen_onnx_fixtures.py); .npy arrays of each dtype
for f in smallcat plain_identity smallcat_folded nanstats $(cd tests/fixtures/onnx && ls bad_*.onnx crafted_*.onnx | sed "s/.onnx$//"); do
  cp tests/fixtures/onnx/$f.onnx $c/fuzz_onnx/seed-$f
done
/usr/bin/python3 - "$c/fuzz_npy" <<'PY'
import sys
import numpy as np
d = sys.argv[1] + "/"
rng = np.random.default_rng(1)
np.save(d + "seed-u8.npy", rng.integers(0, 255, (2, 3, 4, 4), dtype=np.uint8))
np.save(d + "seed-f4.npy", rng.standard_normal((2, 1, 3, 3)).astype(np.float32))
np.save(d + "seed-f8.npy", rng.standard_normal((1, 2, 2, 2)))
np.save(d + "seed-i8.npy", np.arange(5, dtype=np.int64))
with open(d + "seed-v2.npy", "wb") as f:
    np.lib.format.write_array(f, np.zeros((1, 1, 2, 2), np.uint8), version=(2, 0))
PY
