# shoal — `make demo` and `make test` work on a fresh machine: they create .venv, install
# what they need from PyPI, and (as root) the Debian packages the C++ tests need.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.shoal-deps
PYDEPS  := nanobind scikit-build-core cloudpickle numpy pandas psutil pytest pytest-timeout ninja cmake \
           joblib tqdm uvloop \
           mpich mpi4py
BUILD   := build/py
JOBS    ?= 2

.PHONY: all venv apt build cpp-tests test test-cpp test-python sanitize demo bench clean

all: build

$(STAMP): Makefile
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(PYDEPS)
	touch $(STAMP)

venv: $(STAMP)

# GoogleTest from Debian; installed only when missing, and only as root.
apt:
	@if [ ! -f /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake ] && [ ! -f /usr/lib/cmake/GTest/GTestConfig.cmake ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgtest-dev; \
	  else echo "libgtest-dev is missing: run 'sudo apt-get install libgtest-dev'"; exit 1; fi; fi

# The extension is built with CMake into build/py and copied next to the sources, so the
# tests and the demo run from src/ (`pip install .` builds the same thing into a wheel).
build: $(STAMP)
	$(VENV)/bin/cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DPython_EXECUTABLE=$(abspath $(VPY)) -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) >/dev/null
	$(VENV)/bin/cmake --build $(BUILD) -j $(JOBS)
	for f in $(BUILD)/_core*.so; do cp $$f src/shoal/.$$(basename $$f).tmp && mv -f src/shoal/.$$(basename $$f).tmp src/shoal/$$(basename $$f); done
	$(VPY) -m compileall -q src/shoal  # bytecode, as an installed package has (even with PYTHONDONTWRITEBYTECODE)

cpp-tests: $(STAMP) apt
	$(VENV)/bin/cmake -S . -B build/cpp -G Ninja -DSHOAL_BUILD_PYTHON=OFF -DSHOAL_BUILD_TESTS=ON \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) >/dev/null
	$(VENV)/bin/cmake --build build/cpp -j $(JOBS)

test-cpp: cpp-tests
	$(VENV)/bin/ctest --test-dir build/cpp --output-on-failure

# pytest exits 5 when it collected no test: that is a failure here.
test-python: build
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

demo: build
	PYTHONPATH=src $(VPY) -m shoal demo

bench: build
	$(VPY) -m pip install -q joblib mpire ray "dask[distributed]" matplotlib uvloop
	PYTHONPATH=src $(VPY) -m shoal bench --json benchmarks/results/results.json \
	  --markdown benchmarks/results/results.md --plot benchmarks/results/ratios.png

clean:
	rm -rf build src/shoal/_core*.so
