"""Is the conntrack table healthy?  Fill ratio, drop rates, the kernel log.

Take a sample now and another later; the second call gets per-second rates
of the counters that mean lost connections::

    import time
    from conntrack import health

    h = health.health()
    time.sleep(10)
    h = health.health(previous=h)
    print(h)            # "critical: 96.1% full (...); drop 14.2/s ..."
    if h.verdict is health.Verdict.CRITICAL: ...

Verdict: ``critical`` at 95% full or more, when packets were dropped or
entries evicted early between the two samples, or when the kernel logged
"table full" in the window; ``warning`` at 90% or more, or on insert
failures (races between CPUs inserting the same flow); else ``ok``.
Statistics come from ctnetlink; /proc/net/stat/nf_conntrack is read only
when that fails.  Nothing here changes the table.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import errno
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from . import sysctl
from ._json import plain
from ._limits import fill, sum_cpus
from .errors import ConntrackError, InvalidValue, NotLoaded
from .table import Conntrack

WARNING_FILL = 0.90
"""Fill ratio from which the verdict is at least ``warning``."""
CRITICAL_FILL = 0.95
"""Fill ratio from which the verdict is ``critical``."""
DROP_COUNTERS = ("drop", "early_drop", "insert_failed")
"""Counters whose rates a health check reports."""

# /proc/net/stat/nf_conntrack column names -> ctnetlink's names (the rest match).
_PROC_NAMES = {"clashres": "clash_resolve", "chainlength": "chaintoolong", "icmp_error": "error"}
TABLE_FULL_RE = re.compile(r"nf_conntrack: table full(?: in netns (\d+))?, dropping packet")
"""The kernel's message when a new flow finds the table full (newer kernels name the namespace)."""

Since = Union[None, float, _dt.datetime]


class Verdict(str, enum.Enum):
    """How worried to be: ``Verdict.OK``, ``WARNING`` or ``CRITICAL``.

    As for every enum of the package (see :mod:`conntrack.enums`), members
    are written in upper case; ``name``, ``str()`` and the value are the
    lower-case word (``"ok"``), so ``Verdict.ok`` is the member and
    ``Verdict.OK`` its alias.
    """

    ok = "ok"
    """Below 90% full, nothing lost."""
    warning = "warning"
    """90% full or more, or insert failures: act before it fills."""
    critical = "critical"
    """95% full or more, or new flows are being dropped."""

    OK = ok
    WARNING = warning
    CRITICAL = critical

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Sample:
    """One reading of a namespace's table: size and counters summed over CPUs."""

    monotonic: float
    """time.monotonic() when taken (rates use this)."""
    wall: float
    """time.time() when taken (the kernel log window uses this)."""
    count: int
    """Entries."""
    max: int
    """nf_conntrack_max."""
    totals: Mapping[str, int] = field(hash=False)
    """Per-CPU statistics summed (drop, early_drop, insert_failed, found, ...)."""
    source: str
    """``"netlink"`` or ``"procfs"`` (the fallback)."""
    netns_inode: Optional[int] = None
    """Inode of the sampled network namespace (names it in kernel log lines)."""
    init_netns: Optional[bool] = None
    """Whether that is the host's initial namespace (None: unknown)."""
    kmsg_seq: Optional[int] = None
    """Sequence number of the kernel log's last record when taken (None: log unreadable)."""

    @property
    def fill(self) -> float:
        """count / max (0.0 when the limit is 0, meaning none)."""
        return fill(self.count, self.max)


@dataclass(frozen=True)
class LogLine:
    """A "table full" message from the kernel log."""

    time: float
    """When it was logged (seconds since the epoch, from the boot-relative stamp; approximate)."""
    seq: int
    """The record's sequence number in the kernel log."""
    netns_inode: Optional[int]
    """The namespace it names; None when the message names none (the initial namespace)."""
    text: str
    """The message."""


