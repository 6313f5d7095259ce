#!/usr/bin/env bash
# E9 (paper section 6, claim 9): information leaks through per-process statistics of a head, and
# shuffling or SyncBN removes the leak. The crop head (docs/crop-head.md) with 1 or 2 images per
# emulated process: BN per process (E8's runs), BN per process after the crops are shuffled across
# the processes (--bn-shuffle: one seeded permutation of the batch's crops per step, the same the
# real MPI shuffle uses), SyncBN (the whole batch's crops; one run serves both), and GN (no batch
# statistics), evaluated with population statistics (GN: none needed). The paper: 30.7 AP with
# per-GPU BN, 41.7 with shuffle or SyncBN. Six trainings in all with E8's (exp_crops_model), and
# every BN arm again with a second seed (weights, data order, crops), to see how much of the
# differences is the run; full: about 100 minutes on 2 cores when E8 has not run; quick: a few
# minutes.
EXP_USAGE="  writes results/e9-leakage/{raw/*.json,table.md,NOTES.md,e9.png,e9.svg}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exp_init e9-leakage "$@"

ARMS="img1 img2 shuf1 shuf2 sync gn"
SEEDED="img1 img2 shuf1 shuf2 sync" # also with seed 2
for arm in $ARMS; do
  exp_crops_model "$arm"
  cp "$MODEL_DIR/metrics.jsonl" "$OUT/raw/${arm}_metrics.jsonl"
  exp_step "$OUT/raw/${arm}_population.json" "$BNLAB" eval "$MODEL_DIR/last.safetensors" --json on
done
for arm in $SEEDED; do
  exp_crops_model "$arm" 2
  cp "$MODEL_DIR/metrics.jsonl" "$OUT/raw/${arm}_s2_metrics.jsonl"
  exp_step "$OUT/raw/${arm}_s2_population.json" "$BNLAB" eval "$MODEL_DIR/last.safetensors" --json on
done
pop() { exp_pct "$OUT/raw/$1_population.json" err; }
trn() { jq -s 'last.train_err' "$OUT/raw/$1_metrics.jsonl" | awk '{printf "%.2f", $1}'; }
# seed 1 (training error), and / seed 2 (training error) where it ran
two() {
  if [ -s "$OUT/raw/$1_s2_population.json" ]; then echo "$(pop "$1") ($(trn "$1")) / $(pop "$1_s2") ($(trn "$1_s2"))"
  else echo "$(pop "$1") ($(trn "$1"))"; fi
}
{
  echo "# E9: leakage through a head's per-process BN statistics"
  echo
  echo "$CROPS_ARCH, 16 images per step, $CROPS_EPOCHS epochs, one process emulating processes of 1"
  echo "or 2 images. Test error (%) with population statistics (EMA); in brackets the training error"
  echo "of the last epoch as trained (with the training normalization). Two numbers: seed 1 / seed 2."
  echo
  echo "| head norm | 1 image per process | 2 images per process |"
  echo "|---|---:|---:|"
  echo "| BN per process | $(two img1) | $(two img2) |"
  echo "| BN per process, crops shuffled | $(two shuf1) | $(two shuf2) |"
  echo "| SyncBN (whole batch) | $(two sync) | $(two sync) |"
  echo "| GN (per crop) | $(two gn) | $(two gn) |"
} > "$OUT/table.md"
{
  echo "\"per-process BN\" $(pop img1) $(pop img2)"
  echo "\"shuffled\" $(pop shuf1) $(pop shuf2)"
  echo "SyncBN $(pop sync) $(pop sync)"
  echo "GN $(pop gn) $(pop gn)"
} > "$OUT/e9.dat"
exp_plot "$OUT/e9" "E9: crop head, test error with population statistics (seed 1)" "" "test error (%)" \
  "set style data histograms; set style histogram clustered gap 1; set style fill solid 0.8 border -1; set boxwidth 0.9; set yrange [0:*]; set key top right" \
  "'$OUT/e9.dat' using 2:xtic(1) title '1 image per process', '' using 3 title '2 images per process'"
cat "$OUT/table.md"
