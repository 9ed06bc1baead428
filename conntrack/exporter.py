"""A Prometheus exporter for conntrack tables, one or many network namespaces.

As a collector in any prometheus_client registry::

    from prometheus_client import REGISTRY
    from conntrack.exporter import ConntrackCollector

    REGISTRY.register(ConntrackCollector(netns=[None, "blue"]))

Or on its own: ``python -m conntrack.exporter --port 9466 --netns blue``.

Names follow node_exporter's conntrack collector under the prefix
``conntrack_``: ``conntrack_nf_conntrack_entries``,
``conntrack_nf_conntrack_entries_limit`` and the per-CPU statistics summed
as counters ``conntrack_nf_conntrack_stat_<name>_total``; every series has
a ``netns`` label.  Added: the fill ratio, entries by protocol and by TCP
state (one dump per scrape; turn off with ``breakdown=False`` on very large
tables), UNREPLIED entries (counted by the kernel and the C layer), and
``conntrack_up``.  A scrape only reads: it never changes a table.

prometheus_client is an optional dependency: ``pip install 'pyconntrack[exporter]'``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import sysctl
from .enums import Proto, TCPState
from .errors import MissingDependency
from .filter import Filter
from .netns import NetnsSpec
from .table import Conntrack

PREFIX = "conntrack"
"""Prefix of every metric name."""
SELF = "self"
"""Namespace name meaning the exporter's own network namespace."""

log = logging.getLogger(__name__)


def _prom() -> Any:
    """prometheus_client.core, or a clear error naming the extra to install."""
    try:
        import prometheus_client.core as core
    except ImportError as exc:
        raise MissingDependency(
            "the conntrack exporter needs prometheus_client: pip install 'pyconntrack[exporter]' "
            "(or pip install prometheus_client)"
        ) from exc
    return core


def _label(netns: NetnsSpec) -> str:
    if netns is None:
        try:
            return "init" if sysctl.is_init_netns() else SELF
        except OSError:
            return SELF
    if isinstance(netns, int):
        return "fd:%d" % netns
    return str(netns)