@dataclass(frozen=True)
class Health:
    """A health verdict with the numbers behind it."""

    verdict: Verdict
    """ok, warning or critical."""
    reasons: Tuple[str, ...]
    """Why, with numbers; one item per finding."""
    count: int
    """Entries."""
    max: int
    """nf_conntrack_max."""
    fill: float
    """count / max."""
    interval: Optional[float]
    """Seconds between the previous sample and this one (None without a previous one)."""
    deltas: Optional[Mapping[str, int]] = field(hash=False)
    """Growth of drop, early_drop, insert_failed over the interval."""
    rates: Optional[Mapping[str, float]] = field(hash=False)
    """The same per second."""
    table_full: Optional[int]
    """"table full" lines for this namespace in the kernel log since the window start (None: not checked)."""
    log_lines: Tuple[LogLine, ...]
    """Those lines."""
    log_error: Optional[str]
    """Why the kernel log could not be read, if it could not."""
    since: Optional[float]
    """Start of the kernel log window (seconds since the epoch)."""
    sample: Sample
    """This reading; pass the Health (or this) as ``previous`` next time."""
    top_sources: Tuple[Tuple[Any, int], ...] = ()
    """At or above the warning fill only: the most frequent original sources and their
    entries (one dump, counted in C); empty otherwise."""

    def __str__(self) -> str:
        return "%s: %s" % (self.verdict, "; ".join(self.reasons))

    def to_dict(self) -> Dict[str, Any]:
        """The verdict and its numbers as JSON-ready values (:ref:`json`), what
        ``pyconntrack health --json`` prints: ``source`` is the sample's, the
        log lines, the window start and the sample itself are left out."""
        return {
            "verdict": plain(self.verdict), "reasons": list(self.reasons), "count": self.count, "max": self.max,
            "fill": self.fill, "interval": self.interval, "deltas": plain(self.deltas), "rates": plain(self.rates),
            "table_full": self.table_full, "source": self.sample.source,
            "top_sources": [[plain(key), count] for key, count in self.top_sources],
        }


# -- sampling ----------------------------------------------------------------------


def read_proc_stat(root: str = "/", *, netns: sysctl.NetnsSpec = None) -> List[Dict[str, int]]:
    """Per-CPU rows of /proc/net/stat/nf_conntrack with ctnetlink's key names (``cpu`` is the row)."""

    def get() -> List[Dict[str, int]]:
        for rel in ("proc/thread-self/net/stat/nf_conntrack", "proc/net/stat/nf_conntrack"):
            path = os.path.join(root, rel)
            try:
                with open(path) as f:
                    lines = f.read().splitlines()
                break
            except FileNotFoundError:
                continue
        else:
            raise NotLoaded.missing(os.path.join(root, "proc/net/stat/nf_conntrack"))
        names = [_PROC_NAMES.get(n, n) for n in lines[0].split()]
        rows = []
        for cpu, line in enumerate(lines[1:]):
            values = [int(v, 16) for v in line.split()]
            row = {n: v for n, v in zip(names, values) if n != "entries"}
            row["cpu"] = cpu
            rows.append(row)
        return rows

    return sysctl.in_netns(netns, get)


def _sum(rows: List[Dict[str, int]]) -> Dict[str, int]:
    out = sum_cpus(rows)
    for k in DROP_COUNTERS:
        out.setdefault(k, 0)
    return out


def _netns_identity(fd: Optional[int]) -> Tuple[Optional[int], Optional[bool]]:
    try:
        ino = os.fstat(fd).st_ino if fd is not None else os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return None, None
    try:
        return ino, sysctl.is_init_netns(fd)
    except (OSError, ConntrackError):
        return ino, None


def sample(ct: Optional[Conntrack] = None, root: str = "/") -> Sample:
    """Read size and counters of *ct*'s namespace (default: a handle on this one).

    *root* is used only by the procfs fallback.
    """
    own = ct is None
    handle = Conntrack() if ct is None else ct
    fd = handle.netns_fd
    try:
        try:
            count, limit = handle.count(), handle.limit()
        except (OSError, ConntrackError):
            u = sysctl.usage(root, netns=fd)
            count, limit = u.count, u.max
        try:
            rows, source = handle.stats(), "netlink"
        except (OSError, ConntrackError):
            rows, source = read_proc_stat(root, netns=fd), "procfs"
        ino, init = _netns_identity(fd)
    finally:
        if own:
            handle.close()
    try:
        seq: Optional[int] = _scan_kmsg(root)[1]
    except OSError:
        seq = None
    return Sample(time.monotonic(), time.time(), count, limit, _sum(rows), source, ino, init, seq)


# -- the kernel log --------------------------------------------------------------------------


