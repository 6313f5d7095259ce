#!/usr/bin/env bash
# The ONNX workflow end to end (NOTES.md): Fashion-MNIST as image folders, a small torchvision-style
# CNN trained in PyTorch with weight averaging whose BN statistics go stale, exported with BN kept;
# bnlab inspect flags it, bnlab precise mends it (beside PyTorch's update_bn on the same images),
# bnlab adapt (plain, --prior, --online) on Fashion-MNIST-C contrast 5 as a folder, bnlab fold.
# Data and models go to work/ (git-ignored); the logs and summary.json are committed.
# Needs Debian's python3-torch and python3-torchvision (scripts/install-deps.sh fixtures).
# usage: results/onnx-workflow/run.sh [BNLAB]   (resumable: finished steps are skipped)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bnlab=${1:-$root/build/bnlab}
W=$here/work
mkdir -p "$W/data"
py=/usr/bin/python3
log() { echo "== $*" >&2; }
# 1. the data as image folders (train and test clean, test under contrast 5)
[ -d "$W/data/clean/train" ] || "$bnlab" corrupt --corruption clean --split train --format png -o "$W/data/clean"
[ -d "$W/data/clean/test" ] || "$bnlab" corrupt --corruption clean --split test --format png -o "$W/data/clean"
[ -d "$W/data/contrast5/test" ] ||
  "$bnlab" corrupt --corruption contrast --severity 5 --format png -o "$W/data/contrast5" --preview off
# 2. PyTorch: train, average, export with the stale statistics; update_bn for comparison
[ -s "$W/swa_stale.onnx" ] || $py "$root/tools/onnx_workflow.py" train "$W/data/clean" "$W" --epochs 6 > "$here/torch_train.json"
[ -s "$here/torch_update_bn.json" ] || $py "$root/tools/onnx_workflow.py" update_bn "$W" "$W/data/clean" 60000 > "$here/torch_update_bn.json"
# the images are the model's 28x28: no Resize, no crop; grey by the model's one input channel
img=(--resize 0 --crop 0)
b() { # b NAME ARGS...: a bnlab command, its stdout in NAME.log (and NAME.json with --json)
  local name=$1; shift
  log "bnlab $*"
  "$bnlab" "$@" > "$here/$name.log"
}
# 3. bnlab on the stale model: its error, the verdict, PreciseBN on all 60000 training images
b eval_stale eval "$W/swa_stale.onnx" --images "$W/data/clean/test" "${img[@]}" --json on
b inspect_stale inspect "$W/swa_stale.onnx" --images "$W/data/clean/train" "${img[@]}" --samples 10000 --precise-batch 200 --batch 128
b precise precise "$W/swa_stale.onnx" --images "$W/data/clean/train" "${img[@]}" --samples 0 --batch 200 -o "$W/swa_precise.onnx" --save-stats "$W/swa_precise_stats.safetensors"
b eval_precise eval "$W/swa_precise.onnx" --images "$W/data/clean/test" "${img[@]}" --json on
b inspect_precise inspect "$W/swa_precise.onnx" --images "$W/data/clean/train" "${img[@]}" --samples 10000 --precise-batch 200 --batch 128
# 4. a new domain: contrast 5 (held-out protocol: the first half adapts, the second evaluates)
b adapt adapt "$W/swa_precise.onnx" --images "$W/data/contrast5/test" "${img[@]}" --samples 1000 --batch 200 --draws 5 --json on
for p in 16 256; do
  b adapt_prior$p adapt "$W/swa_precise.onnx" --images "$W/data/contrast5/test" "${img[@]}" --samples 1000 --batch 200 --draws 5 --prior $p --json on
done
b adapt_online adapt "$W/swa_precise.onnx" --images "$W/data/contrast5/test" "${img[@]}" --online on --batch 64 --json on
b adapt_online_prior adapt "$W/swa_precise.onnx" --images "$W/data/contrast5/test" "${img[@]}" --online on --batch 64 --prior 256 --json on
# 5. deployment: BN folded into the convolutions, checked on the test images, the int8 report
b fold fold "$W/swa_precise.onnx" -o "$W/swa_folded.onnx" --images "$W/data/clean/test" "${img[@]}"
b fold_json fold "$W/swa_precise.onnx" -o "$W/swa_folded.onnx" --images "$W/data/clean/test" "${img[@]}" --json on
b eval_folded eval "$W/swa_folded.onnx" --images "$W/data/clean/test" "${img[@]}" --json on
log "done: $here/*.log"
