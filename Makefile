# Everyday commands; CMake does the real work in build/ (build-asan/ for the sanitizer build).
BUILD ?= build
JOBS  ?= $(shell nproc)
DEPS  := scripts/install-deps.sh
# REQUIRE_ONNX=1 (CI): configuring fails without protobuf-c and onnx.proto instead of leaving the
# ONNX commands out
ONNX_REQ := $(if $(REQUIRE_ONNX),-DBL_REQUIRE_ONNX=ON,)

.PHONY: all build test test-asan fuzz install demo bench deps clean repro

all: build

deps:
	@$(DEPS) build

build:
	@test -f $(BUILD)/CMakeCache.txt || cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DBL_NATIVE=ON $(ONNX_REQ)
	@cmake --build $(BUILD) -j $(JOBS)

# The README's test command: installs what is missing, builds, runs every test, CTEST_JOBS at a
# time (default: the cores; the tests' OpenMP threads wait passively so they do not spin against
# each other).
CTEST_JOBS ?= $(JOBS)
test: deps build
	@cd $(BUILD) && OMP_WAIT_POLICY=passive ctest --output-on-failure -j $(CTEST_JOBS)

# The unit tests again under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan: deps
	@test -f build-asan/CMakeCache.txt || cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DBL_SANITIZE=ON -DBL_BENCH=OFF -DBL_NATIVE=ON $(ONNX_REQ)
	@cmake --build build-asan -j $(JOBS)
	@cd build-asan && OMP_WAIT_POLICY=passive ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --output-on-failure -j $(CTEST_JOBS)

# The libFuzzer targets (tests/fuzz) under ASan + UBSan, each for SECONDS (default 60; PARALLEL=1:
# all at once); a clang build in build-fuzz/, whose corpora grow from run to run.
SECONDS ?= 60
fuzz:
	@$(DEPS) fuzz
	@test -f build-fuzz/CMakeCache.txt || CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug \
	  -DBL_FUZZ=ON -DBL_SANITIZE=ON -DBL_BENCH=OFF -DBL_WITH_MPI=OFF -DBL_NATIVE=OFF $(ONNX_REQ) >/dev/null
	@cmake --build build-fuzz -j $(JOBS) --target fuzz
	@FUZZ_PARALLEL=$(if $(PARALLEL),1,0) tests/fuzz/run.sh build-fuzz $(SECONDS)

# The library, its headers, pkg-config file and CMake package, and the command, into PREFIX: a
# portable build of its own (build-install/, any x86-64; NATIVE=1 for -march=native).
PREFIX ?= /usr/local
install: deps
	@cmake -S . -B build-install -DCMAKE_BUILD_TYPE=Release -DBL_TESTS=OFF -DBL_BENCH=OFF \
	  -DBL_NATIVE=$(if $(NATIVE),ON,OFF) -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	@cmake --build build-install -j $(JOBS)
	@cmake --install build-install

demo: deps build
	@BUILD=$(BUILD) scripts/demo.sh

# Every experiment under experiments/: the quick profile (minutes each, results/quick/), or with
# FULL=1 the full one (results/<name>/, resumable: run it again after a stop).
repro: deps build
	@set -e; for e in experiments/e*.sh; do bash $$e $(if $(FULL),--full,--quick); done

# Reconfigures after installing the peers so a build dir made before libdnnl existed finds it.
bench:
	@$(DEPS) bench
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DBL_NATIVE=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)
	@$(BUILD)/bench_bn $(BENCH_ARGS)
	@$(BUILD)/bench_train

clean:
	rm -rf $(BUILD) build-asan build-fuzz build-install
