#!/usr/bin/env bash
# E7 (paper section 5, claim 8): BN in a head shared over feature levels. resnet8-ml: the backbone's
# three stage outputs (28x28, 14x14, 7x7) through 1x1 laterals, one head with shared weights per
# level, the mean of the levels' cross-entropies as the loss, the mean of their logits as the
# prediction. The head's BN makes three choices (the paper's S/D columns): training statistics
# pooled over the levels or per level (--head-sgd), population statistics pooled or per level
# (--head-pop: inference only, so both are evaluated on the same weights), affine shared or per
# level (--head-affine). Five trainings cover the six BN rows, plus GN and no normalization.
# Every BN model is evaluated with its EMA statistics and with PreciseBN's (10^4 images), each
# pooled and per level; the D/S rows also with sequential PreciseBN (the exact pooled statistics
# of what each head BN sees when the one before it uses pooled statistics too), and every BN model
# reports how far each level's statistics are from the pooled ones (eval --json's level_shift).
# Full: resnet8-ml w=16, head 32, 6 epochs at batch 128 (about 20 minutes a training on 2 cores,
# under two hours in all). Quick: resnet8-ml w=8, head 16, 1 epoch (a few minutes).
EXP_USAGE="  writes results/e7-multi-domain/{raw/*.json,table.md,e7.png,e7.svg}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exp_init e7-multi-domain "$@"

if [ $QUICK = 1 ]; then
  ARCH="--model resnet8-ml --width 8 --head-width 16"; EPOCHS=1; PRECISE=2000; TAG=r8mlw8
else
  ARCH="--model resnet8-ml --width 16 --head-width 32"; EPOCHS=6; PRECISE=10000; TAG=r8mlw16
fi
RUNS="bn_ss bn_ls bn_ll gn none"
run_args() {
  case $1 in
    bn_ss) echo "--head-sgd shared --head-affine shared" ;;
    bn_ls) echo "--head-sgd level --head-affine shared" ;;
    bn_ll) echo "--head-sgd level --head-affine level" ;;
    gn) echo "--head-norm gn" ;;
    none) echo "--head-norm none" ;;
  esac
}
for r in $RUNS; do
  # shellcheck disable=SC2046,SC2086 # lists of arguments
  exp_model "e7-$TAG-$r" $EPOCHS $ARCH --batch 128 $(run_args $r)
  dir=$MODEL_DIR
  cp "$dir/metrics.jsonl" "$OUT/raw/${r}_metrics.jsonl"
  case $r in
    bn_*)
      if [ ! -s "$dir/precise.safetensors" ]; then
        "$BNLAB" precise "$dir/last.safetensors" -o "$dir/precise.safetensors" \
          --samples $PRECISE --json > "$OUT/raw/${r}_precise.json"
      fi
      for pop in shared level; do
        exp_step "$OUT/raw/${r}_ema_$pop.json" "$BNLAB" eval "$dir/last.safetensors" \
          --head-pop $pop --json on
        exp_step "$OUT/raw/${r}_precise_$pop.json" "$BNLAB" eval "$dir/precise.safetensors" \
          --head-pop $pop --json on
      done
      if [ $r != bn_ss ]; then # D/S: does re-estimating layer by layer rescue pooled statistics?
        if [ ! -s "$dir/sequential.safetensors" ]; then
          "$BNLAB" precise "$dir/last.safetensors" -o "$dir/sequential.safetensors" --sequential \
            --head-pop shared --samples $PRECISE --json > "$OUT/raw/${r}_sequential.json"
        fi
        exp_step "$OUT/raw/${r}_seq_shared.json" "$BNLAB" eval "$dir/sequential.safetensors" \
          --head-pop shared --json on
      fi ;;
    *) exp_step "$OUT/raw/${r}_ema.json" "$BNLAB" eval "$dir/last.safetensors" --json on ;;
  esac
done

