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
python3 "$(dirname "$0")/tensor_hashes.py" --summary $O/plain/last.safetensors $O/ghost/last.safetensors \
  $O/frozen/last.safetensors $O/epochs/last.safetensors $O/precise.safetensors $O/sequential.safetensors \
  | sed "s#$O/##" > $O/hashes.txt
# the evaluation numbers (times excluded)
for f in $O/frozen/metrics.jsonl $O/epochs/metrics.jsonl; do
  jq -c 'del(.img_per_s, .seconds)' $f | sed "s#^#${f#$O/}: #" >> $O/hashes.txt
done
for f in $O/precise.json $O/sequential.json; do
  jq -c '{test_err_before, test_err_after, precise}' $f | sed "s#^#${f#$O/}: #" >> $O/hashes.txt
done
for f in $O/eval_mb.json $O/eval_pop.json; do echo "${f#$O/}: $(cat $f)" >> $O/hashes.txt; done
