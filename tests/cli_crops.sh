#!/usr/bin/env bash
# The crop head from the command line (ctest cli_crops):
#   - emulated processes against real ones: `mpirun -np 4 train --model resnet8-crops --batch 16`
#     (the head normalizes each process's 4 images' crops) = one process with --head-bn-images 4,
#     with --bn-shuffle (the crops permuted across the processes / the groups) and without, and
#     --sync-bn = one process over the whole batch: the parameters and the loss within 1e-4 after
#     30 steps (the momentum buffers are printed too: a step where some pre-activation sits within
#     rounding of a ReLU's kink changes that step's gradient by more than rounding - with
#     --sync-bn this happens at step 24 here, the buffers then differ by ~2%, the parameters by
#     5e-5); the shuffle must change the result (the comparison can fail);
#   - bad input: --bn-shuffle without a crop head, no crops, crops larger than the map, one crop
#     per image with the head normalizing one image (one value per channel) in training and in
#     evaluation; under mpirun, that error on one process between the shuffle and the unshuffle.
# lr 0.001, as in cli_mpi.sh: larger rates amplify the rounding differences of another process
# count (docs/processes.md).
# usage: cli_crops.sh BNLAB CKPT_CLOSE [MPIRUN [MPIRUN ARGS...]]   (no MPIRUN: bad input only)
set -u
bnlab=$1 close=$2
shift 2
mpirun=("$@")
dir=$(mktemp -d /tmp/bnlab_crops_XXXXXX)
trap 'rm -rf "$dir"' EXIT
failed=0
fail() { echo "FAIL: $*"; failed=1; }
common=(--model resnet8-crops --width 4 --head-width 32 --crops 8 --batch 16 --max-steps 30
        --lr 0.001 --threads 1)

run() { # run NAME COMMAND...
  local name=$1; shift
  if ! "$@" >"$dir/$name.log" 2>&1; then fail "$name: $(tail -3 "$dir/$name.log")"; fi
}
ck() { echo "$dir/$1/last.safetensors"; }
# the loss summed over the epoch so far, from the checkpoint's metadata
loss() { grep -a -o '"epoch_progress":"[^,]*' "$(ck "$1")" | cut -d'"' -f4; }
same_loss() { # same_loss A B: relative difference of the summed losses <= 1e-4
  awk -v a="$(loss "$1")" -v b="$(loss "$2")" 'BEGIN { d = a - b; if (d < 0) d = -d;
    printf "loss %s vs %s: %.3g\n", a, b, d / a; exit !(a > 0 && d / a <= 1e-4) }'
}

# bad input: a clear error, status 2 for options, 1 for what only training finds
expect() { # expect STATUS PATTERN COMMAND...
  local want=$1 pat=$2; shift 2
  "$@" >"$dir/out.log" 2>&1
  local rc=$?
  [ $rc = "$want" ] || fail "$* exited $rc, not $want: $(tail -2 "$dir/out.log")"
  grep -q -- "$pat" "$dir/out.log" || fail "$*: no '$pat' in: $(tail -2 "$dir/out.log")"
}

if [ ${#mpirun[@]} -gt 0 ]; then
  for arm in shuffle rank sync; do
    case $arm in
      shuffle) one=(--head-bn-images 4 --bn-shuffle) many=(--bn-shuffle) ;;
      rank) one=(--head-bn-images 4) many=() ;;
      sync) one=() many=(--sync-bn) ;;
    esac
    run "one_$arm" "$bnlab" train "${common[@]}" "${one[@]}" --out "$dir/one_$arm"
    run "mpi_$arm" "${mpirun[@]}" -np 4 "$bnlab" train "${common[@]}" "${many[@]}" --out "$dir/mpi_$arm"
    echo "$arm: mpirun -np 4 vs one process emulating 4:"
    "$close" "$(ck one_$arm)" "$(ck mpi_$arm)" 1e-4 '!optim.' || fail "$arm: 4 processes differ from the emulation"
    "$close" "$(ck one_$arm)" "$(ck mpi_$arm)" 1 optim.
    same_loss "one_$arm" "mpi_$arm" || fail "$arm: the losses differ"
  done
  # an error on one process between the shuffle and the unshuffle (one crop per image: the
  # process with one image has one value per channel after the shuffle) ends every process with
  # that message instead of leaving the others in the unshuffle's exchange
  expect 1 "single value per channel" timeout 120 "${mpirun[@]}" -np 4 "$bnlab" train \
    --model resnet8-crops --width 4 --head-width 32 --batch 7 --crops 1 --bn-shuffle --max-steps 3 --threads 1
  echo "shuffle vs no shuffle (must differ):"
  if "$close" "$(ck one_rank)" "$(ck one_shuffle)" 1e-4 '!optim.'; then fail "the shuffle changed nothing"; fi
fi

# bad input
bad=(--width 4 --batch 16 --max-steps 2 --threads 1)
expect 1 "bn-shuffle applies to models whose head normalizes its own groups (resnetN-crops" "$bnlab" train --model resnet8 "${bad[@]}" --bn-shuffle
expect 2 "crops applies to resnetN-crops (with the crop head), not resnet8" "$bnlab" train --model resnet8 "${bad[@]}" --crops 4
expect 2 "\-\-crops" "$bnlab" train --model resnet8-crops "${bad[@]}" --crops 0
expect 1 "do not fit the 14x14 feature map" "$bnlab" train --model resnet8-crops "${bad[@]}" --crop-max 20
expect 1 "single value per channel" "$bnlab" train --model resnet8-crops "${bad[@]}" --crops 1 --head-bn-images 1
expect 1 "head-bn-images 32: use 0" "$bnlab" train --model resnet8-crops "${bad[@]}" --head-bn-images 32
expect 1 "norm is gn" "$bnlab" train --model resnet8-crops "${bad[@]}" --head-norm gn --bn-shuffle
expect 1 "changes nothing" "$bnlab" train --model resnet8-crops "${bad[@]}" --bn-shuffle
expect 1 "eval-minibatch with --crops 1" "$bnlab" train --model resnet8-crops "${bad[@]}" --crops 1 --eval-minibatch on
# mini-batch inference over one crop: a model of one crop per image (trained in pairs), evaluated
# with one image's crop
run one_crop "$bnlab" train --model resnet8-crops "${bad[@]}" --crops 1 --head-bn-images 2 --out "$dir/one_crop"
expect 1 "single value per channel" "$bnlab" eval "$(ck one_crop)" --stats minibatch --norm-batch 1 --threads 1
[ $failed = 0 ] && echo "cli_crops: all passed"
exit $failed
