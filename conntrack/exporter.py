"""A Prometheus exporter for conntrack tables, one or many network namespaces.

As a collector in any prometheus_client registry::

    from prometheus_client import REGISTRY
    from conntrack.exporter import ConntrackCollector

    REGISTRY.register(ConntrackCollector(netns=[None, "blue"]))

Or on its own: ``python -m conntrack.exporter --port 9466 --netns blue``.

A scrape costs what node_exporter's costs: it never dumps a table.  It
asks the kernel over netlink for the entry count, the limit and the
per-CPU statistics, and reads ``nf_conntrack_buckets``.  (A dump walks
the kernel's one hash table, shared by every namespace: with millions of
entries elsewhere on the host, dumping a 300-entry namespace takes
seconds.)

The breakdown (entries by protocol and TCP state, UNREPLIED entries, the
top sources) needs a dump, so it is opt-in (``breakdown=True``,
``--breakdown``).  A background thread refreshes it every
``breakdown_interval`` seconds (default 60), one namespace after the
other, whether or not anyone scrapes; a scrape serves the last result and
never waits for a dump.  ``conntrack_breakdown_age_seconds`` says how old
the served result is; until the first refresh ends the breakdown series
are absent.

Names: by default node_exporter's conntrack names under the prefix
``conntrack_`` (``conntrack_nf_conntrack_entries``,
``conntrack_nf_conntrack_entries_limit``, the per-CPU statistics summed as
counters ``conntrack_nf_conntrack_stat_<name>_total``), each with a
``netns`` label.  With ``names="node"`` (``--node-names``) the shared
series carry node_exporter's own names and types, so dashboards and alerts
move over unchanged: gauges ``node_nf_conntrack_entries``,
``node_nf_conntrack_entries_limit`` and ``node_nf_conntrack_stat_found``,
``_invalid``, ``_ignore``, ``_insert``, ``_insert_failed``, ``_drop``,
``_early_drop``, ``_search_restart``, with no ``netns`` label when one
namespace is watched.  (The kernel stopped counting ``ignore``:
/proc/net/stat/nf_conntrack prints 0 for it, so node_exporter's series is 0
too.)  The rest (``conntrack_up``, the fill ratio, buckets, the breakdown)
keeps the ``conntrack_`` prefix.  A scrape only reads: it never changes a
table.

prometheus_client is an optional dependency: ``pip install 'pyconntrack[exporter]'``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import sysctl
from ._limits import fill, sum_cpus
from .cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from .enums import Proto, TCPState
from .errors import ConntrackError, MissingDependency
from .netns import NetnsSpec
from .table import Conntrack, Summary

PREFIX = "conntrack"
"""Prefix of every metric name."""
SELF = "self"
"""Namespace name meaning the exporter's own network namespace."""
NAMES = ("conntrack", "node")
"""Naming schemes: ours (``conntrack_*``) or node_exporter's (``node_nf_conntrack_*``)."""
NODE_STATS = ("found", "invalid", "ignore", "insert", "insert_failed", "drop", "early_drop", "search_restart")
"""The per-CPU statistics node_exporter exports (as ``node_nf_conntrack_stat_<name>`` gauges)."""
BREAKDOWN_INTERVAL = 60.0
"""Default seconds between two breakdown refreshes."""
TOP_SOURCES = 10
"""Default number of top sources in the breakdown."""

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


