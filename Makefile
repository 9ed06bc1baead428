# Everything a fresh Debian machine needs: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
APT_PKGS := gcc pkg-config libnetfilter-conntrack-dev libmnl-dev iproute2 nftables conntrack
PY_PKGS  := "setuptools>=77" cffi pytest hypothesis sphinx ruff mypy prometheus_client

.PHONY: all sysdeps venv build test lint typecheck unit unit-oldest docs demo bench wheel compat-trixie test-kernels clean \
	test-asan test-valgrind

all: build

# System packages from Debian (needs root; CI runs as root).
sysdeps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PY) -c "import ensurepip" 2>/dev/null || missing="$$missing python3-venv"; \
	$(PY) -c "import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))" \
	  2>/dev/null || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.stamp: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(PY_PKGS)
	touch $@

venv: $(VENV)/.stamp

# Build the cffi extension in place (conntrack/_nfct*.so).
build: sysdeps venv
	$(VPY) build_ffi.py

lint: venv
	$(VPY) -m ruff check conntrack tests bench examples build_ffi.py setup.py

typecheck: build
	$(VPY) -m mypy

unit: build
	$(VPY) -m pytest tests

# The fallback paths on this kernel: the kernel-facing tests once more with the oldest kernels'
# features forced (no CTA_FILTER, no status or zone filter, no filtered flush); their expected
# results do not depend on the features.  The property tests compare both paths in every run already.
OLDEST_TESTS := tests/test_table.py tests/test_properties.py tests/test_reference.py tests/test_traffic.py \
                tests/test_docs_examples.py tests/test_features.py
unit-oldest: build
	CONNTRACK_FEATURES=oldest $(VPY) -m pytest -q -p no:cacheprovider -m "not hypothesis" \
	  -k "not events and not exporter" $(OLDEST_TESTS)

docs: build
	$(VPY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

test: build lint typecheck unit unit-oldest docs

demo: build
	$(VPY) examples/demo.py

# The parser fuzz test (no root) against an AddressSanitizer + UBSan build of
# the extension in $(ASAN_DIR); the in-place build is left alone.  Any report
# aborts the run (-fno-sanitize-recover, halt_on_error) and fails the target.
ASAN_DIR := build/asan
FUZZ_TESTS := tests/test_parser_fuzz.py
# Reports go to files: pytest captures the process's stderr, which a sanitizer
# that stops the process would take with it.
ASAN_ENV = env LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" PYTHONMALLOC=malloc \
	ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:log_path=$(CURDIR)/build/asan-report \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(CURDIR)/build/ubsan-report
test-asan: build
	rm -rf $(ASAN_DIR) build/asan-report.* build/ubsan-report.* && mkdir -p $(ASAN_DIR)/conntrack
	cp conntrack/*.py conntrack/py.typed $(ASAN_DIR)/conntrack/
	CTPY_SANITIZE=address,undefined CTPY_BUILD_DIR=$(ASAN_DIR) $(VPY) build_ffi.py
	cd $(ASAN_DIR) && $(ASAN_ENV) $(CURDIR)/$(VPY) -c "import conntrack._nfct as m; \
	  assert '$(ASAN_DIR)/' in m.__file__, m.__file__; print('sanitized build:', m.__file__)"
	cd $(ASAN_DIR) && $(ASAN_ENV) $(CURDIR)/$(VPY) -m pytest -q -p no:cacheprovider --rootdir=$(CURDIR) \
	  $(addprefix $(CURDIR)/,$(FUZZ_TESTS)); rc=$$?; cd $(CURDIR); \
	  if ls build/*san-report.* >/dev/null 2>&1; then \
	    cat build/*san-report.*; echo "sanitizer report (above)" >&2; exit 1; fi; \
	  exit $$rc

# The same fuzz test once under valgrind (fewer examples: valgrind is ~50x
# slower).  The interpreter reports errors of its own under memcheck; the
# check fails on any report with a frame in the extension or its libraries.
test-valgrind: build
	@command -v valgrind >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; } || \
	  { echo "need valgrind (apt-get install valgrind)" >&2; exit 1; }
	mkdir -p build
	PYTHONMALLOC=malloc CTPY_FUZZ_EXAMPLES=$${CTPY_FUZZ_EXAMPLES:-60} valgrind -q --log-file=build/valgrind.log \
	  --leak-check=no --track-origins=yes $(VPY) -m pytest -q -p no:cacheprovider $(FUZZ_TESTS)
	$(VPY) scripts/valgrind_check.py build/valgrind.log

# Needs root; pyroute2 is only a comparison point for the benchmark.
bench: build
	$(VPY) -c "import pyroute2" 2>/dev/null || $(VPY) -m pip install -q pyroute2
	$(VPY) bench/run.py $(BENCH_ARGS)

# Debian 13's libnetfilter_conntrack 1.1.0: build and run the core tests with it.
compat-trixie: build
	PY=$(VPY) bash scripts/compat-trixie.sh

# The suite under Debian's 5.10, 6.1 and 6.12 kernels in QEMU, one summary line per kernel (KVM when
# usable, else TCG: 10-25x slower).  KERNELS="6.1 path/to/linux-image-*.deb" picks others.  Not part of test.
test-kernels: build
	bash scripts/test-kernels.sh $(KERNELS)

wheel: sysdeps venv
	$(VPY) -m pip wheel --no-deps -q -w dist .

clean:
	rm -rf build dist docs/_build conntrack/_nfct.* .pytest_cache .mypy_cache .ruff_cache
