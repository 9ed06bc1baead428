"""Create, read, change and delete one entry by hand (conntrack -I, -G, -U, -D)."""

from conntrack import Conntrack, Exists, Flow, NotFound


def flow_lifecycle(ct: Conntrack) -> Flow:
    flow = Flow(proto="udp", src="192.0.2.1", dst="198.51.100.7", sport=40000, dport=53,
                timeout=120, mark=1)  # the reply direction defaults to the inverse
    ct.create(flow)
    try:
        ct.create(flow)
    except Exists:
        print("already there")

    entry = ct.get(proto="udp", src="192.0.2.1", dst="198.51.100.7", sport=40000, dport=53)
    print(entry)
    print(entry.mark, entry.timeout, entry.unreplied, repr(entry.status))

    ct.update(entry, mark=2, timeout=30)  # only the values given are sent
    entry = ct.get(entry)
    print("mark is now", entry.mark)

    ct.delete(entry)  # pinned to this entry's kernel id
    try:
        ct.get(flow)
    except NotFound:
        print("gone")
    return entry


if __name__ == "__main__":
    with Conntrack() as ct:
        flow_lifecycle(ct)
