# Shared helpers for the experiment scripts (sourced, not run): the profile flags, resumable steps,
# and one gnuplot helper so every plot looks alike (PNG and SVG).
#
# A script calls `exp_init NAME "$@"`, then runs its steps with `exp_step FILE CMD...` (skipped when
# FILE exists, so a stopped full run resumes where it stopped; FILE appears only when CMD succeeded),
# then writes $OUT/table.md and plots with `exp_plot`.
#   --quick  minutes on 2 cores, a smoke check: results/quick/NAME (not committed)
#   --full   the full profile (the default): results/NAME
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BNLAB=${BNLAB:-$ROOT/build/bnlab}
QUICK=0

exp_init() {
  local name=$1 usage=${EXP_USAGE:-}
  shift
  for a in "$@"; do
    case $a in
      --quick) QUICK=1 ;;
      --full) QUICK=0 ;;
      -h|--help) echo "usage: experiments/${0##*/} [--quick|--full]"; [ -n "$usage" ] && echo "$usage"; exit 0 ;;
      *) echo "${0##*/}: unknown argument '$a' (--quick or --full)" >&2; exit 2 ;;
    esac
  done
  if [ ! -x "$BNLAB" ]; then
    echo "${0##*/}: $BNLAB not found: run 'make build' first (or set BNLAB)" >&2
    exit 1
  fi
  command -v jq >/dev/null && command -v gnuplot >/dev/null || {
    echo "${0##*/}: needs jq and gnuplot: run scripts/install-deps.sh" >&2; exit 1; }
  cd "$ROOT" # paths in the results stay relative to the repository
  if [ $QUICK = 1 ]; then OUT=results/quick/$name; else OUT=results/$name; fi
  mkdir -p "$OUT/raw"
  # the shared runs of exp_nbs_model
  if [ $QUICK = 1 ]; then
    NBS_ARCH="--model resnet8 --width 8"; NBS_EPOCHS=2; NBS_KEEP=1; NBS_PRECISE=1000; NBS_TAG=resnet8w8
  else
    NBS_ARCH="--model resnet20 --width 16"; NBS_EPOCHS=20; NBS_KEEP=4; NBS_PRECISE=10000; NBS_TAG=resnet20
  fi
  echo "== $name ($( [ $QUICK = 1 ] && echo quick || echo full ) profile) -> $OUT"
}

# exp_step FILE CMD...: CMD's stdout becomes FILE, atomically (a failing CMD, or a full disk,
# leaves no FILE and no temporary, so a rerun redoes the step); skipped when FILE exists.
exp_step() {
  local file=$1
  shift
  if [ -s "$file" ]; then echo "   have $file"; return 0; fi
  echo "   run  $file"
  if ! { "$@" > "$file.tmp" && mv "$file.tmp" "$file"; }; then
    rm -f "$file.tmp"
    echo "   FAILED $file: $*" >&2
    return 1
  fi
}

# exp_pct FILE FIELD: FIELD of the JSON in FILE with two decimals (5.70, not jq's 5.7), or NaN
# where it is null (a diverged run).
exp_pct() {
  jq -r --arg f "$2" '.[$f] | if . == null then "NaN" else . end' "$1" | awk '$1 == "NaN" { print; next } { printf "%.2f\n", $1 }'
}

# exp_plot BASE TITLE XLABEL YLABEL SETTINGS PLOT: BASE.png and BASE.svg from one gnuplot "plot"
# clause (PLOT) after extra SETTINGS (e.g. "set logscale x").
exp_plot() {
  local base=$1 title=$2 xl=$3 yl=$4 settings=$5 plot=$6 term
  for term in "pngcairo size 960,600 font 'sans,11'" "svg size 960,600 font 'sans,11'"; do
    local ext=png
    case $term in svg*) ext=svg ;; esac
    gnuplot <<GP
set terminal $term
set output '$base.$ext'
set title "$title"
set xlabel "$xl"
set ylabel "$yl"
set grid
set key top right box opaque
set offsets graph 0.04, graph 0.04, graph 0.06, graph 0.06
$settings
plot $plot
GP
  done
}

# exp_model NAME EPOCHS ARGS...: a training run shared by experiments (results/models/NAME, or
# results/quick/models/NAME), resumed if it stopped, skipped if done. The EMA statistics are kept
# (--final-precise-bn off) so experiments can compare estimators. Sets MODEL_DIR.
exp_model() { exp_run_ "$1" "$2" "" "${@:3}"; }

