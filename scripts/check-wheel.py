"""Check a repaired wheel: its tags, and that it needs nothing from the system but libc.

Every shared object in the wheel may need only libc (and the dynamic loader) or
a library bundled in the wheel itself; the wheel is tagged cp39-abi3 and
manylinux_2_17 (or older); the extension exports only the C helper's interface
(``ctpy_*``, csrc/ctpy.h) and its module init, not the helper's internal
functions (csrc/ctpy_int.h).  Needs ``readelf`` (binutils).

Usage: python scripts/check-wheel.py dist/pyconntrack-*.whl
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile

SYSTEM = re.compile(r"^(libc\.so\.6|ld-linux[-\w.]*\.so\.\d|libpthread\.so\.0|libdl\.so\.2)$")
EXPORTED = re.compile(r"^(ctpy_\w+|PyInit__nfct)$")


def exports(obj: str) -> list:
    """The symbols a shared object defines for others (global or weak, not undefined)."""
    out = subprocess.run(["readelf", "-W", "--dyn-syms", obj], check=True, capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()]
    return [r[7] for r in rows if len(r) >= 8 and r[4] in ("GLOBAL", "WEAK") and r[6] != "UND"]


def main(path: str) -> None:
    name = os.path.basename(path)
    tags = name[:-4].split("-")[-3:]
    if tags[:2] != ["cp39", "abi3"] or "manylinux_2_17" not in tags[2]:
        sys.exit("check-wheel: %s: tags %s, expected cp39-abi3-...manylinux_2_17..." % (name, "-".join(tags)))
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(path) as z:
        z.extractall(tmp)
        objects = [os.path.join(d, f) for d, _, fs in os.walk(tmp) for f in fs if ".so" in f]
        bundled = {os.path.basename(o) for o in objects}
        for obj in sorted(objects):
            out = subprocess.run(["readelf", "-d", obj], check=True, capture_output=True, text=True).stdout
            needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
            outside = [n for n in needed if n not in bundled and not SYSTEM.match(n)]
            rel = os.path.relpath(obj, tmp)
            if outside:
                sys.exit("check-wheel: %s needs %s from the system" % (rel, ", ".join(outside)))
            if os.path.basename(obj).startswith("_nfct"):
                extra = [x for x in exports(obj) if not EXPORTED.match(x.split("@")[0])]
                if extra:
                    sys.exit("check-wheel: %s exports internal symbols: %s" % (rel, ", ".join(extra)))
            print("%s: needs %s" % (rel, ", ".join(needed)))
    print("%s: cp39-abi3, %s; nothing from the system but libc" % (name, tags[2]))


if __name__ == "__main__":
    for wheel in sys.argv[1:]:
        main(wheel)
