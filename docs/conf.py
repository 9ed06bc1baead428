"""Sphinx configuration for the conntrack documentation.

Build with ``make docs`` (warnings are errors).  The extension must be built
first (``make build``): autodoc imports the package.
"""

from __future__ import annotations

import os
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import conntrack  # noqa: E402

project = "conntrack"
author = "conntrack contributors"
copyright = "the conntrack contributors"
version = release = conntrack.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]

exclude_patterns = ["_build"]
html_theme = "furo"  # a wide content column: code lines and signatures are not cut
html_title = "conntrack %s" % release
html_static_path = ["_static"]
html_css_files = ["wrap-code.css"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
python_maximum_signature_line_length = 88
add_module_names = False

# -- intersphinx, offline ----------------------------------------------------
#
# The machines that build these docs have no network, and intersphinx warns
# (an error under -W) when it cannot fetch a remote objects.inv.  So the few
# standard-library names these pages link to are listed here and written as
# a local inventory at build time; the links still point at docs.python.org.

PYTHON_DOCS = "https://docs.python.org/3"
PYTHON_NAMES = {
    "py:exception library/exceptions.html#$": [
        "Exception", "OSError", "PermissionError", "FileNotFoundError",
        "FileExistsError", "ValueError", "TypeError",
    ],
    "py:attribute library/exceptions.html#$": ["OSError.errno", "OSError.strerror"],
    "py:class library/functions.html#$": ["int", "bool", "float"],
    "py:class library/stdtypes.html#$": [
        "str", "bytes", "dict", "list", "tuple", "frozenset", "range",
    ],
    "py:data library/constants.html#$": ["None", "True", "False"],
    "py:class library/ipaddress.html#$": [
        "ipaddress.IPv4Address", "ipaddress.IPv6Address",
        "ipaddress.IPv4Network", "ipaddress.IPv6Network",
    ],
    "py:class library/datetime.html#$": ["datetime.datetime"],
    "py:class library/enum.html#$": ["enum.IntEnum", "enum.IntFlag"],
    "py:class library/os.html#$": ["os.PathLike"],
    "py:class library/typing.html#$": ["typing.NamedTuple", "typing.Iterator", "typing.Iterable"],
    "py:data library/typing.html#$": ["typing.Optional", "typing.Union", "typing.Any", "typing.Callable"],
    "py:class library/collections.abc.html#$": [
        "collections.abc.Iterator", "collections.abc.Iterable", "collections.abc.Callable",
    ],
    "py:class library/threading.html#$": ["threading.Thread"],
}


def _python_inventory() -> str:
    path = os.path.join(HERE, "_build", "python-objects.inv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = []
    for kind, names in PYTHON_NAMES.items():
        role, uri = kind.split()
        lines += ["%s %s 1 %s -" % (name, role, uri) for name in names]
    header = (
        "# Sphinx inventory version 2\n"
        "# Project: Python\n"
        "# Version: 3\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode())
        f.write(zlib.compress(("\n".join(lines) + "\n").encode()))
    return path


intersphinx_mapping = {"python": (PYTHON_DOCS, _python_inventory())}
intersphinx_timeout = 5