# exp_branch NAME EPOCHS FROM ARGS...: like exp_model, but the run starts from checkpoint FROM (a
# kept epoch of another run, e.g. to branch a FrozenBN phase off a regular run).
exp_branch() { exp_run_ "$@"; }

exp_run_() {
  local name=$1 epochs=$2 from=$3 done_epoch
  shift 3
  MODEL_DIR=results/models/$name
  [ $QUICK = 1 ] && MODEL_DIR=results/quick/models/$name
  mkdir -p "$MODEL_DIR"
  done_epoch=$( [ -s "$MODEL_DIR/metrics.jsonl" ] && jq -s 'last.epoch' "$MODEL_DIR/metrics.jsonl" || echo 0)
  if [ "$done_epoch" -ge "$epochs" ]; then echo "   have $MODEL_DIR"; return 0; fi
  [ -s "$MODEL_DIR/last.safetensors" ] && from=$MODEL_DIR/last.safetensors
  local resume=()
  [ -n "$from" ] && resume=(--resume "$from")
  echo "   run  $MODEL_DIR (log: $MODEL_DIR/train.log)"
  "$BNLAB" train --epochs "$epochs" --final-precise-bn off "$@" "${resume[@]}" \
    --out "$MODEL_DIR" >> "$MODEL_DIR/train.log"
}

# exp_nbs_model NBS: the one shared run per normalization batch NBS at SGD batch 128 (E1's batch-128
# curve, E3, E4 and E5 all read these, so each is trained once): $NBS_ARCH, $NBS_EPOCHS epochs,
# test error with PreciseBN statistics after every epoch beside the EMA's, checkpoints kept every
# $NBS_KEEP epochs (E5 branches FrozenBN runs from them). Full: resnet20 w=16, 20 epochs, about 30
# minutes each on 2 cores. Quick: resnet8 w=8, 2 epochs.
exp_nbs_model() {
  local nbs=$1
  # shellcheck disable=SC2086 # NBS_ARCH is a list of arguments
  exp_model "$NBS_TAG-nbs$nbs" $NBS_EPOCHS $NBS_ARCH --batch 128 --norm-batch "$nbs" \
    --keep-every $NBS_KEEP --precise-bn-every 1 --precise-samples $NBS_PRECISE
}

# exp_crops_model ARM [SEED]: the crop-head runs E8 and E9 share (docs/crop-head.md): resnet8-crops, 16
# images per step, 16 crops per image, the head's norm by ARM - img1/img2: BN over the crops of
# each image / pair (one process emulating 16 / 8 processes of 1 / 2 images), shuf1/shuf2: the
# same after the shuffle of the crops across those processes, sync: BN over the whole batch's
# crops (SyncBN), gn: GN of each crop. Test (and 10^4 training images') error with population and
# one image's mini-batch statistics after every epoch. Full: width 16, head 256, 5 epochs (about
# 8 minutes each on 2 cores); quick: width 4, head 64, 8 crops, 1 epoch. SEED (default 1): the
# run's seed (weights, order, crops). Sets MODEL_DIR.
exp_crops_model() {
  local arm=$1 seed=${2:-1} args sfx=""
  case $arm in
    img1) args="--head-bn-images 1" ;;
    img2) args="--head-bn-images 2" ;;
    shuf1) args="--head-bn-images 1 --bn-shuffle" ;;
    shuf2) args="--head-bn-images 2 --bn-shuffle" ;;
    sync) args="--sync-bn" ;;
    gn) args="--head-norm gn" ;;
    *) echo "exp_crops_model: unknown arm $arm" >&2; return 1 ;;
  esac
  if [ $QUICK = 1 ]; then
    CROPS_ARCH="--model resnet8-crops --width 4 --head-width 64 --crops 8"; CROPS_EPOCHS=1; CROPS_TAG=r8cw4; CROPS_PRECISE=1000
  else
    CROPS_ARCH="--model resnet8-crops --width 16 --head-width 256 --crops 16"; CROPS_EPOCHS=5; CROPS_TAG=r8cw16; CROPS_PRECISE=10000
  fi
  [ "$seed" = 1 ] || sfx=-s$seed
  # shellcheck disable=SC2086 # lists of arguments
  exp_model "crops-$CROPS_TAG-$arm$sfx" $CROPS_EPOCHS $CROPS_ARCH --batch 16 --eval-minibatch on \
    --seed "$seed" $args
}
