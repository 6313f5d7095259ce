#!/usr/bin/env bash
# E3 (paper experiment 3, Table 2): PreciseBN's batch size B. Models trained with normalization
# batch 32 and 2 (ghost groups in an SGD batch of 128); their test error with the EMA statistics,
# with PreciseBN at B in {2, 10, 100, 1000} (N = 10^4 training images), and with the exact
# sequential mode (no dependence on B).
# Full: the shared resnet20 w=16 runs of 20 epochs (exp_nbs_model, also read by E1, E4 and E5),
# about 60 minutes of training and 5 of PreciseBN on 2 cores. Quick: resnet8 w=8, 2 epochs, N = 1000.
EXP_USAGE="  writes results/e3-precise-batch/{raw/*.json,table.md,e3.png,e3.svg}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exp_init e3-precise-batch "$@"

N=$NBS_PRECISE
BS="2 10 100 1000"
tmp=$OUT/raw/.work
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
for nbs in 32 2; do
  exp_nbs_model $nbs
  ck=$MODEL_DIR/last.safetensors
  cp "$MODEL_DIR/metrics.jsonl" "$OUT/nbs$nbs.metrics.jsonl" # results/models/ is not committed
  for b in $BS; do
    exp_step "$OUT/raw/nbs${nbs}_B${b}.json" "$BNLAB" precise "$ck" -o "$tmp/p.safetensors" \
      --samples $N --batch $b --json
  done
  exp_step "$OUT/raw/nbs${nbs}_sequential.json" "$BNLAB" precise "$ck" -o "$tmp/p.safetensors" \
    --samples $N --batch 200 --sequential --json
done

row() { # EMA | B=2 | B=10 | B=100 | B=1000 | sequential
  local nbs=$1 line
  line="| $nbs | $(jq '.test_err_before' "$OUT/raw/nbs${nbs}_B2.json")"
  for b in $BS; do line="$line | $(jq '.test_err_after' "$OUT/raw/nbs${nbs}_B${b}.json")"; done
  echo "$line | $(jq '.test_err_after' "$OUT/raw/nbs${nbs}_sequential.json") |"
}
{
  echo "# E3: PreciseBN batch size ($NBS_ARCH, SGD batch 128, $NBS_EPOCHS epochs, N = $N)"
  echo
  echo "Test error (%) of the same weights with each set of population statistics."
  echo
  echo "| trained with NBS | EMA | PreciseBN B=2 | B=10 | B=100 | B=1000 | sequential (exact) |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  row 32
  row 2
} > "$OUT/table.md"
for nbs in 32 2; do
  for b in $BS; do echo "$b $(jq '.test_err_after' "$OUT/raw/nbs${nbs}_B${b}.json")"; done > "$OUT/nbs$nbs.dat"
done
ema32=$(jq '.test_err_before' "$OUT/raw/nbs32_B2.json"); ema2=$(jq '.test_err_before' "$OUT/raw/nbs2_B2.json")
seq32=$(jq '.test_err_after' "$OUT/raw/nbs32_sequential.json"); seq2=$(jq '.test_err_after' "$OUT/raw/nbs2_sequential.json")
exp_plot "$OUT/e3" "E3: PreciseBN batch size B (N = $N)" "PreciseBN batch B" "test error (%)" \
  "set logscale x; ema32 = $ema32; ema2 = $ema2; seq32 = $seq32; seq2 = $seq2" \
  "'$OUT/nbs32.dat' with linespoints lw 2 pt 7 lc 1 title 'NBS 32: PreciseBN', ema32 with lines dt 2 lc 1 title 'NBS 32: EMA', seq32 with lines dt 3 lw 2 lc 1 title 'NBS 32: sequential', '$OUT/nbs2.dat' with linespoints lw 2 pt 5 lc 2 title 'NBS 2: PreciseBN', ema2 with lines dt 2 lc 2 title 'NBS 2: EMA', seq2 with lines dt 3 lw 2 lc 2 title 'NBS 2: sequential'"
cat "$OUT/table.md"
