#!/usr/bin/env bash
# make demo: a short real training run on Fashion-MNIST (3-5 minutes on 2 cores), then the
# test error of the result with population statistics and with mini-batch statistics side by side.
set -euo pipefail
build=${BUILD:-build}
out=${DEMO_OUT:-${TMPDIR:-/tmp}/bnlab-demo}
bnlab="$build/bnlab"
echo "== training resnet8 (width 16) for 3 epochs, SGD batch 128, normalization batch 32 (ghost groups)"
"$bnlab" train --model resnet8 --width 16 --epochs 3 --norm-batch 32 --eval-minibatch on --out "$out"
ckpt="$out/last.safetensors"
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
echo
echo "== the same checkpoint, evaluated on the 10000 test images"
printf "%-44s %s\n" "statistics used at inference" "test error %"
pop=$("$bnlab" eval "$ckpt" --json on)
est=$(echo "$pop" | sed -n 's/.*"estimator":"\([a-z-]*\)".*/\1/p') # precise: train's final PreciseBN
printf "%-44s %s\n" "population (as stored: $est)" "$(echo "$pop" | field err)"
for g in 128 32 8 2; do
  printf "%-44s %s\n" "mini-batch, groups of $g test images" \
    "$("$bnlab" eval "$ckpt" --stats minibatch --norm-batch "$g" --json on | field err)"
done
echo
echo "Reading: mini-batch statistics at the training normalization batch (32) come close to the"
echo "population; very small groups at inference are far off (the batch is part of the model)."
echo "More: bnlab train --help, bnlab eval --help, bnlab demo (the BN core alone)."