class ConntrackCollector:
    """Collects conntrack metrics from each given namespace at every scrape.

    ``netns`` lists namespaces (None or ``"self"`` for this process's, a
    name under /run/netns, or a path); each gets a ``netns`` label value
    (``labels`` overrides them, one per namespace).  Thread-safe: each
    scrape opens its own handles and closes them.
    """

    def __init__(
        self,
        netns: Sequence[NetnsSpec] = (None,),
        *,
        breakdown: bool = True,
        prefix: str = PREFIX,
        labels: Optional[Sequence[str]] = None,
    ) -> None:
        _prom()  # fail at construction, not at the first scrape
        spaces: List[NetnsSpec] = [None if n == SELF else n for n in netns]
        if not spaces:
            raise ValueError("netns: give at least one namespace (None for this one)")
        if labels is not None and len(labels) != len(spaces):
            raise ValueError("labels: expected %d label values, got %d" % (len(spaces), len(labels)))
        self.namespaces: Tuple[Tuple[str, NetnsSpec], ...] = tuple(
            (labels[i] if labels is not None else _label(n), n) for i, n in enumerate(spaces)
        )
        names = [label for label, _ in self.namespaces]
        if len(set(names)) != len(names):
            raise ValueError("netns: duplicate namespace labels %r" % (names,))
        self.breakdown = breakdown
        self.prefix = prefix

    # -- the families ----------------------------------------------------------

    def _families(self) -> Dict[str, Any]:
        core = _prom()
        p = self.prefix + "_nf_conntrack_"
        g = core.GaugeMetricFamily
        ns = ["netns"]
        return {
            "up": g(self.prefix + "_up", "1 when the namespace's table could be read at this scrape.", labels=ns),
            "duration": g(self.prefix + "_scrape_duration_seconds", "Time spent reading the namespace.", labels=ns),
            "entries": g(p + "entries", "Number of currently allocated flow entries for connection tracking.",
                         labels=ns),
            "limit": g(p + "entries_limit", "Maximum size of connection tracking table (nf_conntrack_max).",
                       labels=ns),
            "fill": g(p + "fill_ratio", "entries / entries_limit (0..1).", labels=ns),
            "buckets": g(p + "buckets", "Hash table size (nf_conntrack_buckets, global).", labels=ns),
            "unreplied": g(p + "unreplied_entries", "Entries without a reply seen ([UNREPLIED]).", labels=ns),
            "proto": g(p + "entries_by_protocol", "Entries by layer-4 protocol.", labels=ns + ["protocol"]),
            "tcp": g(p + "tcp_entries_by_state", "TCP entries by conntrack state.", labels=ns + ["state"]),
            "stat": {},
        }

    def describe(self) -> Iterator[Any]:
        """The metric families without samples (registering never reads a table)."""
        fams = self._families()
        for key, fam in fams.items():
            if key != "stat":
                if key in ("proto", "tcp") and not self.breakdown:
                    continue
                yield fam

    # -- a scrape ----------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """Read every namespace and yield the metric families."""
        core = _prom()
        fams = self._families()
        stats: Dict[str, Any] = {}
        for label, netns in self.namespaces:
            start = time.monotonic()
            try:
                values = self._read(netns)
            except (OSError, ValueError) as exc:
                fams["up"].add_metric([label], 0)
                fams["duration"].add_metric([label], time.monotonic() - start)
                log.warning("netns %s: %s", label, exc)
                continue
            count, limit, buckets, unreplied, totals, by_proto, by_state = values
            fams["up"].add_metric([label], 1)
            fams["entries"].add_metric([label], count)
            fams["limit"].add_metric([label], limit)
            fams["fill"].add_metric([label], count / limit if limit else 0.0)
            if buckets is not None:
                fams["buckets"].add_metric([label], buckets)
            fams["unreplied"].add_metric([label], unreplied)
            for name, value in sorted(totals.items()):
                if name not in stats:
                    stats[name] = core.CounterMetricFamily(
                        self.prefix + "_nf_conntrack_stat_" + name,
                        "Per-CPU conntrack statistic %s, summed over CPUs (ctnetlink)." % name,
                        labels=["netns"])
                stats[name].add_metric([label], value)
            for proto, n in sorted(by_proto.items()):
                fams["proto"].add_metric([label, proto], n)
            for state, n in sorted(by_state.items()):
                fams["tcp"].add_metric([label, state], n)
            fams["duration"].add_metric([label], time.monotonic() - start)
        for key, fam in fams.items():
            if key == "stat" or (key in ("proto", "tcp") and not self.breakdown):
                continue
            yield fam
        yield from stats.values()

    def _read(self, netns: NetnsSpec) -> Tuple[int, int, Optional[int], int, Dict[str, int],
                                               Dict[str, int], Dict[str, int]]:
        with Conntrack(netns) as ct:
            count, limit = ct.count(), ct.limit()
            totals: Dict[str, int] = {}
            for row in ct.stats():
                for k, v in row.items():
                    if k != "cpu":
                        totals[k] = totals.get(k, 0) + v
            by_proto: Dict[str, int] = {}
            by_state: Dict[str, int] = {}
            if self.breakdown:
                # one dump, counted in C: no Python object per entry
                summary = ct.summary()
                unreplied = summary.unreplied
                by_proto = {p.name: summary.by_proto.get(p, 0) for p in (Proto.tcp, Proto.udp, Proto.icmp, Proto.icmpv6)}
                by_proto.update({p.name: n for p, n in summary.by_proto.items()})
                by_state = {s.name: summary.tcp_states.get(s, 0) for s in TCPState}
            else:
                unreplied = ct.count(Filter(unreplied=True))
        try:
            buckets: Optional[int] = sysctl.read(netns=netns).buckets
        except (OSError, ValueError):
            buckets = None
        return count, limit, buckets, unreplied, totals, by_proto, by_state


# -- the command -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m conntrack.exporter",
        description="Serve conntrack metrics for Prometheus (reads only; never changes a table).")
    ap.add_argument("--port", type=int, default=9466, help="TCP port to listen on (default 9466)")
    ap.add_argument("--address", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    ap.add_argument("--netns", action="append", metavar="NAME",
                    help="network namespace to watch (a name under /run/netns or a path); repeat for more; "
                         "'self' is the exporter's own (the default when none is given)")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="skip the per-protocol and per-state counts (they need one dump per scrape)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the exporter until interrupted."""
    args = _parser().parse_args(argv)
    if not 0 < args.port < 65536:
        print("--port: %d is not a TCP port" % args.port, file=sys.stderr)
        return 2
    try:
        _prom()
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        collector = ConntrackCollector(args.netns or [SELF], breakdown=not args.no_breakdown)
        for _name, netns in collector.namespaces:
            if netns is not None:
                with Conntrack(netns):
                    pass  # a missing namespace is an error at start, not a silent 0 later
        registry.register(collector)
        start_http_server(args.port, addr=args.address, registry=registry)
    except (MissingDependency, OSError, ValueError) as exc:
        print("conntrack exporter: %s" % exc, file=sys.stderr)
        return 1
    names = ", ".join(label for label, _ in collector.namespaces)
    print("conntrack exporter: serving http://%s:%d/metrics for netns %s" % (args.address, args.port, names),
          file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
