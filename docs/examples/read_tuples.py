"""Read the addresses, ports and state of every flow: as Flow objects, and as plain rows."""

from collections import Counter
from typing import Tuple

from conntrack import Conntrack, Filter


def top_talkers(ct: Conntrack, n: int = 3) -> Counter:
    """Flows per (source, destination port), from Flow objects."""
    talkers: Counter = Counter()
    for f in ct.dump():
        o = f.orig
        talkers[o.src, o.dport] += 1
    for (src, dport), count in talkers.most_common(n):
        print(f"{src} -> port {dport}: {count} flows")
    return talkers


def established_rows(ct: Conntrack) -> "list[Tuple[int, int, int, int]]":
    """(src, dst, sport, dport) of ESTABLISHED TCP flows as plain tuples, addresses as ints."""
    rows = list(ct.dump_tuples(Filter(proto="tcp", state="ESTABLISHED"),
                               fields=("src", "dst", "sport", "dport"), addresses="int"))
    print(len(rows), "established TCP flows")
    return rows


if __name__ == "__main__":
    with Conntrack() as ct:
        top_talkers(ct)
        established_rows(ct)
