#!/usr/bin/env bash
# E5 (paper experiment 5, figure 6): two ways to remove the train/test inconsistency of a small
# normalization batch. At each NBS in {2, 4, 8, 16, 32, 128} (SGD batch 128), the test error of
#   regular:    the regular run (exp_nbs_model) evaluated with PreciseBN population statistics,
#   FrozenBN:   the same run branched at epoch E-K into K epochs of "population batch in training"
#               (--frozen-bn-epochs K: BN normalizes with fixed PreciseBN statistics while the rest
#               trains), evaluated with those statistics,
#   mini-batch: the regular run evaluated with mini-batch statistics of random groups of NBS test
#               images (inference on the training batch's terms).
# Full: resnet20 w=16, 20 epochs, K = 4 (branches from the epoch-16 checkpoints the shared runs
# keep): the shared runs (about three hours, nothing if E4 ran) plus about 40 minutes of branches.
# Quick: resnet8 w=8, 2 epochs, K = 1.
EXP_USAGE="  writes results/e5-fix-inconsistency/{raw/*.json,table.md,e5.png,e5.svg}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exp_init e5-fix-inconsistency "$@"

NBS_LIST="2 4 8 16 32 128"
K=$NBS_KEEP
FROM=$((NBS_EPOCHS - K))
tmp=$OUT/raw/.work
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
for nbs in $NBS_LIST; do
  exp_nbs_model "$nbs"
  regular=$MODEL_DIR
  exp_step "$OUT/raw/nbs${nbs}_regular.json" "$BNLAB" precise "$regular/last.safetensors" \
    -o "$tmp/p.safetensors" --samples "$NBS_PRECISE" --json
  exp_step "$OUT/raw/nbs${nbs}_minibatch.json" "$BNLAB" eval "$regular/last.safetensors" \
    --stats minibatch --norm-batch "$nbs" --json on
  # A FrozenBN phase can diverge where regular training does not (docs/precise.md: the weights lose
  # BN's scale invariance, so a learning rate that was safe can be too large): the run then stops,
  # and the table says so instead of a number.
  [ -s "$OUT/raw/nbs${nbs}_frozen.json" ] && continue
  # shellcheck disable=SC2086 # NBS_ARCH is a list of arguments
  if exp_branch "$NBS_TAG-nbs$nbs-frozen$K" "$NBS_EPOCHS" "$regular/epoch$FROM.safetensors" $NBS_ARCH \
    --batch 128 --norm-batch "$nbs" --precise-samples "$NBS_PRECISE" --frozen-bn-epochs "$K" 2> "$tmp/err"; then
    exp_step "$OUT/raw/nbs${nbs}_frozen.json" "$BNLAB" eval "$MODEL_DIR/last.safetensors" --json on
  else
    cat "$tmp/err" >&2
    grep -q "NaN or Inf" "$tmp/err" || exit 1 # a failure other than divergence stops the script
    jq -n --arg why "$(tail -n 1 "$tmp/err")" '{err: null, diverged: $why}' > "$OUT/raw/nbs${nbs}_frozen.json"
  fi
  [ -s "$MODEL_DIR/metrics.jsonl" ] && cp "$MODEL_DIR/metrics.jsonl" "$OUT/nbs$nbs-frozen$K.metrics.jsonl"
done

: > "$OUT/e5.dat"
{
  echo "# E5: removing the train/test inconsistency ($NBS_ARCH, SGD batch 128, $NBS_EPOCHS epochs)"
  echo
  echo "Test error (%). Regular: population statistics from PreciseBN ($NBS_PRECISE images)."
  echo "FrozenBN: the last $K epochs normalized with fixed PreciseBN statistics (branched from epoch"
  echo "$FROM of the regular run). Mini-batch: statistics of random groups of NBS test images."
  echo
  echo "| NBS | regular (population) | FrozenBN last $K epochs | mini-batch inference |"
  echo "|---:|---:|---:|---:|"
  for nbs in $NBS_LIST; do
    r=$(exp_pct "$OUT/raw/nbs${nbs}_regular.json" test_err_after)
    f=$(exp_pct "$OUT/raw/nbs${nbs}_frozen.json" err)
    m=$(exp_pct "$OUT/raw/nbs${nbs}_minibatch.json" err)
    echo "$nbs $r $f $m" >> "$OUT/e5.dat"
    echo "| $nbs | $r | $( [ "$f" = NaN ] && echo "diverged" || echo "$f") | $m |"
  done
  jq -r 'select(.diverged) | "\nFrozenBN diverged at NBS \(input_filename | capture("nbs(?<n>[0-9]+)").n): \(.diverged)"' \
    "$OUT"/raw/nbs*_frozen.json
} > "$OUT/table.md"
exp_plot "$OUT/e5" "E5: regular vs FrozenBN vs mini-batch inference (SGD batch 128)" \
  "normalization batch size (NBS)" "test error (%)" "set logscale x 2; set xtics (2, 4, 8, 16, 32, 128)" \
  "'$OUT/e5.dat' using 1:2 with linespoints lw 2 pt 7 title 'regular training, population stats (PreciseBN)', '$OUT/e5.dat' using 1:3 with linespoints lw 2 pt 5 title 'FrozenBN in the last $K epochs', '$OUT/e5.dat' using 1:4 with linespoints lw 2 pt 9 title 'mini-batch stats in inference'"
cat "$OUT/table.md"
