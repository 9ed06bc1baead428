"""Follow new and destroyed flows as they happen (conntrack -E), losses included."""

from collections import Counter

from conntrack import Conntrack, EventType, Filter


def follow(ct: Conntrack, idle: float = 1.0) -> Counter:
    seen: Counter = Counter()
    # NEW and DESTROY of UDP flows to port 53; filtered in C, never in Python
    for ev in ct.events(Filter(proto="udp", dport=53), types=EventType.NEW | EventType.DESTROY,
                        idle_timeout=idle):
        if ev.type == EventType.OVERFLOW:
            print("%s events were lost: stream.resync() for a whole view" % ev.lost)
        else:
            print(ev.type.name, ev.flow)
        seen[ev.type.name] += 1
    return seen


if __name__ == "__main__":
    with Conntrack() as ct:
        follow(ct, idle=10.0)