def _buckets() -> Optional[int]:
    """nf_conntrack_buckets: global (one hash table for every namespace), so read here."""
    try:
        with open(os.path.join("/", sysctl.SYSCTL_DIR, "nf_conntrack_buckets")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Breakdown:
    """One namespace's breakdown from one dump, as cached between refreshes."""

    taken: float
    """time.monotonic() when the dump ended."""
    duration: float
    """Seconds the dump took."""
    summary: Summary
    """Totals by protocol, TCP state, UNREPLIED."""
    top_sources: List[Tuple[str, int]]
    """The most frequent original sources and their entries."""


class _Refresher:
    """The background thread that keeps the breakdown of every namespace fresh."""

    def __init__(self, namespaces: Sequence[Tuple[str, NetnsSpec]], interval: float, top: int) -> None:
        self.namespaces = namespaces
        self.interval = interval
        self.top = top
        self.lock = threading.Lock()
        self.results: Dict[str, Breakdown] = {}
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conntrack-breakdown", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            for label, netns in self.namespaces:
                if self._stop.is_set():
                    return
                start = time.monotonic()
                try:
                    with Conntrack(netns) as ct:
                        top, summary = ct.top_and_summary("src", self.top)
                except (OSError, ValueError, ConntrackError) as exc:
                    log.warning("netns %s: breakdown: %s", label, exc)
                    with self.lock:
                        self.results.pop(label, None)  # never serve a stale breakdown as fresh
                    continue
                end = time.monotonic()
                b = Breakdown(end, end - start, summary, [(str(k), n) for k, n in top])
                with self.lock:
                    self.results[label] = b
            with self.lock:
                self.refreshes += 1
            if self._stop.wait(self.interval):
                return

    def get(self, label: str) -> Optional[Breakdown]:
        with self.lock:
            return self.results.get(label)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=0.1)  # a dump in progress finishes on its own; the thread is a daemon


