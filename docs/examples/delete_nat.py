"""Delete the entries still source-NATed to an old address, like
``conntrack -D --src-nat OLD``."""

import sys

from conntrack import Conntrack, Filter


def delete_nat(ct: Conntrack, old: str) -> int:
    stale = Filter(src_nat=old)  # replies go back to OLD: translated to OLD on the way out
    print(ct.count(stale), "entries NATed to", old)
    result = ct.delete(stale)  # the kernel cannot filter by NAT: a dump, then deletes pinned by id
    print("deleted", result.deleted, "by", result.method)
    return result.deleted


if __name__ == "__main__":
    with Conntrack() as ct:
        delete_nat(ct, sys.argv[1] if len(sys.argv) > 1 else "192.0.2.1")
