#!/usr/bin/env bash
# E6 (paper section 5, claim 7): domain shift. On the resnet20 baseline checkpoint, every
# Fashion-MNIST-C corruption at severities 1-5: the error with the source (training) population
# statistics vs with statistics re-estimated on N = 1000 target images (bnlab adapt; weights
# untouched); how many target images are enough (N in 10..5000, 5 draws below 1000); and the clean
# evaluation set with training statistics, with the statistics of contrast 5 and of gaussian
# noise 5, and with the clean test set's own (the paper's 23.4 / 39.7 / 23.8 row).
# Every adapt evaluates on the same held-out half of the (corrupted) test split.
# Full: 60 + 36 + 4 adapt runs, about 30 minutes on 2 cores. Quick: 3 corruptions at severities 1,
# 3, 5, N in {100, 1000} with 2 draws, a few minutes.
EXP_USAGE="  writes results/e6-domain-shift/{raw/*.json,table.md,e6-severity.png,e6-n.png,previews/}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exp_init e6-domain-shift "$@"

CKPT=${CKPT:-results/resnet20-baseline/last.safetensors}
ALL="gaussian_noise shot_noise impulse_noise defocus_blur motion_blur glass_blur contrast brightness jpeg_compression pixelate elastic_transform fog"
if [ $QUICK = 1 ]; then
  CORR="contrast gaussian_noise jpeg_compression"; SEVS="1 3 5"; NS="100 1000"; NDRAWS=2
  NCORR="contrast gaussian_noise"; NSEVS="5"
else
  CORR=$ALL; SEVS="1 2 3 4 5"; NS="10 30 100 300 1000 5000"; NDRAWS=5
  NCORR="contrast gaussian_noise jpeg_compression"; NSEVS="3 5"
fi
tmp=$OUT/raw/.work
mkdir -p "$tmp" "$OUT/previews"
trap 'rm -rf "$tmp"' EXIT

# A: every corruption and severity, N = 1000
for c in $CORR; do
  for s in $SEVS; do
    exp_step "$OUT/raw/sev_${c}_${s}.json" "$BNLAB" adapt "$CKPT" --target "$c:$s" --samples 1000 --json
  done
done
# B: error vs N
for c in $NCORR; do
  for s in $NSEVS; do
    for n in $NS; do
      d=1; [ "$n" -lt 1000 ] && d=$NDRAWS
      exp_step "$OUT/raw/n_${c}_${s}_N${n}.json" \
        "$BNLAB" adapt "$CKPT" --target "$c:$s" --samples "$n" --draws "$d" --json
    done
  done
done
# C: the clean evaluation half with training, contrast-5, noise-5 and clean-test statistics
exp_step "$OUT/raw/clean_clean.json" "$BNLAB" adapt "$CKPT" --target clean --samples 5000 --json
for t in contrast gaussian_noise; do
  if [ ! -s "$OUT/raw/clean_from_${t}5.json" ]; then
    "$BNLAB" adapt "$CKPT" --target "$t:5" --samples 5000 -o "$tmp/$t.safetensors" > /dev/null
  fi
  exp_step "$OUT/raw/clean_from_${t}5.json" \
    "$BNLAB" adapt "$tmp/$t.safetensors" --target clean --samples 10 --json
done
# previews: clean images on top, severities 1-5 below
for c in $CORR; do
  if [ ! -s "$OUT/previews/$c.png" ]; then
    "$BNLAB" corrupt --corruption "$c" --severity 1 -o "$tmp/prev" > /dev/null
    cp "$tmp/prev/preview.png" "$OUT/previews/$c.png"
  fi
done

# tables and plots
jq -s 'map({c: .target, s: .severity, src: .err_source, tgt: .err_target})' \
  "$OUT"/raw/sev_*.json > "$OUT/severity.json"
jq -s 'map({c: .target, s: .severity, n: .samples, draws: .draws, src: .err_source,
           tgt: .err_target, sd: .err_target_sd})' "$OUT"/raw/n_*.json > "$OUT/n.json"
