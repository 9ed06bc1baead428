"""The Prometheus metrics of one or more namespaces, from inside your own program."""

import sys
from typing import Optional, Sequence

from prometheus_client import CollectorRegistry, generate_latest

from conntrack.exporter import ConntrackCollector


def metrics(namespaces: Sequence[Optional[str]] = (None,)) -> str:
    registry = CollectorRegistry()  # or prometheus_client.REGISTRY, the default one
    registry.register(ConntrackCollector(namespaces))  # reads counters at every scrape; never dumps
    text = generate_latest(registry).decode()  # what GET /metrics would return
    for line in text.splitlines():
        if line.startswith(("conntrack_up{", "conntrack_nf_conntrack_entries{",
                            "conntrack_nf_conntrack_stat_drop_total{")):
            print(line)
    return text


if __name__ == "__main__":
    metrics(sys.argv[1:] or [None])
