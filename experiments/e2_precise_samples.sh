#!/usr/bin/env bash
# E2 (paper experiment 2): how many samples PreciseBN needs. On the resnet20 baseline checkpoint
# (30 epochs, EMA statistics), PreciseBN with N training images (batch 200, augmentation on) for
# N in 10^2 .. 6x10^4, five seeds of the sample choice each: test error vs N (mean, min-max), the EMA
# error as a line, and the largest standard error of a channel mean beside each N.
# Full: 30 PreciseBN runs, about 15 minutes on 2 cores. Quick: N in {10^2, 10^3}, two seeds.
EXP_USAGE="  writes results/e2-precise-samples/{raw/*.json,table.md,e2.png,e2.svg}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exp_init e2-precise-samples "$@"

CKPT=${CKPT:-results/resnet20-baseline/last.safetensors}
if [ $QUICK = 1 ]; then NS="100 1000"; SEEDS="1 2"; else NS="100 300 1000 3000 10000 60000"; SEEDS="1 2 3 4 5"; fi
tmp=$OUT/raw/.work
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
for n in $NS; do
  for s in $SEEDS; do
    exp_step "$OUT/raw/N${n}_seed${s}.json" \
      "$BNLAB" precise "$CKPT" -o "$tmp/p.safetensors" --samples "$n" --seed "$s" --json
  done
done

# one row per N over the seeds: mean, min, max test error; mean of the worst standard error
jq -s 'group_by(.precise.samples) | map({n: .[0].precise.samples, runs: length,
         mean: (map(.test_err_after) | add / length), min: (map(.test_err_after) | min),
         max: (map(.test_err_after) | max), se: (map(.precise.worst_se) | add / length),
         ema: .[0].test_err_before})' "$OUT"/raw/N*_seed*.json > "$OUT/summary.json"
jq -r '.[] | "\(.n) \(.mean) \(.min) \(.max) \(.se)"' "$OUT/summary.json" > "$OUT/e2.dat"
ema=$(jq '.[0].ema' "$OUT/summary.json")
{
  echo "# E2: PreciseBN sample count (resnet20 w=16, Fashion-MNIST, batch 200)"
  echo
  echo "Checkpoint: \`$CKPT\`; test error with its EMA statistics: ${ema}%."
  echo "Each N: $(echo $SEEDS | wc -w) seeds of the sample choice (and augmentation)."
  echo
  echo "| N samples | test error % (mean) | min | max | runs | largest SE of a channel mean (std) |"
  echo "|---:|---:|---:|---:|---:|---:|"
  jq -r '.[] | "| \(.n) | \(.mean * 100 | round / 100) | \(.min) | \(.max) | \(.runs) | \(.se * 10000 | round / 10000) |"' "$OUT/summary.json"
} > "$OUT/table.md"
exp_plot "$OUT/e2" "E2: PreciseBN sample count (resnet20 w=16, Fashion-MNIST)" \
  "PreciseBN samples N" "test error (%)" \
  "set logscale x; set logscale y2; set y2tics; set ytics nomirror; set y2label 'largest standard error (std)'; ema = $ema" \
  "'$OUT/e2.dat' using 1:2:3:4 with yerrorlines lw 2 pt 7 title 'PreciseBN (mean, min-max over seeds)', ema with lines dt 2 lw 2 title 'EMA statistics', '$OUT/e2.dat' using 1:5 axes x1y2 with linespoints pt 6 title 'largest standard error (right axis)'"
cat "$OUT/table.md"
