#!/usr/bin/env bash
# E4 (paper experiment 4, figure 5): the normalization batch size (NBS) sets training noise and the
# train/test inconsistency. Shared runs at SGD batch 128 with NBS in {2, 4, 8, 16, 32, 128} (ghost
# groups below 128); for each final model the three curves:
#   (a) training-split error with mini-batch statistics at the training NBS (60000 images),
#   (b) test error with mini-batch statistics at the training NBS,
#   (c) test error with population statistics from PreciseBN (10^4 images; not the EMA, whose
#       ghost-group artefacts would blur the curve; the EMA's error is listed beside it).
# Mini-batch groups are random (seed 1); `bnlab eval --composition class` groups by class instead.
# Full: resnet20 w=16, 20 epochs per NBS (exp_nbs_model, shared with E1, E3 and E5), about three
# hours of training on 2 cores for all six, nothing for the runs E1 and E3 already trained.
# Quick: resnet8 w=8, 2 epochs.
EXP_USAGE="  writes results/e4-nbs/{raw/*.json,nbs*.metrics.jsonl,table.md,e4.png,e4.svg}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exp_init e4-nbs "$@"

NBS_LIST="2 4 8 16 32 128"
tmp=$OUT/raw/.work
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
for nbs in $NBS_LIST; do
  exp_nbs_model "$nbs"
  ck=$MODEL_DIR/last.safetensors
  cp "$MODEL_DIR/metrics.jsonl" "$OUT/nbs$nbs.metrics.jsonl" # results/models/ is not committed
  for split in train test; do
    exp_step "$OUT/raw/nbs${nbs}_minibatch_$split.json" "$BNLAB" eval "$ck" --stats minibatch \
      --norm-batch "$nbs" --split $split --json on
  done
  exp_step "$OUT/raw/nbs${nbs}_precise.json" "$BNLAB" precise "$ck" -o "$tmp/p.safetensors" \
    --samples "$NBS_PRECISE" --json
  # (b) depends on which images share a group: four more random compositions give its noise, and
  # one grouped by class shows what a non-random composition does.
  for seed in 2 3 4 5; do
    exp_step "$OUT/raw/nbs${nbs}_minibatch_test_seed$seed.json" "$BNLAB" eval "$ck" --stats minibatch \
      --norm-batch "$nbs" --seed $seed --json on
  done
  exp_step "$OUT/raw/nbs${nbs}_minibatch_test_class.json" "$BNLAB" eval "$ck" --stats minibatch \
    --norm-batch "$nbs" --composition class --json on
done

: > "$OUT/e4.dat"
{
  echo "# E4: normalization batch size ($NBS_ARCH, SGD batch 128, $NBS_EPOCHS epochs)"
  echo
  echo "Error (%) of each final model. Mini-batch statistics: random groups of NBS images, as in"
  echo "training. Population statistics: PreciseBN over $NBS_PRECISE training images (EMA beside it)."
  echo
  echo "| NBS | (a) train, mini-batch | (b) test, mini-batch | (c) test, PreciseBN | test, EMA | (c) - (b) |"
  echo "|---:|---:|---:|---:|---:|---:|"
  for nbs in $NBS_LIST; do
    a=$(exp_pct "$OUT/raw/nbs${nbs}_minibatch_train.json" err)
    b=$(exp_pct "$OUT/raw/nbs${nbs}_minibatch_test.json" err)
    c=$(exp_pct "$OUT/raw/nbs${nbs}_precise.json" test_err_after)
    e=$(exp_pct "$OUT/raw/nbs${nbs}_precise.json" test_err_before)
    echo "$nbs $a $b $c $e" >> "$OUT/e4.dat"
    echo "| $nbs | $a | $b | $c | $e | $(awk -v b="$b" -v c="$c" 'BEGIN { printf "%+.2f", c - b }') |"
  done
  echo
  echo "(b) over five random compositions (seeds 1-5), and with groups of one class each:"
  echo
  echo "| NBS | (b) mean | min | max | (b) grouped by class |"
  echo "|---:|---:|---:|---:|---:|"
  for nbs in $NBS_LIST; do
    jq -s -r 'map(.err) | "\(add / length) \(min) \(max)"' "$OUT/raw/nbs${nbs}_minibatch_test.json" \
      "$OUT"/raw/nbs"${nbs}"_minibatch_test_seed?.json |
      awk -v n="$nbs" -v c="$(exp_pct "$OUT/raw/nbs${nbs}_minibatch_test_class.json" err)" \
        '{ printf "| %s | %.2f | %.2f | %.2f | %s |\n", n, $1, $2, $3, c }'
  done
} > "$OUT/table.md"
exp_plot "$OUT/e4" "E4: error vs normalization batch size (SGD batch 128)" "normalization batch size (NBS)" \
  "error (%)" "set logscale x 2; set xtics (2, 4, 8, 16, 32, 128)" \
  "'$OUT/e4.dat' using 1:2 with linespoints lw 2 pt 7 title '(a) train, mini-batch stats', '$OUT/e4.dat' using 1:3 with linespoints lw 2 pt 5 title '(b) test, mini-batch stats', '$OUT/e4.dat' using 1:4 with linespoints lw 2 pt 9 title '(c) test, PreciseBN population stats', '$OUT/e4.dat' using 1:5 with linespoints dt 2 pt 4 title 'test, EMA population stats'"
cat "$OUT/table.md"
