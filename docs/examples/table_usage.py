"""How full is the table?  (nf_conntrack_count and nf_conntrack_max)"""

from conntrack import Conntrack


def table_usage(ct: Conntrack) -> float:
    entries = ct.count()  # the kernel's entry counter, over netlink
    limit = ct.limit()  # nf_conntrack_max as the kernel reports it
    print(f"{entries} of {limit} entries in use ({entries / limit:.1%})")
    return entries / limit


if __name__ == "__main__":
    with Conntrack() as ct:
        table_usage(ct)
