#!/usr/bin/env bash
# The installed library as another project uses it (ctest install): cmake --install into a
# temporary prefix, then both examples built against it with pkg-config (shared, and static with
# --static) and with CMake (find_package(bnlab), the imported target bnlab::bnlab), and run:
# the BN core alone, and PreciseBN on a checkpoint that `bnlab eval` then reads; and an extender's
# model family (tests/test_custom_family.c) built with the installed headers alone. Also: the soname,
# the files in place, and none of this build's BL_HAVE_* definitions reaching a consumer.
# usage: install_test.sh BUILD_DIR SOURCE_DIR BNLAB
set -u
build=$1 src=$2 bnlab=$3
cc=${CC:-cc}
tmp=$(mktemp -d /tmp/bnlab_install_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
failed=0
fail() { echo "FAIL: $*"; failed=1; }

cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 || fail "install: $(tail -3 "$tmp/install.log")"
libdir=$(dirname "$(find "$prefix" -name 'libbnlab.so.0' | head -1)")
for f in include/bnlab/bnlab.h include/bnlab/bn.h bin/bnlab; do
  [ -e "$prefix/$f" ] || fail "missing $f"
done
for f in libbnlab.a libbnlab.so pkgconfig/bnlab.pc cmake/bnlab/bnlabConfig.cmake \
         cmake/bnlab/bnlabConfigVersion.cmake cmake/bnlab/bnlabTargets.cmake; do
  [ -e "$libdir/$f" ] || fail "missing lib/$f"
done
soname=$(readelf -d "$libdir/libbnlab.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = libbnlab.so.0 ] || fail "soname '$soname', not libbnlab.so.0"
echo "installed: $(cd "$prefix" && find . -type f | sort | tr '\n' ' ')"
echo "soname: $soname"

# a checkpoint for the PreciseBN example
"$bnlab" train --model resnet8 --width 4 --batch 32 --max-steps 3 --final-precise-bn off \
  --out "$tmp/run" >"$tmp/train.log" 2>&1 || fail "train: $(tail -2 "$tmp/train.log")"
run_examples() { # run_examples HOW DIR
  "$2/bn_core" >"$tmp/$1.bn.log" 2>&1 && grep -q "one value per channel: refused" "$tmp/$1.bn.log" ||
    fail "$1: bn_core: $(tail -2 "$tmp/$1.bn.log")"
  "$2/precise_checkpoint" "$tmp/run/last.safetensors" "$tmp/$1.safetensors" 1000 \
    >"$tmp/$1.p.log" 2>&1 && grep -q "wrote" "$tmp/$1.p.log" ||
    fail "$1: precise_checkpoint: $(tail -2 "$tmp/$1.p.log")"
  "$bnlab" eval "$tmp/$1.safetensors" --json 2>&1 | grep -q '"estimator":"precise"' ||
    fail "$1: eval of the example's checkpoint"
  echo "$1: $(head -1 "$tmp/$1.bn.log"); $(head -1 "$tmp/$1.p.log")"
}

# pkg-config: shared, then static
export PKG_CONFIG_PATH=$libdir/pkgconfig
flags=$(pkg-config --cflags --libs bnlab) || fail "pkg-config --cflags --libs bnlab"
sflags=$(pkg-config --static --libs bnlab) || fail "pkg-config --static --libs bnlab"
echo "pkg-config: $flags; static: $sflags"
case "$flags $sflags" in *BL_HAVE*) fail "BL_HAVE_* in the pkg-config flags";; esac
mkdir -p "$tmp/pc" "$tmp/pcs"
for e in bn_core precise_checkpoint; do
  $cc -std=c11 -O2 "$src/examples/$e.c" $flags -lm -Wl,-rpath,"$libdir" -o "$tmp/pc/$e" ||
    fail "pkg-config build of $e"
  $cc -std=c11 -O2 "$src/examples/$e.c" -I"$prefix/include" "$libdir/libbnlab.a" $sflags -lm \
    -o "$tmp/pcs/$e" || fail "static pkg-config build of $e"
done
ldd "$tmp/pc/bn_core" | grep -q "libbnlab.so.0 => $libdir" || fail "shared example not linked to the installed libbnlab.so.0"
! ldd "$tmp/pcs/bn_core" | grep -q libbnlab || fail "static example linked to libbnlab.so"
run_examples pkg-config "$tmp/pc"
run_examples pkg-config-static "$tmp/pcs"

# an extender's model family (tests/test_custom_family.c) with the installed headers alone
$cc -std=c11 -O2 "$src/tests/test_custom_family.c" -I"$src/tests" $flags -lm -Wl,-rpath,"$libdir" \
  -o "$tmp/custom_family" || fail "build of test_custom_family against the installed headers"
OMP_NUM_THREADS=2 "$tmp/custom_family" >"$tmp/custom.log" 2>&1 ||
  fail "test_custom_family on the installed library: $(tail -2 "$tmp/custom.log")"
echo "custom family: $(tail -1 "$tmp/custom.log")"

# CMake: find_package(bnlab), bnlab::bnlab
grep -q "BL_HAVE" "$libdir"/cmake/bnlab/*.cmake && fail "BL_HAVE_* in the CMake package"
cmake -S "$src/examples" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
  >"$tmp/cm.log" 2>&1 && cmake --build "$tmp/cm" >>"$tmp/cm.log" 2>&1 ||
  fail "CMake build of the examples: $(grep -m3 -i error "$tmp/cm.log")"
run_examples cmake "$tmp/cm"

[ $failed -eq 0 ] && echo "install: all passed"
exit $failed
