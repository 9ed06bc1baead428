"""Entries by protocol and TCP state, counted in C (no Python object per entry)."""

from conntrack import Conntrack, Filter, Summary


def summarize(ct: Conntrack) -> Summary:
    s = ct.summary()  # one dump, counted in C; takes a Filter like count()
    print(f"{s.total} entries, {s.unreplied} UNREPLIED, {s.assured} ASSURED")
    for proto, n in sorted(s.by_proto.items(), key=lambda item: -item[1]):
        print(f"{n:8d}  {proto.name}")
    for state, n in sorted(s.tcp_states.items(), key=lambda item: -item[1]):
        print(f"{n:8d}  tcp {state.name}")
    dns = ct.summary(Filter(dport=53))
    print(dns.total, "to port 53, of which", dns.unreplied, "UNREPLIED")
    return s


if __name__ == "__main__":
    with Conntrack() as ct:
        summarize(ct)
