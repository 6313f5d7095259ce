#!/usr/bin/env bash
# Injected faults through the command line (BNLAB_FAULT, docs/robustness.md), ctest cli_faults:
#   - a checkpoint whose write, fsync or rename fails: the command fails naming the step, the
#     previous last.safetensors is byte for byte as it was and still evaluates, no temporary;
#   - a metrics line whose write or fsync fails: the run fails naming metrics.jsonl, the file
#     keeps exactly its earlier lines (never part of one);
#   - an allocation failing in eval: "out of memory", exit 1, no crash;
#   - a malformed BNLAB_FAULT is refused.
# usage: cli_faults.sh BNLAB
set -u
bnlab=$1
dir=$(mktemp -d /tmp/bnlab_faults_XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$dir"' EXIT
failed=0
fail() { echo "FAIL: $*"; failed=1; }
# a tiny data set of random images (128 training, 64 test: 4 steps of 32 per epoch), so each
# run takes a fraction of a second
be32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) $(($1 >> 8 & 255)) $(($1 & 255)); }
idx() { # idx PREFIX N
  { printf '\x00\x00\x08\x03'; printf "$(be32 "$2")$(be32 28)$(be32 28)"; head -c $(($2 * 784)) /dev/urandom; } |
    gzip >"$dir/data/$1-images-idx3-ubyte.gz"
  { printf '\x00\x00\x08\x01'; printf "$(be32 "$2")"; for ((i = 0; i < $2; i++)); do printf "\\x0$((i % 10))"; done; } |
    gzip >"$dir/data/$1-labels-idx1-ubyte.gz"
}
mkdir -p "$dir/data"
idx train 128
idx t10k 64
common=(--model resnet8 --width 4 --batch 32 --data-dir "$dir/data" --final-precise-bn off --threads 1)

"$bnlab" train "${common[@]}" --epochs 1 --max-steps 2 --out "$dir/run" >"$dir/first.log" 2>&1 ||
  fail "first run: $(tail -3 "$dir/first.log")"
cp "$dir/run/last.safetensors" "$dir/before.safetensors"
for f in write:3 fsync:0 rename:0; do
  out=$(BNLAB_FAULT=$f "$bnlab" train "${common[@]}" --epochs 1 --max-steps 3 \
        --resume "$dir/run/last.safetensors" --out "$dir/run" 2>&1)
  rc=$?
  step=${f%%:*}
  [ $rc -ne 0 ] || fail "$f: exit 0"
  echo "$out" | grep -q "$step failed" || fail "$f: no '$step failed' in: $(echo "$out" | tail -2)"
  cmp -s "$dir/before.safetensors" "$dir/run/last.safetensors" || fail "$f: last.safetensors changed"
  [ ! -e "$dir/run/last.safetensors.tmp" ] || fail "$f: a temporary is left"
  "$bnlab" eval "$dir/run/last.safetensors" --data-dir "$dir/data" --json >"$dir/eval.log" 2>&1 ||
    fail "$f: eval after: $(tail -2 "$dir/eval.log")"
  echo "$f: $(echo "$out" | grep "$step failed" | head -1)"
done

# metrics.jsonl: epoch 1 written, then epoch 2's line fails (its write, its fsync)
"$bnlab" train "${common[@]}" --epochs 2 --keep-every 1 --out "$dir/m" >"$dir/m.log" 2>&1 ||
  fail "metrics run: $(tail -3 "$dir/m.log")"
head -1 "$dir/m/metrics.jsonl" >"$dir/one.jsonl"
cp "$dir/m/metrics.jsonl" "$dir/m/saved.jsonl"
for f in write fsync; do
  cp "$dir/m/saved.jsonl" "$dir/m/metrics.jsonl"
  # from epoch 1's checkpoint the run rewrites metrics.jsonl without epoch 2's line, writes
  # epoch 2's checkpoint, then the line: its write and fsync are the run's last; count a clean
  # run's calls (BNLAB_FAULT_COUNT), then fail the last
  calls=$(BNLAB_FAULT_COUNT=$f "$bnlab" train "${common[@]}" --epochs 2 --resume \
          "$dir/m/epoch1.safetensors" --out "$dir/m" 2>&1 | sed -n "s/^bnlab: $f calls: //p")
  cp "$dir/m/saved.jsonl" "$dir/m/metrics.jsonl"
  out=$(BNLAB_FAULT=$f:$((calls - 1)) "$bnlab" train "${common[@]}" --epochs 2 --resume \
        "$dir/m/epoch1.safetensors" --out "$dir/m" 2>&1)
  [ $? -ne 0 ] || fail "metrics $f: exit 0"
  echo "$out" | grep -q "metrics.jsonl: $f failed" ||
    fail "metrics $f: no 'metrics.jsonl: $f failed' in: $(echo "$out" | tail -2)"
  cmp -s "$dir/one.jsonl" "$dir/m/metrics.jsonl" || fail "metrics $f: the file is not its first line alone"
  echo "metrics $f (call $((calls - 1)) of $calls): $(echo "$out" | grep "failed" | head -1)"
done

out=$(BNLAB_FAULT=alloc:40 "$bnlab" eval "$dir/run/last.safetensors" --data-dir "$dir/data" 2>&1)
rc=$?
[ $rc -eq 1 ] && echo "$out" | grep -q "out of memory" || fail "alloc: rc $rc: $out"
echo "alloc:40 in eval: $out"
out=$(BNLAB_FAULT=disk:1 "$bnlab" version 2>&1)
[ $? -eq 2 ] && echo "$out" | grep -q "use alloc:N" || fail "bad BNLAB_FAULT: $out"

[ $failed -eq 0 ] && echo "cli_faults: all passed"
exit $failed
