#!/usr/bin/env bash
# Installs the Debian packages bnlab needs that are missing, and nothing else.
# usage: scripts/install-deps.sh [build|fuzz|bench|fixtures]   (build: build, test and demo; fuzz: also
# clang; bench: also the peers; fixtures: what tools/gen_*.py need)
set -euo pipefail
want="build-essential cmake pkg-config libopenblas-openmp-dev zlib1g-dev libcjson-dev libjpeg-dev libpng-dev libopenmpi-dev openmpi-bin dataset-fashion-mnist gnuplot-nox jq protobuf-c-compiler libprotobuf-c-dev libonnx-dev"
if [ "${1:-build}" = fuzz ]; then want="$want clang"; fi
if [ "${1:-build}" = bench ]; then want="$want libdnnl-dev python3-torch python3-torchvision"; fi
if [ "${1:-build}" = fixtures ]; then want="$want python3-torch python3-torchvision python3-onnx python3-pil"; fi
missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing:$missing"
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