# rows: name, run, SGD/pop/affine letters, population choice, the paper's AP
ROWS="S/S/S:bn_ss:shared:39.1 S/D/S:bn_ss:level:2.1 D/S/S:bn_ls:shared:34.1 D/D/S:bn_ls:level:39.1
D/S/D:bn_ll:shared:35.5 D/D/D:bn_ll:level:39.2 GN:gn::39.5 none:none::38.7"
errs() { jq -r '"\(.err) \(.err_level[0]) \(.err_level[1]) \(.err_level[2])"' "$1" |
  awk '{ printf "%.2f | %.2f | %.2f | %.2f", $1, $2, $3, $4 }'; }
: > "$OUT/bars.dat"
{
  echo "# E7: BN in a head shared over feature levels (claim 8)"
  echo
  # shellcheck disable=SC2086
  echo "resnet8-ml ($ARCH), $EPOCHS epochs at batch 128, cosine schedule, seed 1; test error (%) of"
  echo "the mean of the three levels' logits, then of each level alone (L0 28x28, L1 14x14, L2 7x7)."
  echo "EMA: the statistics training kept; PreciseBN: re-estimated on $PRECISE training images"
  echo "(batch 200). SGD / population / affine: S shared over the levels, D per level (domain)."
  echo
  echo "| SGD/pop/affine | paper AP | EMA err | L0 | L1 | L2 | PreciseBN err | L0 | L1 | L2 |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for row in $ROWS; do
    IFS=: read -r name run pop ap <<< "$row"
    if [ -n "$pop" ]; then
      e=$(errs "$OUT/raw/${run}_ema_$pop.json"); p=$(errs "$OUT/raw/${run}_precise_$pop.json")
      pe=$(jq .err "$OUT/raw/${run}_precise_$pop.json")
    else
      e=$(errs "$OUT/raw/${run}_ema.json"); p="- | - | - | -"; pe=$(jq .err "$OUT/raw/${run}_ema.json")
    fi
    echo "| $name | $ap | $e | $p |"
    echo "\"$name\" $(jq .err "$OUT/raw/${run}_ema${pop:+_$pop}.json") $pe" >> "$OUT/bars.dat"
  done
  echo
  echo "D/S rows with sequential PreciseBN (pooled statistics estimated layer by layer, each head"
  echo "BN seeing the previous one normalized with pooled statistics):"
  echo
  echo "| SGD/pop/affine | err | L0 | L1 | L2 |"
  echo "|---|---:|---:|---:|---:|"
  for row in D/S/S:bn_ls D/S/D:bn_ll; do
    IFS=: read -r name run <<< "$row"
    echo "| $name | $(errs "$OUT/raw/${run}_seq_shared.json") |"
  done
  echo
  echo "How far each level's EMA statistics are from the pooled ones: mean over channels of"
  echo "|mu_level - mu_pooled| / sd_pooled, then of |log(var_level / var_pooled)| (eval's level_shift)."
  echo
  echo "| training (SGD/affine) | layer | L0 shift | L1 shift | L2 shift | L0 logvar | L1 logvar | L2 logvar |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|"
  for row in S/S:bn_ss D/S:bn_ls D/D:bn_ll; do
    IFS=: read -r name run <<< "$row"
    jq -r '.level_shift | to_entries[] | "\(.key) \([.value[].shift_mean] + [.value[].logvar_mean] | join(" "))"' \
      "$OUT/raw/${run}_ema_shared.json" |
      awk -v n="$name" '{ printf "| %s | %s |", n, $1; for (i = 2; i <= NF; i++) printf " %.2f |", $i; print "" }'
  done
  echo
  echo "Training cost (seconds for all epochs, 2 cores):"
  for r in $RUNS; do
    printf -- '- %s: %s s\n' "$r" "$(jq -s 'map(.seconds) | add | floor' "$OUT/raw/${r}_metrics.jsonl")"
  done
} > "$OUT/table.md"
exp_plot "$OUT/e7" "E7: test error of the multi-level head, resnet8-ml on Fashion-MNIST (SGD/pop/affine)" \
  "head normalization" "test error (%)" \
  "set style data histograms; set style histogram clustered gap 1; set style fill solid 0.8 border -1; set boxwidth 0.9; set xtics noenhanced; set yrange [0:*]; set key top left" \
  "'$OUT/bars.dat' using 2:xtic(1) title 'EMA statistics', '' using 3 title 'PreciseBN statistics (GN, none: no statistics)'"
cat "$OUT/table.md"
