"""Build the private ``conntrack._nfct`` extension with cffi (API mode).

Declarations and the C helper source live in ``csrc/``: the public cdef in
``ctpy.h`` and ``constants.h``, the helper in one module per topic (MODULES
below), what the modules share in ``ctpy_int.h``.  This script only reads
them, checks that libnetfilter_conntrack and libmnl are there and new
enough, and hands everything to cffi, which compiles the modules as one
translation unit (each through an ``#include``, so diagnostics name the
module's own file and line).  Run directly (``python build_ffi.py``) to
build in place.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
HEADER = "libnetfilter_conntrack/libnetfilter_conntrack.h"
PKGS = ["libnetfilter_conntrack", "libmnl"]
# The C helper's modules, by topic (csrc/<name>.c).
MODULES = [
    "sock",        # the netlink socket, sending, the one receive loop (rx_next)
    "parse",       # the one-pass parser of conntrack messages into records
    "nfct",        # records <-> libnetfilter_conntrack: request building, the reference parser
    "match",       # the userspace filter (ctpy_match)
    "kfilter",     # the kernel-side filter attributes of dump and flush requests
    "dump",        # dumps: records, count, summary, top
    "top",         # the key table of top talkers
    "request",     # request/acknowledge, flush, batches
    "stats",       # global and per-CPU statistics
    "events",      # the event socket, its BPF filter, the event reader
    "crosscheck",  # the parser against libnetfilter_conntrack's (tests)
]
# The oldest releases supported: Debian 12's.  Neither library has a version
# macro for an #error in C, so pkg-config checks them before compiling.
MIN_VERSIONS = {"libnetfilter_conntrack": "1.0.9", "libmnl": "1.0.4"}
TOO_OLD = (
    "%s %s is too old: pyconntrack needs %s or newer (Debian 12's release; on an "
    "older system build the upstream release from netfilter.org)."
)
MISSING = (
    "libnetfilter_conntrack headers not found: install "
    "libnetfilter-conntrack-dev and libmnl-dev (Debian/Ubuntu) or "
    "libnetfilter_conntrack-devel and libmnl-devel (Fedora)."
)
MISSING_PY = (
    "Python's C headers (Python.h, pyconfig.h) not found in %s: install "
    "python3-dev (Debian/Ubuntu) or python3-devel (Fedora)."
)


def _read(name: str) -> str:
    with open(os.path.join(CSRC, name), encoding="utf-8") as f:
        return f.read()


def _pkgconfig(*args: str) -> str:
    try:
        out = subprocess.run(
            ["pkg-config", *args], check=True, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout.strip()


def _check_header() -> str:
    """The path of the header that the compiler will find first."""
    dirs = [p[2:] for p in _pkgconfig("--cflags-only-I", *PKGS).split()]
    dirs += ["/usr/include", "/usr/local/include"]
    found = [os.path.join(d, HEADER) for d in dirs if os.path.exists(os.path.join(d, HEADER))]
    if not found:
        sys.exit(MISSING)
    paths = sysconfig.get_paths()
    for header, key in (("Python.h", "include"), ("pyconfig.h", "platinclude")):
        if not os.path.exists(os.path.join(paths[key], header)):
            sys.exit(MISSING_PY % paths[key])
    return found[0]


def _check_versions() -> None:
    """Stop with one sentence when pkg-config finds a library older than MIN_VERSIONS."""
    for pkg, minimum in MIN_VERSIONS.items():
        found = _pkgconfig("--modversion", pkg)
        if not found:
            # No pkg-config, or no .pc file: the build falls back to plain -l flags.
            print("build_ffi.py: cannot check the version of %s (pkg-config does not know it); "
                  "%s or newer is needed" % (pkg, minimum), file=sys.stderr)
            continue
        if subprocess.run(["pkg-config", "--atleast-version", minimum, pkg]).returncode != 0:
            sys.exit(TOO_OLD % (pkg, found, minimum))


HEADER_PATH = _check_header()
_check_versions()
VERSION = _pkgconfig("--modversion", "libnetfilter_conntrack") or "unknown"
with open(HEADER_PATH, encoding="utf-8", errors="replace") as _h:
    _HEADER_TEXT = _h.read()
# Features of newer libnetfilter_conntrack versions, detected in the header
# (enum members, which the preprocessor cannot test).
FEATURES = {
    # event filter by zone (nfct_filter, 1.1.0)
    "CTPY_HAVE_NFCT_FILTER_ZONE": "NFCT_FILTER_ZONE" in _HEADER_TEXT,
}

ffibuilder = cffi.FFI()
ffibuilder.cdef(_read("constants.h"))
ffibuilder.cdef(_read("ctpy.h"))

source = "#define CTPY_NFCT_VERSION %s\n%s%s" % (
    '"' + VERSION.replace('"', "") + '"',
    "".join("#define %s 1\n" % name for name, on in FEATURES.items() if on),
    "".join('#include "%s.c"\n' % name for name in MODULES),
)
# `make test-asan`: CTPY_SANITIZE=address,undefined builds an instrumented
# extension into CTPY_BUILD_DIR (never over the in-place build).
SANITIZE = os.environ.get("CTPY_SANITIZE", "")
BUILD_DIR = os.environ.get("CTPY_BUILD_DIR", HERE)
cflags = ["-O2", "-Wall", "-Wno-unused-function"]
ldflags = []
if SANITIZE:
    cflags = ["-O1", "-g", "-Wall", "-Wno-unused-function", "-fno-omit-frame-pointer",
              "-fsanitize=" + SANITIZE, "-fno-sanitize-recover=all"]
    ldflags = ["-fsanitize=" + SANITIZE]
# The stable ABI of Python 3.9 (cffi would define an unversioned Py_LIMITED_API itself): the
# build fails if anything uses an API outside it, so the cp39-abi3 wheel tag stays true.
# Debug and free-threaded interpreters have no limited API.
LIMITED = not hasattr(sys, "gettotalrefcount") and not sysconfig.get_config_var("Py_GIL_DISABLED")
kwargs = dict(
    define_macros=[("Py_LIMITED_API", "0x03090000")] if LIMITED else [],
    include_dirs=[CSRC],
    depends=[os.path.join(CSRC, n) for n in ["ctpy.h", "ctpy_int.h", "constants.h"]
             + [m + ".c" for m in MODULES]],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)
try:
    ffibuilder.set_source_pkgconfig("conntrack._nfct", PKGS, source, **kwargs)
except cffi.PkgConfigError:
    ffibuilder.set_source(
        "conntrack._nfct",
        source,
        libraries=["netfilter_conntrack", "nfnetlink", "mnl"],
        **kwargs,
    )

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=BUILD_DIR, verbose=False)
