#!/usr/bin/env bash
# The ONNX commands from the command line (ctest cli_onnx): eval with --outputs (the file's size
# and its NCHW output order checked against the float model with BN folded at export), precise
# -o and --save-stats (the patched model evaluates differently from the original and again the
# same on a second read), inspect; a model without BN refused by precise and inspect with the
# export recipe; bad input: the input file as the output, a missing tensors file, a wrong
# --input-shape, --stats minibatch without labels, images of the wrong shape.
# Under mpirun (when given): precise of an ONNX model on 2 processes equals one process whose
# ghost groups are the shares (--norm-batch 8), and on 3 processes (shares 6, 6, 4) with the
# sequential mode equals --norm-batch 6; inspect on 2 and 3 processes equals one process.
# usage: cli_onnx.sh BNLAB FIXTURE_DIR [MPIRUN [MPIRUN ARGS...]]
set -u
bnlab=$1 fx=$2
shift 2
mpirun=("$@")
dir=$(mktemp -d /tmp/bnlab_onnx_cli_XXXXXX)
trap 'rm -rf "$dir"' EXIT
failed=0
fail() { echo "FAIL: $*"; failed=1; }
in=(--tensors "$fx/inputs.npy")
expect() { # expect RC PATTERN NAME COMMAND...
  local rc=$1 pat=$2 name=$3; shift 3
  "$@" >"$dir/$name.log" 2>&1
  local got=$?
  [ "$got" = "$rc" ] || fail "$name: exit $got, not $rc: $(tail -2 "$dir/$name.log")"
  grep -q -- "$pat" "$dir/$name.log" || fail "$name: no '$pat' in: $(tail -2 "$dir/$name.log")"
}
expect 0 "64 images, 10 outputs" eval "$bnlab" eval "$fx/smallcat.onnx" "${in[@]}" --outputs "$dir/o.npy"
size=$(stat -c %s "$dir/o.npy" 2>/dev/null || echo 0)
[ "$size" = $((128 + 64 * 10 * 4)) ] || fail "outputs.npy of $size bytes, not $((128 + 2560))"
# the same images from a safetensors file with labels, and from .npy with --labels
expect 0 ": error" st "$bnlab" eval "$fx/smallcat.onnx" --tensors "$fx/inputs.safetensors" --outputs "$dir/st.npy"
cmp -s "$dir/o.npy" "$dir/st.npy" || fail "the safetensors images give other outputs than the .npy ones"
expect 0 ": error" lab "$bnlab" eval "$fx/smallcat.onnx" "${in[@]}" --labels "$fx/labels.npy"
[ "$(grep -o 'error [0-9.]*%' "$dir/st.log")" = "$(grep -o 'error [0-9.]*%' "$dir/lab.log")" ] ||
  fail "the error with labels differs between the two files"
expect 0 "outputs in" folded "$bnlab" eval "$fx/smallcat_folded.onnx" "${in[@]}" --outputs "$dir/f.npy"
worst=$(paste <(tail -c 2560 "$dir/o.npy" | od -An -tf4 -w4 -v) \
              <(tail -c 2560 "$dir/f.npy" | od -An -tf4 -w4 -v) |
        awk '{d = $1 - $2; if (d < 0) d = -d; if (d > w) w = d} END {printf "%g", w}')
awk -v w="$worst" 'BEGIN {exit !(w <= 1e-5)}' ||
  fail "the model with BN folded at export gives other outputs (worst difference $worst)"
expect 0 "only the BN statistics changed" precise "$bnlab" precise "$fx/smallcat.onnx" "${in[@]}" \
  --batch 16 -o "$dir/p.onnx" --save-stats "$dir/p.safetensors"
