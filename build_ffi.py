"""Build the private ``conntrack._nfct`` extension with cffi (API mode).

Declarations and the C helper source live in ``csrc/``; this script only
reads them, finds libnetfilter_conntrack and libmnl, and hands everything to
cffi.  Run directly (``python build_ffi.py``) to build in place.
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


HEADER_PATH = _check_header()
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
    _read("ctpy.c"),
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
    depends=[os.path.join(CSRC, n) for n in ("ctpy.c", "ctpy.h", "constants.h")],
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
