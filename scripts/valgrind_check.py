"""Fail on valgrind errors that touch the extension or the libraries under it.

The interpreter (a CPython built without --with-valgrind) reports errors of
its own under memcheck (int.from_bytes, the PEG parser); those are counted
and shown by their top frame, not failed on.  Any error with a frame in the
cffi extension, the cffi backend, libnetfilter_conntrack, libnfnetlink or
libmnl fails the check.
"""

from __future__ import annotations

import collections
import re
import sys

OURS = re.compile(r"_nfct|_cffi_backend|libnetfilter_conntrack|libnfnetlink|libmnl|ctpy_|parse_fast")


def main(path: str) -> int:
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    blocks, cur = [], []
    for line in lines:
        m = re.match(r"==\d+== ?(.*)", line)
        if not m:
            continue
        text = m.group(1)
        if not text.strip():
            if cur:
                blocks.append(cur)
            cur = []
        else:
            cur.append(text)
    if cur:
        blocks.append(cur)
    errors = [b for b in blocks if b and not b[0].startswith(("Memcheck", "Copyright", "Using", "Command"))]
    ours = [b for b in errors if any(OURS.search(x) for x in b)]
    other = collections.Counter(next((x.strip() for x in b[1:] if x.strip().startswith("at ")), b[0]) for b in errors
                                if b not in ours)
    print("valgrind: %d error reports, %d in the extension or its libraries" % (len(errors), len(ours)))
    for where, n in other.most_common():
        print("  interpreter (not ours), %d x: %s" % (n, where))
    for b in ours:
        print("\n".join(b), file=sys.stderr)
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
