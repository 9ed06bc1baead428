"""Put the bundled C libraries' copyright files into a repaired wheel.

``auditwheel repair`` copies libnetfilter_conntrack, libnfnetlink and libmnl
into ``<name>.libs/``.  This finds, for each bundled library, the Debian
package it came from (dpkg), and adds to ``<dist-info>/licenses/bundled/``
that package's ``/usr/share/doc/<pkg>/copyright`` and a note naming the exact
package and source versions and where their source is.  METADATA gets a
``License-File`` line per file and RECORD is rewritten.

Usage: python scripts/wheel-licenses.py [--dir DIR] dist/pyconntrack-*.whl   (in place)
With ``--dir``, the files come from DIR instead (cibuildwheel: scripts/cibw-before-all.sh).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile


def dpkg(*args: str) -> str:
    return subprocess.run(["dpkg-query", *args], check=True, capture_output=True, text=True).stdout


def package_of(lib: str) -> str:
    """The runtime package that ships ``lib.so.N`` on this machine."""
    pkgs = {line.split(":")[0] for line in dpkg("-S", "*/%s.so.*" % lib).splitlines() if line}
    pkgs = {p for p in pkgs if not p.endswith("-dev")}
    if len(pkgs) != 1:
        sys.exit("wheel-licenses: %s comes from %s; expected exactly one package" % (lib, sorted(pkgs) or "none"))
    return pkgs.pop()


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (name, digest, len(data))


def from_dir(directory: str) -> dict[str, bytes]:
    """The licence files and README a cibuildwheel before-all step collected (no dpkg there)."""
    added = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            added["bundled/" + name] = f.read()
    if "bundled/README" not in added:
        sys.exit("wheel-licenses: %s has no README naming the bundled versions" % directory)
    return added


def from_dpkg(names: list[str]) -> dict[str, bytes]:
    """Each bundled library's Debian package: its copyright file and exact versions."""
    libs = sorted({re.sub(r"-[0-9a-f]{8}\.so.*$", "", os.path.basename(n))
                   for n in names if n.split("/")[0].endswith(".libs") and ".so" in n})
    if not libs:
        sys.exit("wheel-licenses: the wheel bundles no library (not repaired?)")
    added: dict[str, bytes] = {}
    note = ["This wheel bundles these shared libraries (in %s), built by Debian and copied"
            % next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".libs")),
            "from its packages by auditwheel. Their copyright and licence terms are the",
            "*.copyright files next to this note (libnetfilter_conntrack and libnfnetlink:",
            "GPL-2.0-or-later; libmnl: LGPL-2.1-or-later). Corresponding source: the Debian",
            "source package of the version named, from https://deb.debian.org/debian/pool/main/",
            "or https://snapshot.debian.org/, or upstream at https://netfilter.org/projects/.", ""]
    for lib in libs:
        pkg = package_of(lib)
        version, source, source_version = dpkg(
            "-W", "-f", "${Version}\t${source:Package}\t${source:Version}", pkg).split("\t")
        upstream = source_version.split(":")[-1].rsplit("-", 1)[0]
        pool = "https://deb.debian.org/debian/pool/main/%s/%s/" % (
            source[:4] if source.startswith("lib") else source[0], source)
        note.append("%s.so: %s %s upstream, Debian package %s %s (source package %s %s, %s)"
                    % (lib, lib, upstream, pkg, version, source, source_version, pool))
        with open("/usr/share/doc/%s/copyright" % pkg, "rb") as f:
            added["bundled/%s.copyright" % pkg] = f.read()
    # the copyright files point at /usr/share/common-licenses/, absent off Debian
    note += ["", "The GPL-2 text is ../LICENSE (this project's licence); the LGPL-2.1 text is LGPL-2.1."]
    with open("/usr/share/common-licenses/LGPL-2.1", "rb") as f:
        added["bundled/LGPL-2.1"] = f.read()
    added["bundled/README"] = ("\n".join(note) + "\n").encode()
    return added


def main(path: str, directory: str | None) -> None:
    with zipfile.ZipFile(path) as z:
        entries = [(i, z.read(i.filename)) for i in z.infolist()]
    names = [i.filename for i, _ in entries]
    distinfo = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    added = from_dir(directory) if directory else from_dpkg(names)

    out_entries = []
    record_name = "%s/RECORD" % distinfo
    for info, data in entries:
        if info.filename == record_name:
            continue
        if info.filename == "%s/METADATA" % distinfo:
            text = data.decode()
            head, sep, body = text.partition("\n\n")
            head += "".join("\nLicense-File: %s" % n for n in sorted(added))
            data = (head + sep + body).encode()
        out_entries.append((info, data))
    for name, data in sorted(added.items()):
        info = zipfile.ZipInfo("%s/licenses/%s" % (distinfo, name), date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        out_entries.append((info, data))
    record = "".join(record_line(i.filename, d) + "\n" for i, d in out_entries if not i.is_dir())
    record += record_name + ",,\n"

    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".whl")
    os.close(fd)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in out_entries:
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
        info = zipfile.ZipInfo(record_name, date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        z.writestr(info, record, zipfile.ZIP_DEFLATED)
    os.replace(tmp, path)
    os.chmod(path, 0o644)
    print("%s: added %s" % (os.path.basename(path), ", ".join(sorted(added))))


if __name__ == "__main__":
    args = sys.argv[1:]
    directory = None
    if args[:1] == ["--dir"]:
        directory, args = args[1], args[2:]
    for wheel in args:
        main(wheel, directory)
