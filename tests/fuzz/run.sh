#!/usr/bin/env bash
# Runs each libFuzzer target for SECONDS, growing its working corpus (BUILD/corpus/TARGET, seeded
# from tests/fuzz/corpus/TARGET; run again to go on from where it stopped). A failing input lands
# in BUILD/artifacts/ and the run fails: copy the input into tests/fuzz/corpus/TARGET once the
# defect is fixed, so the replay tests keep it fixed. FUZZ_PARALLEL=1 runs the targets at the
# same time (CI: each its SECONDS, in the wall time of one).
# usage: tests/fuzz/run.sh BUILD SECONDS [TARGET...]
set -uo pipefail
build=$1 secs=$2
shift 2
src=$(cd "$(dirname "$0")" && pwd)
targets=${*:-fuzz_checkpoint fuzz_idx fuzz_options fuzz_npy fuzz_onnx fuzz_image}
mkdir -p "$build/artifacts"

one() { # one TARGET: runs it, leaves its exit status in BUILD/TARGET.rc
  local t=$1
  mkdir -p "$build/corpus/$t"
  # -close_fd_mask=3: the targets' own messages (error texts by design) stay out of the log;
  # libFuzzer's lines and the sanitizers' reports still come through
  "$build/$t" -max_total_time="$secs" -close_fd_mask=3 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
      -max_len=65536 -timeout=20 -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" \
      "$build/corpus/$t" "$src/corpus/$t" >"$build/$t.log" 2>&1
  echo $? >"$build/$t.rc"
}

if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then
  for t in $targets; do one "$t" & done
  wait
else
  for t in $targets; do one "$t"; done
fi

fail=0
for t in $targets; do
  log="$build/$t.log" rc=$(cat "$build/$t.rc")
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "$t: ${secs} s, ${runs:-?} executions, ${cov:-cov: ?}, corpus $(ls "$build/corpus/$t" | wc -l) inputs, exit $rc"
  if [ "$rc" -ne 0 ]; then
    fail=1
    grep -E 'ERROR|SUMMARY|runtime error|==[0-9]+==' "$log" | head -20
    echo "$t: failed, see $log and $build/artifacts/"
  fi
done
exit $fail
