"""Is the table dropping packets?  (the per-CPU counters behind the
"nf_conntrack: table full, dropping packet" message)"""

from typing import Dict

from conntrack import Conntrack


def drops(ct: Conntrack) -> Dict[str, int]:
    totals = {"drop": 0, "early_drop": 0, "insert_failed": 0}
    for cpu in ct.stats():  # one dict per CPU
        for name in totals:
            totals[name] += cpu[name]
    print(", ".join(f"{name}={value}" for name, value in totals.items()))
    return totals


if __name__ == "__main__":
    with Conntrack() as ct:
        drops(ct)
