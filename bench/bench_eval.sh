#!/usr/bin/env bash
# The whole evaluation command against PyTorch's, each timed as a whole process (start-up, loading
# the checkpoint, reading and decoding the gzip IDX test split, the forwards, the error): `bnlab
# eval CKPT --batch B` vs tools/torch_load_check.py CKPT --batch B (the same checkpoint loaded
# into the PyTorch twin, channels_last, inference_mode), in ABBA rounds after one warm-up round.
# Both must report the same test error (within 0.05 points: float32 rounding), or the run fails.
# usage: bench/bench_eval.sh [BUILD_DIR] [ROUNDS] [BATCH]   (defaults: build 5 256)
# The checkpoint: resnet20 w=16 after 200 training steps (its timing does not depend on the weights).
set -euo pipefail
B=${1:-build}; R=${2:-5}; BATCH=${3:-256}
here=$(cd "$(dirname "$0")/.." && pwd)
bn=$B/bnlab; py=/usr/bin/python3
[ -x "$bn" ] || { echo "bench_eval: no $bn (make build first)" >&2; exit 2; }
$py -c 'import torch' 2>/dev/null || { echo "bench_eval: python3-torch missing (scripts/install-deps.sh bench)" >&2; exit 2; }
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
OMP_WAIT_POLICY=passive $bn train --model resnet20 --width 16 --max-steps 200 --out "$w/ck" > /dev/null
ck=$w/ck/last.safetensors
now() { date +%s.%N; }
run_bn() { $bn eval "$ck" --batch "$BATCH" --threads 2 --json on | sed 's/.*"err":\([0-9.]*\).*/\1/'; }
run_pt() { $py "$here/tools/torch_load_check.py" "$ck" --batch "$BATCH" --threads 2 | sed 's/.*"err": \([0-9.]*\).*/\1/'; }
timed() { local t0 t1 e; t0=$(now); e=$("$1"); t1=$(now); echo "$e $(echo "$t1 - $t0" | bc -l)"; }
echo "bench_eval: resnet20 w=16, batch $BATCH, 2 threads, the whole command (seconds), ABBA rounds"
printf "%5s %10s %10s %7s   %s\n" round bnlab PyTorch ratio "test error (bnlab, PyTorch)"
ratios=()
for r in $(seq 0 "$R"); do
  read -r ea1 ta1 < <(timed run_bn); read -r eb1 tb1 < <(timed run_pt)
  read -r eb2 tb2 < <(timed run_pt); read -r ea2 ta2 < <(timed run_bn)
  if [ "$(echo "d = $ea1 - $eb1; (d < 0.05 && d > -0.05)" | bc -l)" != 1 ]; then
    echo "bench_eval: the two evaluations disagree: bnlab $ea1%, PyTorch $eb1%" >&2; exit 1
  fi
  [ "$r" = 0 ] && continue
  ta=$(echo "($ta1 + $ta2) / 2" | bc -l); tb=$(echo "($tb1 + $tb2) / 2" | bc -l)
  ratio=$(echo "$tb / $ta" | bc -l); ratios+=("$ratio")
  printf "%5d %10.3f %10.3f %6.2fx   %s, %s\n" "$r" "$ta" "$tb" "$ratio" "$ea1" "$eb1"
done
sorted=$(printf "%s\n" "${ratios[@]}" | sort -g)
printf "ratio (PyTorch time / bnlab time): median %.2fx, minimum %.2fx over %d rounds\n" \
  "$(echo "$sorted" | sed -n "$(( (R + 1) / 2 ))p")" "$(echo "$sorted" | head -1)" "$R"
