"""List every entry, like ``conntrack -L``."""

from conntrack import Conntrack


def list_all(ct: Conntrack) -> int:
    n = 0
    for flow in ct.dump():  # streamed in batches, never the whole table in a list
        print(flow)  # the same one-line format as conntrack -L
        n += 1
    return n


if __name__ == "__main__":
    with Conntrack() as ct:
        list_all(ct)