[ -s "$dir/p.safetensors" ] || fail "no --save-stats file"
expect 0 "outputs in" eval2 "$bnlab" eval "$dir/p.onnx" "${in[@]}" --outputs "$dir/p.npy"
cmp -s "$dir/o.npy" "$dir/p.npy" && fail "the re-estimated model gives the old outputs"
expect 0 "outputs in" eval3 "$bnlab" eval "$dir/p.onnx" "${in[@]}" --outputs "$dir/p2.npy"
cmp -s "$dir/p.npy" "$dir/p2.npy" || fail "two evaluations of the written model differ"
expect 0 "verdict: stored statistics are off" inspect "$bnlab" inspect "$fx/smallcat.onnx" "${in[@]}"
expect 0 "verdict: consistent" inspect2 "$bnlab" inspect "$dir/p.onnx" "${in[@]}" --batch 16
expect 1 "TrainingMode.PRESERVE" nobn_precise "$bnlab" precise "$fx/smallcat_folded.onnx" "${in[@]}" -o "$dir/x.onnx"
expect 1 "no BatchNormalization node" nobn_inspect "$bnlab" inspect "$fx/smallcat_folded.onnx" "${in[@]}"
[ -e "$dir/x.onnx" ] && fail "precise of a model without BN wrote a file"
expect 2 "would overwrite the input" same "$bnlab" precise "$fx/smallcat.onnx" "${in[@]}" -o "$fx/smallcat.onnx"
expect 1 "cannot open" missing "$bnlab" eval "$fx/smallcat.onnx" --tensors "$dir/none.npy"
expect 2 "disagrees" shape "$bnlab" eval "$fx/smallcat.onnx" "${in[@]}" --input-shape 3,28,28
expect 2 "give --labels" mb "$bnlab" eval "$fx/smallcat.onnx" "${in[@]}" --stats minibatch
if [ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  expect 1 "the images are 28x28" fmnist "$bnlab" eval "$fx/smallcat.onnx"
fi
# non-finite statistics (mixed precision): inspect says so and how to mend it; precise mends it
expect 0 "2 of 6 channels with non-finite statistics" nan_inspect "$bnlab" inspect "$fx/nanstats.onnx" "${in[@]}"
grep -q "fix: bnlab precise" "$dir/nan_inspect.log" || fail "no fix command for non-finite statistics"
expect 1 "are unusable (mean 0.264663, var nan): re-estimate" nan_eval "$bnlab" eval "$fx/nanstats.onnx" "${in[@]}"
expect 0 "only the BN statistics changed" nan_precise "$bnlab" precise "$fx/nanstats.onnx" "${in[@]}" -o "$dir/mended.onnx"
expect 0 "outputs in" nan_mended "$bnlab" eval "$dir/mended.onnx" "${in[@]}" --outputs "$dir/m.npy"
grep -q "NaN" "$dir/nan_mended.log" && fail "the mended model still gives NaN"
# adapt: the held-out protocol with labels (plain, a prior, online), all images without; online
# without labels refused, writing nothing
lab=(--labels "$fx/labels.npy")
expect 0 "error with target statistics (n = 32)" adapt "$bnlab" adapt "$fx/smallcat.onnx" "${in[@]}" "${lab[@]}" --batch 16
expect 0 "prior N = 16" adapt_prior "$bnlab" adapt "$fx/smallcat.onnx" "${in[@]}" "${lab[@]}" --batch 16 --prior 16
expect 0 "online (batches of 8" adapt_online "$bnlab" adapt "$fx/smallcat.onnx" "${in[@]}" "${lab[@]}" --batch 8 --online -o "$dir/online.onnx"
expect 0 "population statistics" adapt_online_eval "$bnlab" eval "$dir/online.onnx" "${in[@]}"
expect 0 "from 64 unlabelled images" adapt_nolab "$bnlab" adapt "$fx/smallcat.onnx" "${in[@]}" --prior 8 -o "$dir/adapted.onnx"
[ -s "$dir/adapted.onnx" ] || fail "adapt -o wrote no model"
expect 1 "needs labels" adapt_online_nolab "$bnlab" adapt "$fx/smallcat.onnx" "${in[@]}" --online -o "$dir/none.onnx"
[ -e "$dir/none.onnx" ] && fail "adapt --online without labels wrote a file"
expect 1 "TrainingMode.PRESERVE" adapt_nobn "$bnlab" adapt "$fx/smallcat_folded.onnx" "${in[@]}" -o "$dir/none.onnx"
# fold: checked on the images, the starved channels reported; refusals write nothing
expect 0 "4 of 18 channels (22.2%) would get fewer than 4 bits" fold "$bnlab" fold "$fx/crafted_fold.onnx" "${in[@]}" -o "$dir/folded.onnx"
grep -q "kept: n2: the output of cb is also read elsewhere" "$dir/fold.log" || fail "fold: the kept BN is not named"
grep -q "check: the folded model's outputs within" "$dir/fold.log" || fail "fold: no check line"
expect 0 "population statistics" fold_eval "$bnlab" eval "$dir/folded.onnx" "${in[@]}"
expect 0 "check: none" fold_nodata "$bnlab" fold "$fx/smallcat.onnx" -o "$dir/folded2.onnx"
expect 0 "non-finite statistics or parameters: run bnlab precise first" fold_nan "$bnlab" fold "$fx/nanstats.onnx" -o "$dir/foldnan.onnx"
expect 2 "where to?" fold_noout "$bnlab" fold "$fx/smallcat.onnx"
expect 1 "TrainingMode.PRESERVE" fold_nobn "$bnlab" fold "$fx/smallcat_folded.onnx" -o "$dir/none.onnx"
[ -e "$dir/none.onnx" ] && fail "fold of a model without BN wrote a file"
# --images: a folder (class folders give labels; the recipe printed); bad folders and images end
# with the thing named and write nothing
im="$(dirname "$fx")/images"
expect 0 "9 images in 2 class folders (labels 0..1, sorted), skipped 2 .txt, 1 .webp; Resize(37) + CenterCrop(32), RGB" \
  img_eval "$bnlab" eval "$fx/smallcat.onnx" --images "$im/folder"
grep -q "9 images, 10 outputs each, population statistics: error" "$dir/img_eval.log" || fail "--images: no error rate"
expect 0 "only the BN statistics changed" img_precise "$bnlab" precise "$fx/smallcat.onnx" --images "$im/folder" --batch 4 -o "$dir/img.onnx"
mkdir -p "$dir/empty" "$dir/badfolder/x"
cp "$im/folder/a_class/one.jpg" "$dir/badfolder/x/"
cp "$im/bad/trunc_scan.jpg" "$dir/badfolder/x/"
expect 1 "no images" img_empty "$bnlab" precise "$fx/smallcat.onnx" --images "$dir/empty" -o "$dir/none.onnx"
expect 1 "trunc_scan.jpg" img_bad "$bnlab" precise "$fx/smallcat.onnx" --images "$dir/badfolder" -o "$dir/none.onnx"
expect 1 "trunc_scan.jpg" img_bad_adapt "$bnlab" adapt "$fx/smallcat.onnx" --images "$dir/badfolder" -o "$dir/none.onnx"
expect 1 "no such folder" img_missing "$bnlab" eval "$fx/smallcat.onnx" --images "$dir/nope"
expect 2 "not both" img_both "$bnlab" eval "$fx/smallcat.onnx" --images "$im/folder" "${in[@]}"
for bad in huge.png empty.png; do # an oversized header, a zero-byte file: named, nothing written
  mkdir -p "$dir/bad_$bad/x" && cp "$im/folder/a_class/one.jpg" "$im/bad/$bad" "$dir/bad_$bad/x/"
  expect 1 "$bad" "img_$bad" "$bnlab" precise "$fx/smallcat.onnx" --images "$dir/bad_$bad" -o "$dir/none.onnx"
done
mkdir -p "$dir/oneclass/only" && cp "$im/folder/a_class/one.jpg" "$im/folder/a_class/two.jpeg" "$dir/oneclass/only/"
expect 0 "one class folder: every image has label 0" img_oneclass "$bnlab" eval "$fx/smallcat.onnx" --images "$dir/oneclass"
[ -e "$dir/none.onnx" ] && fail "a bad image folder let a command write its output"
# the outputs of two models' evaluations within 1e-6 (rounding of another merge order)
close() { # close A.npy B.npy NAME
  local w
  w=$(paste <(tail -c 2560 "$1" | od -An -tf4 -w4 -v) <(tail -c 2560 "$2" | od -An -tf4 -w4 -v) |
      awk '{d = $1 - $2; if (d < 0) d = -d; if (d > w) w = d} END {printf "%g", w}')
  awk -v w="$w" 'BEGIN {exit !(w <= 1e-6)}' || fail "$3: outputs differ by $w"
  echo "$3: outputs within $w"
}
if [ ${#mpirun[@]} -gt 0 ]; then
  for run in "2 8 off" "3 6 on"; do
    set -- $run
    np=$1 nb=$2 seq=$3
    common=(--batch 16 --in-order on --sequential "$seq" --threads 1)
    expect 0 "only the BN statistics changed" "one_$np" "$bnlab" precise "$fx/mobilenet_v3_small_w025.onnx" \
      "${in[@]}" "${common[@]}" --norm-batch "$nb" -o "$dir/one$np.onnx"
    expect 0 "only the BN statistics changed" "mpi_$np" "${mpirun[@]}" -np "$np" "$bnlab" precise \
      "$fx/mobilenet_v3_small_w025.onnx" "${in[@]}" "${common[@]}" -o "$dir/mpi$np.onnx"
    for w in one mpi; do
      "$bnlab" eval "$dir/$w$np.onnx" "${in[@]}" --outputs "$dir/$w$np.npy" >/dev/null 2>&1 ||
        fail "eval of the $w$np model"
    done
    close "$dir/one$np.npy" "$dir/mpi$np.npy" "$np processes (sequential $seq) vs --norm-batch $nb"
  done
  # inspect: the mini-batches dealt out (4 of 16 over 3 processes: 2, 1, 1), the PreciseBN
  # reference's shares as one process's ghost groups; every figure of the report within 1e-4
  for run in "2 32 64" "3 48 48"; do
    set -- $run
    common=(--precise-batch "$2" --samples "$3" --threads 1 --json on)
    expect 0 '"verdict"' "ione_$1" "$bnlab" inspect "$fx/mobilenet_v3_small_w025.onnx" "${in[@]}" \
      "${common[@]}" --norm-batch 16
    expect 0 '"verdict"' "impi_$1" "${mpirun[@]}" -np "$1" "$bnlab" inspect \
      "$fx/mobilenet_v3_small_w025.onnx" "${in[@]}" "${common[@]}"
    nums() { jq -r '.flagged, (.layers[] | .shift_mean, .shift_max, .logvar_max, .kl_mean, .kl_max, .outside)' "$1"; }
    w=$(paste <(nums "$dir/ione_$1.log") <(nums "$dir/impi_$1.log") |
        awk '{d = $1 - $2; if (d < 0) d = -d; s = $1 < 0 ? -$1 : $1; d /= (s > 1 ? s : 1); if (d > w) w = d} END {print NR ? w + 0 : "none"}')
    awk -v w="$w" 'BEGIN {exit !(w != "none" && w <= 1e-4)}' ||
      fail "inspect on $1 processes vs --norm-batch 16: figures differ by $w"
    echo "inspect on $1 processes vs one: figures within $w"
  done
  expect 2 "only train, precise and inspect use" mpi_eval "${mpirun[@]}" -np 2 "$bnlab" eval \
    "$fx/smallcat.onnx" "${in[@]}"
fi
[ $failed = 0 ] && echo "cli_onnx: all passed"
exit $failed