def _epoch(since: Since) -> Optional[float]:
    if since is None:
        return None
    if isinstance(since, _dt.datetime):
        return since.timestamp()
    if isinstance(since, bool) or not isinstance(since, (int, float)):
        raise TypeError("since: expected a datetime or seconds since the epoch, got %r" % (since,))
    return float(since)


def _scan_kmsg(root: str) -> Tuple[List[LogLine], Optional[int]]:
    """Every "table full" record of <root>/dev/kmsg and the last record's sequence number."""
    offset = time.time() - time.monotonic()  # printk stamps count from boot like CLOCK_MONOTONIC
    fd = os.open(os.path.join(root, "dev/kmsg"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    out: List[LogLine] = []
    last: Optional[int] = None
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)  # the device hands out one record per read
            except BlockingIOError:
                break  # the end of the buffer
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # records were overwritten while we read; go on with the next
                raise
            if not chunk:
                break  # a regular file (a saved log) ends
            for raw in chunk.decode("utf-8", "replace").splitlines():
                if not raw or raw[0] == " ":
                    continue  # continuation lines (" KEY=value")
                head, sep, text = raw.partition(";")
                fields = head.split(",")
                try:
                    seq, usec = int(fields[1]), int(fields[2])
                except (IndexError, ValueError):
                    continue
                last = seq
                m = TABLE_FULL_RE.search(text) if sep else None
                if m is not None:
                    out.append(LogLine(usec / 1e6 + offset, seq, int(m.group(1)) if m.group(1) else None, text))
    finally:
        os.close(fd)
    return out, last


def table_full_messages(since: Since = None, root: str = "/", *, after_seq: Optional[int] = None,
                        upto_seq: Optional[int] = None) -> List[LogLine]:
    """"table full" lines in the kernel log (<root>/dev/kmsg), oldest first.

    Only those logged after *since* (a datetime or epoch seconds;
    approximate, as the log's clock may drift from the system's by
    milliseconds) and with a sequence number in (*after_seq*, *upto_seq*]
    (exact).  /dev/kmsg is read without blocking; it needs root (or
    kernel.dmesg_restrict=0).  The log is shared by every namespace.
    """
    start = _epoch(since)
    return [m for m in _scan_kmsg(root)[0]
            if (start is None or m.time >= start)
            and (after_seq is None or m.seq > after_seq)
            and (upto_seq is None or m.seq <= upto_seq)]


# -- the verdict ------------------------------------------------------------------------------


def health(
    ct: Optional[Conntrack] = None,
    previous: Union[Health, Sample, None] = None,
    since: Since = None,
    root: str = "/",
    *,
    interval: float = 0.0,
    top: int = 5,
) -> Health:
    """Judge *ct*'s table (default: this namespace's) now.

    ``previous`` (an earlier Health or Sample of the same namespace) gives
    rates; without one, ``interval`` > 0 takes two samples that far apart.
    The kernel log is checked from ``since`` (a datetime or epoch seconds),
    by default between the previous sample and this one; without either it
    is not checked.  When the table is at or above the warning fill, the
    verdict also names the ``top`` most frequent sources (one dump; only
    then, since a dump of a big table costs seconds; ``top=0``: never).
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise InvalidValue("top", "top: expected a number of sources >= 0, got %r" % (top,))
    prev: Optional[Sample] = previous.sample if isinstance(previous, Health) else previous
    if prev is not None and not isinstance(prev, Sample):
        raise TypeError("previous: expected a Health or a Sample, got %r" % (previous,))
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
        raise InvalidValue("interval", "interval: expected seconds >= 0, got %r" % (interval,))
    now = sample(ct, root)
    if prev is None and interval > 0:
        prev = now
        time.sleep(interval)
        now = sample(ct, root)
    if prev is not None and None not in (prev.netns_inode, now.netns_inode) \
            and prev.netns_inode != now.netns_inode:
        raise ValueError("previous: a sample of another network namespace")
    h = judge(now, prev, since, root)
    if top and h.fill >= WARNING_FILL:
        h = _with_top_sources(h, ct, top)
    return h


def _with_top_sources(h: Health, ct: Optional[Conntrack], n: int) -> Health:
    """*h* with the most frequent sources named (a failed dump leaves it as it was)."""
    try:
        if ct is not None:
            t = ct.top("src", n)
        else:
            with Conntrack() as own:
                t = own.top("src", n)
    except (OSError, ConntrackError):
        return h
    if not t:
        return h
    text = "top sources: %s" % ", ".join("%s %d" % (key, count) for key, count in t)
    return dataclasses.replace(h, reasons=h.reasons + (text,), top_sources=tuple(t))


def judge(now: Sample, prev: Optional[Sample] = None, since: Since = None, root: str = "/") -> Health:
    """The verdict for two samples already taken (see :func:`health`).

    The kernel log window: from *since* when given, else exactly the
    records logged between the two samples (by sequence number).
    """
    reasons: List[str] = []
    level = Verdict.OK
    fill = now.fill
    text = "%.1f%% full (%d of %d entries)" % (100 * fill, now.count, now.max)
    if fill >= CRITICAL_FILL:
        level = Verdict.CRITICAL
        reasons.append("%s, at or above %.0f%%" % (text, 100 * CRITICAL_FILL))
    elif fill >= WARNING_FILL:
        level = Verdict.WARNING
        reasons.append("%s, at or above %.0f%%" % (text, 100 * WARNING_FILL))
    else:
        reasons.append(text)

    deltas: Optional[Dict[str, int]] = None
    rates: Optional[Dict[str, float]] = None
    dt: Optional[float] = None
    if prev is not None:
        dt = now.monotonic - prev.monotonic
        deltas = {k: max(now.totals.get(k, 0) - prev.totals.get(k, 0), 0) for k in DROP_COUNTERS}
        rates = {k: (v / dt if dt > 0 else 0.0) for k, v in deltas.items()}
        lost = [k for k in ("drop", "early_drop") if deltas[k]]
        if lost:
            level = Verdict.CRITICAL
        for k in DROP_COUNTERS:
            if deltas[k]:
                reasons.append("%s +%d in %.1f s (%.1f/s)" % (k, deltas[k], dt, rates[k]))
        if deltas["insert_failed"] and level is Verdict.OK:
            level = Verdict.WARNING
        if not any(deltas.values()):
            reasons.append("no drops in %.1f s" % dt)
    else:
        reasons.append("rates not measured (no previous sample)")

    start = _epoch(since)
    after_seq: Optional[int] = None
    if start is None and prev is not None:
        start = prev.wall
        if prev.kmsg_seq is not None and now.kmsg_seq is not None:
            start, after_seq = None, prev.kmsg_seq
    lines: Tuple[LogLine, ...] = ()
    full: Optional[int] = None
    log_error: Optional[str] = None
    window = start if start is not None else (prev.wall if prev is not None else None)
    if window is not None:
        try:
            found = table_full_messages(start, root, after_seq=after_seq, upto_seq=now.kmsg_seq)
        except OSError as exc:
            log_error = "kernel log unreadable: %s" % exc
            reasons.append(log_error)
        else:
            lines = tuple(m for m in found if _ours(m, now))
            full = len(lines)
            if full:
                level = Verdict.CRITICAL
                reasons.append("%d 'table full, dropping packet' kernel message(s) since %s"
                               % (full, _dt.datetime.fromtimestamp(window).isoformat(timespec="seconds")))
    return Health(level, tuple(reasons), now.count, now.max, fill, dt, deltas, rates, full, lines,
                  log_error, window, now)


def _ours(line: LogLine, s: Sample) -> bool:
    """Whether a log line is about *s*'s namespace (lines naming none are the initial namespace's)."""
    if line.netns_inode is not None:
        return s.netns_inode is None or line.netns_inode == s.netns_inode
    return s.init_netns is not False


def as_dict(h: Health) -> Dict[str, Any]:
    """Deprecated: ``h.to_dict()`` (every result's JSON form is its ``to_dict()``)."""
    warnings.warn("health.as_dict(h) is deprecated: use h.to_dict()", DeprecationWarning, stacklevel=2)
    return h.to_dict()


__all__ = [
    "CRITICAL_FILL",
    "DROP_COUNTERS",
    "Health",
    "LogLine",
    "Sample",
    "Verdict",
    "WARNING_FILL",
    "as_dict",
    "health",
    "judge",
    "read_proc_stat",
    "sample",
    "table_full_messages",
]
