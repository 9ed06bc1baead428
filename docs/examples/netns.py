"""Work on another network namespace's table, like ``ip netns exec NAME conntrack -L``."""

import sys

from conntrack import Conntrack, Filter


def in_namespace(name: str) -> int:
    # A name under /run/netns, a path such as /proc/PID/ns/net, or an open fd.
    with Conntrack(name) as ct:
        total = ct.count()
        unreplied = ct.count(Filter(unreplied=True))
        print(f"{name}: {total} entries, {unreplied} UNREPLIED")
        return total


if __name__ == "__main__":
    in_namespace(sys.argv[1])
