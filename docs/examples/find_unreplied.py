"""Find the UNREPLIED entries, like ``conntrack -L | grep UNREPLIED``."""

from collections import Counter

from conntrack import Conntrack, Filter


def find_unreplied(ct: Conntrack) -> int:
    unreplied = Filter(unreplied=True)  # SEEN_REPLY not set
    total = ct.count(unreplied)  # counted in the kernel and C, no Python objects
    print(total, "UNREPLIED entries")
    by_dst: Counter = Counter()
    for flow in ct.dump(unreplied):
        by_dst[flow.orig.dst, flow.proto.name, flow.orig.dport] += 1
    for (dst, proto, dport), n in by_dst.most_common(5):
        print(f"{n:8d}  {proto} to {dst} port {dport}")
    return total


if __name__ == "__main__":
    with Conntrack() as ct:
        find_unreplied(ct)