class ConntrackCollector:
    """Collects conntrack metrics from each given namespace at every scrape.

    ``netns`` lists namespaces (None or ``"self"`` for this process's, a
    name under /run/netns, or a path); each gets a ``netns`` label value
    (``labels`` overrides them, one per namespace).  A scrape never dumps
    a table; ``breakdown=True`` starts a thread that dumps each namespace
    every ``breakdown_interval`` seconds, and scrapes serve its last
    result (with the ``top`` most frequent sources).  ``names="node"``
    uses node_exporter's metric names and types.  Thread-safe: each scrape
    opens its own handles and closes them.  :meth:`close` stops the thread.
    """

    def __init__(
        self,
        netns: Sequence[NetnsSpec] = (None,),
        *,
        breakdown: bool = False,
        breakdown_interval: float = BREAKDOWN_INTERVAL,
        top: int = TOP_SOURCES,
        names: str = "conntrack",
        prefix: str = PREFIX,
        labels: Optional[Sequence[str]] = None,
    ) -> None:
        _prom()  # fail at construction, not at the first scrape
        spaces: List[NetnsSpec] = [None if n == SELF else n for n in netns]
        if not spaces:
            raise ValueError("netns: give at least one namespace (None for this one)")
        if labels is not None and len(labels) != len(spaces):
            raise ValueError("labels: expected %d label values, got %d" % (len(spaces), len(labels)))
        if names not in NAMES:
            raise ValueError("names: expected one of %s, got %r" % (", ".join(NAMES), names))
        if not (isinstance(breakdown_interval, (int, float)) and 0 < breakdown_interval < float("inf")):
            raise ValueError("breakdown_interval: expected seconds > 0, got %r" % (breakdown_interval,))
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            raise ValueError("top: expected a number of sources >= 0, got %r" % (top,))
        self.namespaces: Tuple[Tuple[str, NetnsSpec], ...] = tuple(
            (labels[i] if labels is not None else _label(n), n) for i, n in enumerate(spaces)
        )
        label_values = [label for label, _ in self.namespaces]
        if len(set(label_values)) != len(label_values):
            raise ValueError("netns: duplicate namespace labels %r" % (label_values,))
        self.breakdown = breakdown
        self.names = names
        self.prefix = prefix
        self._refresher: Optional[_Refresher] = (
            _Refresher(self.namespaces, float(breakdown_interval), top or 1) if breakdown else None)
        self._top = top

    def close(self) -> None:
        """Stop the breakdown thread (if any).  Idempotent."""
        if self._refresher is not None:
            self._refresher.close()

    @property
    def breakdown_refreshes(self) -> int:
        """Completed breakdown refreshes of every namespace (0 without a breakdown)."""
        if self._refresher is None:
            return 0
        with self._refresher.lock:
            return self._refresher.refreshes

    # -- the families ----------------------------------------------------------

    def _families(self) -> Dict[str, Any]:
        core = _prom()
        p = self.prefix + "_nf_conntrack_"
        g = core.GaugeMetricFamily
        ns = ["netns"]
        node = self.names == "node"
        node_ns = ns if len(self.namespaces) > 1 else []
        fams = {
            "up": g(self.prefix + "_up", "1 when the namespace's table could be read at this scrape.", labels=ns),
            "duration": g(self.prefix + "_scrape_duration_seconds", "Time spent reading the namespace.", labels=ns),
            "entries": g("node_nf_conntrack_entries" if node else p + "entries",
                         "Number of currently allocated flow entries for connection tracking.",
                         labels=node_ns if node else ns),
            "limit": g("node_nf_conntrack_entries_limit" if node else p + "entries_limit",
                       "Maximum size of connection tracking table.", labels=node_ns if node else ns),
            "fill": g(p + "fill_ratio", "entries / entries_limit (0..1).", labels=ns),
            "buckets": g(p + "buckets", "Hash table size (nf_conntrack_buckets, global).", labels=ns),
            "stat": {},
        }
        if self.breakdown:
            fams.update({
                "unreplied": g(p + "unreplied_entries", "Entries without a reply seen ([UNREPLIED]), "
                               "from the last breakdown.", labels=ns),
                "proto": g(p + "entries_by_protocol", "Entries by layer-4 protocol, from the last breakdown.",
                           labels=ns + ["protocol"]),
                "tcp": g(p + "tcp_entries_by_state", "TCP entries by conntrack state, from the last breakdown.",
                         labels=ns + ["state"]),
                "top": g(p + "top_source_entries", "Entries of the most frequent original sources, "
                         "from the last breakdown.", labels=ns + ["src"]),
                "age": g(self.prefix + "_breakdown_age_seconds", "Seconds since the served breakdown's dump "
                         "ended.", labels=ns),
                "dump": g(self.prefix + "_breakdown_duration_seconds", "Seconds the breakdown's dump took.",
                          labels=ns),
            })
        return fams

    def describe(self) -> Iterator[Any]:
        """The metric families without samples (registering never reads a table)."""
        for key, fam in self._families().items():
            if key != "stat" and (key != "top" or self._top):
                yield fam

    # -- a scrape ----------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """Read every namespace (no dump) and yield the metric families."""
        core = _prom()
        fams = self._families()
        node = self.names == "node"
        several = len(self.namespaces) > 1
        stats: Dict[str, Any] = {}
        buckets = _buckets()
        for label, netns in self.namespaces:
            start = time.monotonic()
            try:
                with Conntrack(netns) as ct:
                    count, limit = ct.count(), ct.limit()
                    rows = ct.stats()
            except (OSError, ValueError, ConntrackError) as exc:
                fams["up"].add_metric([label], 0)
                fams["duration"].add_metric([label], time.monotonic() - start)
                log.warning("netns %s: %s", label, exc)
                continue
            totals = sum_cpus(rows)
            shared = [label] if several or not node else []
            fams["up"].add_metric([label], 1)
            fams["entries"].add_metric(shared, count)
            fams["limit"].add_metric(shared, limit)
            fams["fill"].add_metric([label], fill(count, limit))
            if buckets is not None:
                fams["buckets"].add_metric([label], buckets)
            if node:
                for name in NODE_STATS:
                    if name not in stats:
                        stats[name] = core.GaugeMetricFamily(
                            "node_nf_conntrack_stat_" + name,
                            "Per-CPU conntrack statistic %s, summed over CPUs (ctnetlink)." % name,
                            labels=["netns"] if several else [])
                    stats[name].add_metric(shared, totals.get(name, 0))  # ignore: the kernel no longer counts it
            else:
                for name, value in sorted(totals.items()):
                    if name not in stats:
                        stats[name] = core.CounterMetricFamily(
                            self.prefix + "_nf_conntrack_stat_" + name,
                            "Per-CPU conntrack statistic %s, summed over CPUs (ctnetlink)." % name,
                            labels=["netns"])
                    stats[name].add_metric([label], value)
            if self._refresher is not None:
                self._add_breakdown(fams, label, self._refresher.get(label))
            fams["duration"].add_metric([label], time.monotonic() - start)
        for key, fam in fams.items():
            if key != "stat" and (key != "top" or self._top):
                yield fam
        yield from stats.values()

    def _add_breakdown(self, fams: Dict[str, Any], label: str, b: Optional[Breakdown]) -> None:
        if b is None:
            return  # no refresh has finished yet (or the last one failed): no values rather than stale ones
        s = b.summary
        fams["age"].add_metric([label], time.monotonic() - b.taken)
        fams["dump"].add_metric([label], b.duration)
        fams["unreplied"].add_metric([label], s.unreplied)
        by_proto = {p.name: s.by_proto.get(p, 0) for p in (Proto.TCP, Proto.UDP, Proto.ICMP, Proto.ICMPV6)}
        by_proto.update({p.name: n for p, n in s.by_proto.items()})
        for proto, n in sorted(by_proto.items()):
            fams["proto"].add_metric([label, proto], n)
        for state in TCPState:
            fams["tcp"].add_metric([label, state.name], s.tcp_states.get(state, 0))
        for src, n in b.top_sources[:self._top]:
            fams["top"].add_metric([label, src], n)


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
    ap.add_argument("--breakdown", action="store_true",
                    help="also export entries by protocol and TCP state, UNREPLIED entries and the top sources; "
                         "they need a dump, taken by a background thread every --breakdown-interval seconds "
                         "(scrapes serve the last result and never wait for a dump)")
    ap.add_argument("--breakdown-interval", type=float, default=BREAKDOWN_INTERVAL, metavar="SECONDS",
                    help="seconds between two breakdown dumps (default %g)" % BREAKDOWN_INTERVAL)
    ap.add_argument("--top", type=int, default=TOP_SOURCES, metavar="N",
                    help="sources in the breakdown's top list (default %d; 0: none)" % TOP_SOURCES)
    ap.add_argument("--node-names", action="store_true",
                    help="export entries, limit and statistics under node_exporter's names and types "
                         "(node_nf_conntrack_*), so its dashboards and alerts work unchanged")
    ap.add_argument("--no-breakdown", action="store_true", help=argparse.SUPPRESS)  # the default now
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the exporter until interrupted."""
    args = _parser().parse_args(argv)
    if not 0 < args.port < 65536:
        print("--port: %d is not a TCP port" % args.port, file=sys.stderr)
        return EXIT_USAGE
    try:
        _prom()
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        collector = ConntrackCollector(args.netns or [SELF], breakdown=args.breakdown and not args.no_breakdown,
                                       breakdown_interval=args.breakdown_interval, top=args.top,
                                       names="node" if args.node_names else "conntrack")
        for _name, netns in collector.namespaces:
            if netns is not None:
                with Conntrack(netns):
                    pass  # a missing namespace is an error at start, not a silent 0 later
        registry.register(collector)
        start_http_server(args.port, addr=args.address, registry=registry)
    except (MissingDependency, OSError, ValueError) as exc:
        print("conntrack exporter: %s" % exc, file=sys.stderr)
        return EXIT_FAILURE
    names = ", ".join(label for label, _ in collector.namespaces)
    print("conntrack exporter: serving http://%s:%d/metrics for netns %s" % (args.address, args.port, names),
          file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
