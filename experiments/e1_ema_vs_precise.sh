#!/usr/bin/env bash
# E1 (paper experiment 1): EMA vs PreciseBN population statistics during training, at SGD batch 128
# and at a large batch (2048 = 16x, linear lr scaling to 1.6 with 5 warmup epochs), the
# normalization batch 128 in both (ghost groups of 128 at 2048, as the paper kept 32 images per GPU).
# After every epoch: test error with the EMA statistics and with fresh PreciseBN statistics (10^4
# images, batch 200). Then `bnlab inspect` on the large-batch EMA checkpoint, and again after
# `bnlab precise`.
# Full: resnet20 w=16, 20 epochs each, about 70 minutes on 2 cores; the batch-128 run is the
# shared normalization-batch-128 run (exp_nbs_model, also E4's), so it costs nothing when E4 has run.
# Batch 4096 would need 17 GB of activations; 2048 needs 8.5. Quick: resnet8 w=8, 2 epochs, batches
# 128 and 1024, 1000 images.
EXP_USAGE="  writes results/e1-ema-vs-precise/{b128,b2048}.metrics.jsonl, inspect JSON, table.md, e1.png, e1.svg"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exp_init e1-ema-vs-precise "$@"

MODEL=$NBS_ARCH; EPOCHS=$NBS_EPOCHS; PS=$NBS_PRECISE; KEEP=$NBS_KEEP
if [ $QUICK = 1 ]; then BIG=1024; WARM=0.5; IS=2000; else BIG=2048; WARM=5; IS=10000; fi
tmp=$OUT/raw/.work
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

# the batch-128 run is the shared one; the large-batch run has the same PreciseBN evaluation
exp_nbs_model 128
small=$MODEL_DIR
# shellcheck disable=SC2086 # MODEL is a list of arguments
exp_model "${NBS_TAG}-b$BIG-nbs128" $EPOCHS $MODEL --batch $BIG --norm-batch 128 --lr-scaling linear \
  --warmup-epochs $WARM --keep-every $KEEP --precise-bn-every 1 --precise-samples $PS
big=$MODEL_DIR

# inspect the large-batch EMA statistics where they are furthest from PreciseBN's (of the epochs
# kept every $KEEP), then the same weights after bnlab precise
pick=$(jq -s -r --argjson k $KEEP 'map(select(.epoch % $k == 0))
  | max_by(.test_err_population - .test_err_precise | fabs) | .epoch' "$big/metrics.jsonl")
ck=$big/epoch$pick.safetensors
exp_step "$OUT/raw/inspect_b${BIG}_ema.json" "$BNLAB" inspect "$ck" --samples $IS --json
if [ ! -s "$OUT/raw/inspect_b${BIG}_precise.json" ]; then
  # other images than inspect's reference (seed 1), so agreement is not agreement with itself
  "$BNLAB" precise "$ck" -o "$tmp/p.safetensors" --samples $IS --seed 2 --json > "$OUT/raw/precise_b${BIG}.json"
  exp_step "$OUT/raw/inspect_b${BIG}_precise.json" "$BNLAB" inspect "$tmp/p.safetensors" --samples $IS --json
fi

# the runs' per-epoch records travel with the results (results/models/ is not committed)
cp "$small/metrics.jsonl" "$OUT/b128.metrics.jsonl"
cp "$big/metrics.jsonl" "$OUT/b$BIG.metrics.jsonl"
for r in b128 b$BIG; do
  jq -r '"\(.epoch) \(.test_err_population) \(.test_err_precise)"' "$OUT/$r.metrics.jsonl" > "$OUT/$r.dat"
done
stats() { # final EMA, final precise, mean |EMA - precise| over epochs, largest gap and its epoch
  jq -s -r 'map({e: .epoch, g: (.test_err_population - .test_err_precise)}) as $g
    | (map(.test_err_population) | last) as $ema | (map(.test_err_precise) | last) as $pre
    | ($g | map(.g | fabs) | add / length) as $mean | ($g | max_by(.g | fabs)) as $w
    | "\($ema) | \($pre) | \($mean * 100 | round / 100) | \($w.g * 100 | round / 100) (epoch \($w.e))"' "$1"
}
verdict() { jq -r '"\(.verdict) (\(.flagged) of \(.layers | length) layers flagged)"' "$1"; }
{
  echo "# E1: EMA vs PreciseBN during training ($MODEL, Fashion-MNIST, $EPOCHS epochs)"
  echo
  echo "Test error (%) with the EMA statistics and with PreciseBN statistics ($PS images) after"
  echo "every epoch; normalization batch 128 in both runs."
  echo
  echo "| SGD batch | final EMA | final PreciseBN | mean abs(EMA - PreciseBN) | largest EMA - PreciseBN |"
  echo "|---|---:|---:|---:|---:|"
  echo "| 128 | $(stats "$OUT/b128.metrics.jsonl") |"
  echo "| $BIG (lr x$((BIG / 128)), warmup $WARM) | $(stats "$OUT/b$BIG.metrics.jsonl") |"
  echo
  echo "\`bnlab inspect\` on the batch-$BIG checkpoint of epoch $pick (the kept epoch where EMA and"
  echo "PreciseBN differ most): EMA statistics: $(verdict "$OUT/raw/inspect_b${BIG}_ema.json");"
  echo "after \`bnlab precise\`: $(verdict "$OUT/raw/inspect_b${BIG}_precise.json")."
} > "$OUT/table.md"
ylo=$(cat "$OUT/b128.dat" "$OUT/b$BIG.dat" | awk 'NR == 1 || $3 < m { m = $3 } END { v = int(m * 0.8); print v < 1 ? 1 : v }')
exp_plot "$OUT/e1" "E1: EMA vs PreciseBN statistics during training" "epoch" "test error (%)" \
  "set logscale y; set yrange [$ylo:100]; set xrange [0:$((EPOCHS + 1))]; set key top right" \
  "'$OUT/b128.dat' using 1:2 with linespoints lw 2 pt 7 dt 2 title 'batch 128, EMA', '$OUT/b128.dat' using 1:3 with linespoints lw 2 pt 7 title 'batch 128, PreciseBN', '$OUT/b$BIG.dat' using 1:2 with linespoints lw 2 pt 5 dt 2 title 'batch $BIG, EMA', '$OUT/b$BIG.dat' using 1:3 with linespoints lw 2 pt 5 title 'batch $BIG, PreciseBN'"
cat "$OUT/table.md"