pct() { awk '{ printf "%.2f", $1 }'; }
clean_train=$(jq .err_source "$OUT/raw/clean_clean.json" | pct)
clean_clean=$(jq .err_target "$OUT/raw/clean_clean.json" | pct)
clean_c5=$(jq .err_source "$OUT/raw/clean_from_contrast5.json" | pct)
clean_g5=$(jq .err_source "$OUT/raw/clean_from_gaussian_noise5.json" | pct)
{
  echo "# E6: domain shift (resnet20 w=16 baseline, Fashion-MNIST-C)"
  echo
  echo "Checkpoint: \`$CKPT\`. Every row is evaluated on the held-out half (5000 images) of the"
  echo "corrupted test split; target statistics: PreciseBN (batch 200) on N images of the other half."
  echo
  echo "## Error (%) with source vs target statistics, N = 1000"
  echo
  echo "| corruption | $(for s in $SEVS; do printf 'sev %s src / tgt | ' "$s"; done)"
  echo "|---|$(for s in $SEVS; do printf -- '---:|'; done)"
  for c in $CORR; do
    printf '| %s |' "$c"
    for s in $SEVS; do
      jq -r --arg c "$c" --argjson s "$s" '.[] | select(.c == $c and .s == $s) | "\(.src) \(.tgt)"' \
        "$OUT/severity.json" | awk '{ printf " %.2f / %.2f |", $1, $2 }'
    done
    echo
  done
  echo
  echo "## Error (%) vs N target images (mean +- sd over draws)"
  echo
  echo "| corruption | severity | source | $(for n in $NS; do printf 'N=%s | ' "$n"; done)"
  echo "|---|---:|---:|$(for n in $NS; do printf -- '---:|'; done)"
  for c in $NCORR; do
    for s in $NSEVS; do
      printf '| %s | %s | %s |' "$c" "$s" \
        "$(jq -r --arg c "$c" --argjson s "$s" '[.[] | select(.c == $c and .s == $s)][0].src' "$OUT/n.json" | pct)"
      for n in $NS; do
        jq -r --arg c "$c" --argjson s "$s" --argjson n "$n" \
          '.[] | select(.c == $c and .s == $s and .n == $n) | "\(.tgt) \(.sd) \(.draws)"' \
          "$OUT/n.json" | awk '{ if ($3 > 1) printf " %.2f +- %.2f |", $1, $2; else printf " %.2f |", $1 }'
      done
      echo
    done
  done
  echo
  echo "## The clean evaluation half with other statistics (paper: 23.4 / 39.7 / 23.8)"
  echo
  echo "| statistics from | training set | contrast 5 | gaussian noise 5 | clean test set |"
  echo "|---|---:|---:|---:|---:|"
  echo "| clean error % | $clean_train | $clean_c5 | $clean_g5 | $clean_clean |"
} > "$OUT/table.md"

# plot 1: error vs severity, source (dashed) and target (solid), one panel per ImageNet-C family
for c in $CORR; do
  jq -r --arg c "$c" '[.[] | select(.c == $c)] | sort_by(.s) | .[] | "\(.s) \(.src) \(.tgt)"' \
    "$OUT/severity.json" > "$OUT/sev_$c.dat"
done
panel() { # TITLE CORRUPTIONS...: one gnuplot plot command over those present in this run
  local title=$1 plot="" i=1 c
  shift
  for c in "$@"; do
    [ -s "$OUT/sev_$c.dat" ] || continue
    plot="$plot${plot:+, }'$OUT/sev_$c.dat' using 1:2 with linespoints dt 2 lc $i pt 6 notitle, '$OUT/sev_$c.dat' using 1:3 with linespoints lw 2 lc $i pt 7 title '$c'"
    i=$((i + 1))
  done
  [ -n "$plot" ] && printf "set title '%s'\nplot %s\n" "$title" "$plot"
}
for term in "pngcairo size 1200,900 font 'sans,10'" "svg size 1200,900 font 'sans,10'"; do
  ext=png; case $term in svg*) ext=svg ;; esac
  gnuplot <<GP
set terminal $term noenhanced
set output '$OUT/e6-severity.$ext'
set multiplot layout 2,2 title "E6: error vs severity with source (dashed) and target statistics (solid, N = 1000), resnet20 on Fashion-MNIST-C"
set xlabel "severity"; set ylabel "test error (%)"; set grid; set xrange [0.8:5.2]; set xtics 1
set key top left
$(panel "noise" gaussian_noise shot_noise impulse_noise)
$(panel "blur" defocus_blur motion_blur glass_blur)
$(panel "weather" fog brightness)
$(panel "digital" contrast jpeg_compression pixelate elastic_transform)
unset multiplot
GP
done
# plot 2: error vs N
plot=""; i=1
for c in $NCORR; do
  for s in $NSEVS; do
    jq -r --arg c "$c" --argjson s "$s" '[.[] | select(.c == $c and .s == $s)] | sort_by(.n) | .[] | "\(.n) \(.tgt) \(.sd) \(.src)"' \
      "$OUT/n.json" > "$OUT/n_${c}_$s.dat"
    plot="$plot${plot:+, }'$OUT/n_${c}_$s.dat' using 1:2:3 with yerrorlines lw 2 lc $i pt 7 title '$c $s', '$OUT/n_${c}_$s.dat' using 1:4 with lines dt 2 lc $i notitle"
    i=$((i + 1))
  done
done
exp_plot "$OUT/e6-n" "E6: error vs target images N (dashed: source statistics)" \
  "target images N" "test error (%)" "set logscale x; set key outside right noenhanced" "$plot"
cat "$OUT/table.md"
