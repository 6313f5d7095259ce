#!/usr/bin/env bash
# Fixed-seed short runs of a bnlab build, hashed: every tensor of their checkpoints (names sorted,
# metadata excluded) and their evaluation numbers, so a refactoring can show it changed nothing, bit
# for bit, on one machine (hashes may differ across processors).
# usage: tools/behaviour_hashes.sh BNLAB OUTDIR   -> OUTDIR/hashes.txt (compare two with diff)
set -euo pipefail
B=$1; O=$2; rm -rf "$O"; mkdir -p "$O"
M="--model resnet8 --width 8 --threads 2"
$B train $M --max-steps 300 --out $O/plain > $O/plain.log
$B train $M --max-steps 300 --norm-batch 16 --out $O/ghost > $O/ghost.log
$B train $M --epochs 1 --val 59000 --frozen-bn-epochs 1 --out $O/frozen > $O/frozen.log
$B train $M --epochs 2 --val 55000 --norm-batch 32 --eval-minibatch on --precise-bn-every 1 --out $O/epochs > $O/epochs.log
$B precise $O/plain/last.safetensors -o $O/precise.safetensors --samples 2000 --json > $O/precise.json
$B precise $O/plain/last.safetensors -o $O/sequential.safetensors --samples 500 --sequential --json > $O/sequential.json
$B eval $O/ghost/last.safetensors --stats minibatch --norm-batch 16 --json > $O/eval_mb.json
$B eval $O/epochs/last.safetensors --json > $O/eval_pop.json
# the multi-level head (per-level training statistics) and the crop head (BN over each image's crops;
# crops shuffled across 8 emulated processes of 16 images)
ML="--model resnet8-ml --width 8 --head-width 8 --threads 2"
$B train $ML --head-sgd level --epochs 1 --val 55000 --out $O/ml > $O/ml.log
$B precise $O/ml/last.safetensors -o $O/ml_precise.safetensors --samples 2000 --json > $O/ml_precise.json
$B eval $O/ml/last.safetensors --json > $O/eval_ml.json
CR="--model resnet8-crops --width 8 --head-width 32 --crops 4 --threads 2"
$B train $CR --head-bn-images 1 --epochs 1 --val 30000 --out $O/crops1 > $O/crops1.log
$B train $CR --head-bn-images 16 --bn-shuffle on --epochs 1 --val 30000 --out $O/shuffle > $O/shuffle.log
$B eval $O/crops1/last.safetensors --stats minibatch --norm-batch 1 --json > $O/eval_crops1.json
$B eval $O/shuffle/last.safetensors --stats minibatch --norm-batch 1 --json > $O/eval_shuffle.json
python3 "$(dirname "$0")/tensor_hashes.py" --summary $O/plain/last.safetensors $O/ghost/last.safetensors \
  $O/frozen/last.safetensors $O/epochs/last.safetensors $O/precise.safetensors $O/sequential.safetensors \
  $O/ml/last.safetensors $O/ml_precise.safetensors $O/crops1/last.safetensors $O/shuffle/last.safetensors \
  | sed "s#$O/##" > $O/hashes.txt
# the evaluation numbers (times excluded)
for f in $O/frozen/metrics.jsonl $O/epochs/metrics.jsonl $O/ml/metrics.jsonl $O/crops1/metrics.jsonl \
  $O/shuffle/metrics.jsonl; do
  jq -c 'del(.img_per_s, .seconds)' $f | sed "s#^#${f#$O/}: #" >> $O/hashes.txt
done
for f in $O/precise.json $O/sequential.json $O/ml_precise.json; do
  jq -c '{test_err_before, test_err_after, precise}' $f | sed "s#^#${f#$O/}: #" >> $O/hashes.txt
done
for f in $O/eval_mb.json $O/eval_pop.json $O/eval_ml.json $O/eval_crops1.json $O/eval_shuffle.json; do
  echo "${f#$O/}: $(cat $f)" >> $O/hashes.txt
done
