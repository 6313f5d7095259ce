#!/usr/bin/env bash
# E8 (paper section 6, claim 6): BN in a head whose batch is the crops of one or two images. The
# crop head (docs/crop-head.md) trained with BN over the crops of each image (img1) or of each
# pair (img2) - one process emulating 16 or 8 processes of 1 or 2 images -, and for reference over
# the whole batch's crops (sync, E9's SyncBN run), each evaluated on the test set with population
# statistics (the EMA) and with mini-batch statistics over one image's crops (the paper's test
# batch; the backbone keeps its population statistics), and over two images' crops. The paper:
# Mask R-CNN's head with per-GPU BN of 1-2 images, 30.7 AP with population statistics vs 41.5
# with mini-batch ones. Three trainings shared with E9 (exp_crops_model). Full: about 25 minutes
# on 2 cores; quick: a few minutes.
EXP_USAGE="  writes results/e8-head-minibatch/{raw/*.json,table.md,NOTES.md,e8.png,e8.svg}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exp_init e8-head-minibatch "$@"

ARMS="img1 img2 sync"
for arm in $ARMS; do
  exp_crops_model "$arm"
  cp "$MODEL_DIR/metrics.jsonl" "$OUT/raw/${arm}_metrics.jsonl"
  exp_step "$OUT/raw/${arm}_population.json" "$BNLAB" eval "$MODEL_DIR/last.safetensors" --json on
  for g in 1 2; do
    exp_step "$OUT/raw/${arm}_minibatch$g.json" "$BNLAB" eval "$MODEL_DIR/last.safetensors" \
      --stats minibatch --norm-batch $g --json on
  done
  # why population statistics fail: PreciseBN's in place of the EMA's, with the head normalizing
  # the crops of one or two images (the training's groups: within-image statistics, which the EMA
  # also averages) or of whole batches of 200 images (between-image spread included)
  for h in 1 2 0; do
    [ -s "$OUT/raw/${arm}_precise$h.json" ] && continue
    "$BNLAB" precise "$MODEL_DIR/last.safetensors" -o "$MODEL_DIR/precise$h.safetensors" \
      --samples $CROPS_PRECISE --head-bn-images $h --json on > /dev/null
    exp_step "$OUT/raw/${arm}_precise$h.json" "$BNLAB" eval "$MODEL_DIR/precise$h.safetensors" --json on
  done
done

name() { case $1 in img1) echo "1 image";; img2) echo "2 images";; sync) echo "whole batch (16 images)";; esac; }
{
  echo "# E8: BN in a crop head, population vs mini-batch statistics at inference"
  echo
  echo "$CROPS_ARCH, 16 images per step, $CROPS_EPOCHS epochs. Test error (%) of the mean of each"
  echo "image's crops' logits. The head's BN normalized the crops of the images in its group during"
  echo "training; at inference it uses the EMA population statistics, or the statistics of one (two)"
  echo "test image's crops (the backbone uses its population statistics throughout)."
  echo
  echo "| head BN in training over | population (EMA) | mini-batch: 1 image | mini-batch: 2 images | train err (mini-batch, 1 image) |"
  echo "|---|---:|---:|---:|---:|"
  for arm in $ARMS; do
    echo "| $(name $arm) | $(exp_pct "$OUT/raw/${arm}_population.json" err) |" \
      "$(exp_pct "$OUT/raw/${arm}_minibatch1.json" err) | $(exp_pct "$OUT/raw/${arm}_minibatch2.json" err) |" \
      "$(jq -s 'last.train_err_minibatch' "$OUT/raw/${arm}_metrics.jsonl" | awk '{printf "%.2f", $1}') |"
  done
  echo
  echo "Population statistics from PreciseBN ($CROPS_PRECISE training images) instead of the EMA, the"
  echo "head's BN normalizing the crops of groups of 1 or 2 images, or of whole batches of 200:"
  echo
  echo "| head BN in training over | PreciseBN, 1-image groups | 2-image groups | 200-image batches |"
  echo "|---|---:|---:|---:|"
  for arm in $ARMS; do
    echo "| $(name $arm) | $(exp_pct "$OUT/raw/${arm}_precise1.json" err) |" \
      "$(exp_pct "$OUT/raw/${arm}_precise2.json" err) | $(exp_pct "$OUT/raw/${arm}_precise0.json" err) |"
  done
} > "$OUT/table.md"
for arm in img1 img2; do
  jq -r '"\(.epoch) \(.test_err_population) \(.test_err_minibatch)"' "$OUT/raw/${arm}_metrics.jsonl" > "$OUT/$arm.dat"
done
exp_plot "$OUT/e8" "E8: crop head with BN over 1 or 2 images' crops: test error by epoch" \
  "epoch" "test error (%)" "set xtics 1; set key top right" \
  "'$OUT/img1.dat' using 1:2 with linespoints lw 2 pt 7 title '1 image, population stats', '$OUT/img1.dat' using 1:3 with linespoints lw 2 pt 6 dt 2 title '1 image, mini-batch stats (1 image)', '$OUT/img2.dat' using 1:2 with linespoints lw 2 pt 5 title '2 images, population stats', '$OUT/img2.dat' using 1:3 with linespoints lw 2 pt 4 dt 2 title '2 images, mini-batch stats (1 image)'"
cat "$OUT/table.md"
