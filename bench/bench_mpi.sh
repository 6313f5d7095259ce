#!/usr/bin/env bash
# Data-parallel scaling of bnlab train (resnet20 w=16, global batch 128, per-process BN): images per
# second of 1 process x 2 threads, 2 processes x 1 thread and 2 processes x 2 threads
# (oversubscribed on two cores), back to back, ROUNDS times. Each figure is the steps between a
# short and a long run over their time difference, so start-up (data loading, MPI) cancels.
# Run it on an idle machine. usage: bench/bench_mpi.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
build=${1:-build}
rounds=${2:-2}
bnlab=$build/bnlab
mpirun=(mpirun --allow-run-as-root --oversubscribe)
short=10 long=60
args=(--model resnet20 --width 16 --batch 128 --final-precise-bn off --eval-every 0)
out=$(mktemp -d /tmp/bnlab_bench_mpi_XXXXXX)
trap 'rm -rf "$out"' EXIT

secs() { # secs STEPS NP THREADS
  local t0 t1
  t0=$(date +%s.%N)
  if [ "$2" = 1 ]; then
    "$bnlab" train "${args[@]}" --max-steps "$1" --threads "$3" --out "$out/r" >/dev/null 2>&1
  else
    "${mpirun[@]}" -np "$2" "$bnlab" train "${args[@]}" --max-steps "$1" --threads "$3" \
      --out "$out/r" >/dev/null 2>&1
  fi
  t1=$(date +%s.%N)
  rm -rf "$out/r"
  echo "$t1 - $t0" | bc -l
}

printf "%-22s %s\n" "processes x threads" "img/s (rounds)"
declare -A res
for r in $(seq 1 "$rounds"); do
  for cfg in "1 2" "2 1" "2 2"; do
    set -- $cfg
    a=$(secs $short "$1" "$2")
    b=$(secs $long "$1" "$2")
    ips=$(echo "($long - $short) * 128 / ($b - $a)" | bc -l)
    res["$cfg"]="${res["$cfg"]:-} $(printf %.0f "$ips")"
  done
done
for cfg in "1 2" "2 1" "2 2"; do
  set -- $cfg
  printf "%-22s %s\n" "$1 x $2" "${res["$cfg"]}"
done
