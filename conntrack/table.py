"""The table handle: :class:`Conntrack`.

One handle owns one ctnetlink socket in one network namespace.  Dumps and
counts open a socket of their own for their duration, so a dump can be
abandoned half-way, and entries can be deleted while a dump runs.
A handle is not safe to share between threads; open one per thread.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _binding
from .enums import Family, Proto, Status, TCPState, parse_family
from .errors import BulkDeleteError, ConntrackError, ConntrackOSError, from_errno
from .events import ALL as ALL_EVENTS
from .events import DEFAULT_RCVBUF, Event, EventType, listen
from .features import KernelFeatures
from .filter import Filter, Plan
from .flow import ROW_FIELDS, Flow, entry_fields, rows
from .netns import NetnsSpec, resolve


@dataclass(frozen=True)
class Summary:
    """Counts over the matching entries, from one dump counted in C."""

    total: int
    """Entries that match."""
    unreplied: int
    """Of those, entries without a reply (no SEEN_REPLY)."""
    assured: int
    """Of those, ASSURED entries."""
    by_proto: Dict[Proto, int]
    """Entries per layer-4 protocol (protocols with none are left out)."""
    tcp_states: Dict[TCPState, int]
    """TCP entries per state (states with none are left out)."""


@dataclass
class DeleteResult:
    """What a bulk delete did."""

    deleted: int = 0
    """Entries removed by this call."""
    vanished: int = 0
    """Matching entries that were gone before their delete arrived (normal on a live table)."""
    method: str = "batch"
    """``"flush"`` (one filtered flush in the kernel) or ``"batch"`` (dump, then deletes pinned by id)."""
    exact: bool = True
    """False when ``deleted`` is estimated from the table's entry counter (a kernel flush reports no count)."""
    dry_run: bool = False
    """True when nothing was deleted and ``matched`` lists what would have been."""
    matched: List[Flow] = field(default_factory=list)
    """With ``dry_run=True``: the flows that match."""


def _lookup_record(target: Union[Flow, Filter, None], kwargs: dict) -> Flow:
    if target is None:
        return Flow(**kwargs)
    if kwargs:
        raise TypeError("give either a Flow or keywords, not both")
    if not isinstance(target, Flow):
        raise TypeError("expected a Flow, got %r" % (target,))
    return target


class Conntrack:
    """A handle on one network namespace's conntrack table.

    ``netns`` is None (this process's namespace), a name under /run/netns,
    a path such as /proc/PID/ns/net, or an open file descriptor.  The
    socket is opened inside that namespace; the calling thread is always
    returned to its own.  Use as a context manager or call :meth:`close`.
    Not thread-safe.
    """

    def __init__(self, netns: NetnsSpec = None, *, features: Optional[KernelFeatures] = None) -> None:
        self._netns_fd = resolve(netns)
        try:
            self._sock = _binding.Socket(self._netns_fd)
        except BaseException:
            if self._netns_fd is not None:
                os.close(self._netns_fd)
            raise
        self.features = features if features is not None else KernelFeatures.detect()
        """The kernel-side filters this handle uses."""

    # -- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Close the socket (and the namespace descriptor).  Idempotent."""
        self._sock.close()
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._sock.closed

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------

    def _plan(self, flt: Optional[Filter], family: Any) -> Plan:
        if flt is None:
            flt = Filter()
        elif not isinstance(flt, Filter):
            raise TypeError("expected a Filter, got %r" % (flt,))
        if family is not None:
            fam = parse_family(family)
            if flt.family is not None and flt.family != fam:
                raise ValueError("family: %s contradicts the filter's %s" % (fam.name, flt.family.name))
            if flt.family is None:
                flt = Filter(family=fam, **_filter_kwargs(flt))
        return flt.compile(self.features)

    def dump(
        self,
        filter: Optional[Filter] = None,
        *,
        family: Union[str, int, Family, None] = None,
        where: Optional[Callable[[Flow], bool]] = None,
        prefetch: bool = True,
    ) -> Iterator[Flow]:
        """Stream the flows that match, in batches (memory bounded by a batch).

        ``where`` is an optional Python predicate applied last.  ``prefetch``
        reads the next batch in a second thread while you handle this one.
        """
        self._sock._p()
        plan = self._plan(filter, family)
        kf = _binding.kfilter(plan.kernel)
        uf = _binding.ufilter(plan.user)
        new = Flow.__new__
        for b in self._sock.dump(plan.family, kf, uf, prefetch):
            for i in range(b.n):
                f = new(Flow)
                f._b = b
                f._i = i
                if where is None or where(f):
                    yield f

    def dump_tuples(
        self,
        filter: Optional[Filter] = None,
        *,
        fields: Sequence[str] = ("src", "dst", "sport", "dport", "state"),
        family: Union[str, int, Family, None] = None,
        addresses: str = "object",
        prefetch: bool = True,
    ) -> Iterator[Tuple[Any, ...]]:
        """Stream plain tuples, one per matching flow, of the values named by
        ``fields``: ``family``, ``proto``, ``src``, ``dst``, ``sport``,
        ``dport``, ``reply_src``, ``reply_dst``, ``reply_sport``,
        ``reply_dport``, ``state``, ``status``, ``mark``, ``timeout``,
        ``zone``, ``id``.

        Each value is the one the object API gives (``src`` is
        ``flow.orig.src``, an :class:`ipaddress.IPv4Address` or
        :class:`~ipaddress.IPv6Address`; ``state`` is ``flow.state``), but no
        :class:`Flow` is made: the rows are assembled a batch at a time from
        the records' columns.  ``addresses="int"`` gives addresses as ints
        (``int(flow.orig.src)``) instead: no address object is built, which
        is most of the cost on tables with many distinct addresses.  For
        rows fed to a data frame, a log line or a set.
        """
        if addresses not in ("object", "int"):
            raise ValueError("addresses: expected 'object' or 'int', got %r" % (addresses,))
        names = tuple(fields)
        if isinstance(fields, str) or not names:
            raise ValueError("fields: give a non-empty sequence of field names")
        unknown = [name for name in names if name not in ROW_FIELDS]
        if unknown:
            raise ValueError("fields: unknown %s (known: %s)" % (", ".join(map(repr, unknown)), ", ".join(ROW_FIELDS)))
        self._sock._p()
        plan = self._plan(filter, family)
        kf = _binding.kfilter(plan.kernel)
        uf = _binding.ufilter(plan.user)
        for b in self._sock.dump(plan.family, kf, uf, prefetch):
            yield from rows(b, names, addresses == "int")

    def events(
        self,
        filter: Optional[Filter] = None,
        *,
        types: EventType = ALL_EVENTS,
        family: Union[str, int, Family, None] = None,
        rcvbuf: int = DEFAULT_RCVBUF,
        idle_timeout: Optional[float] = None,
    ) -> Iterator[Event]:
        """Follow the table's events (``conntrack -E``): :class:`~conntrack.events.Event`
        objects for NEW, UPDATE and DESTROY, filtered in C before Python sees them.

        The stream has its own socket (receive buffer ``rcvbuf``, forced with
        CAP_NET_ADMIN).  When the kernel drops events anyway it yields an
        ``EventType.OVERFLOW`` event and goes on; re-dump for a whole view.
        It ends after ``idle_timeout`` seconds without events (never by
        default) or when you stop iterating.  The subscription starts at this
        call.  The kernel sends no labels with DESTROY events, so those pass
        a labels filter.
        """
        self._sock._p()
        plan = self._plan(filter, family)
        return listen(self._netns_fd, plan, types, rcvbuf, idle_timeout)

    def count(self, filter: Optional[Filter] = None, *, family: Union[str, int, Family, None] = None) -> int:
        """Number of entries; with a filter, the number that match.

        Without a filter this asks the kernel's counter over netlink (no
        procfs); with one, the kernel and the C layer count without
        building any Python object.
        """
        if filter is None and family is None:
            return self._sock.global_stats()[0]
        plan = self._plan(filter, family)
        return self._sock.count(plan.family, _binding.kfilter(plan.kernel), _binding.ufilter(plan.user))

    def summary(self, filter: Optional[Filter] = None, *,
                family: Union[str, int, Family, None] = None) -> Summary:
        """Totals by protocol, TCP state and status from one dump, with no
        Python object per entry (what a monitoring scrape needs)."""
        plan = self._plan(filter, family)
        total, unreplied, assured, protos, states = self._sock.summary(
            plan.family, _binding.kfilter(plan.kernel), _binding.ufilter(plan.user))
        tcp_states: Dict[TCPState, int] = {}
        for value, n in states.items():
            try:
                tcp_states[TCPState(value)] = n
            except ValueError:  # a state newer than this build's headers
                continue
        return Summary(total, unreplied, assured, {Proto(k): n for k, n in protos.items()}, tcp_states)

    def get(self, flow: Optional[Flow] = None, **keywords: Any) -> Flow:
        """The current entry for a flow's original tuple (and zone).

        Raises :class:`conntrack.NotFound` when there is none.
        """
        f = _lookup_record(flow, keywords)
        out = self._sock.request(_binding.MSG_GET, 0, f._b, f._i, "get")
        if out is None:
            raise from_errno(2, "get: no entry returned")
        return Flow._from_batch(out, 0)

    # -- writing ----------------------------------------------------------------

    def create(self, flow: Flow) -> None:
        """Insert a new entry.  Raises :class:`conntrack.Exists` if it is there."""
        if not isinstance(flow, Flow):
            raise TypeError("create: expected a Flow, got %r" % (flow,))
        if flow.timeout is None:
            raise ValueError("timeout: required to create a flow")
        self._sock.request(_binding.MSG_NEW, _binding.F_CREATE_EXCL, flow._b, flow._i, "create")

    def update(
        self,
        flow: Flow,
        *,
        mark: Optional[int] = None,
        timeout: Optional[int] = None,
        status: Union[Status, int, str, None] = None,
        labels: Any = None,
    ) -> None:
        """Change an existing entry's mark, timeout, status bits or labels.

        Only the values given are sent.  Status bits can only be added (the
        kernel refuses to clear SEEN_REPLY, ASSURED or CONFIRMED).  Labels
        need connlabel storage in the namespace (a ruleset that uses
        ``ct label``); without it the kernel refuses them (ENOSPC) and drops
        them silently on create.
        Raises :class:`conntrack.NotFound` when the entry is gone.
        """
        if not isinstance(flow, Flow):
            raise TypeError("update: expected a Flow, got %r" % (flow,))
        present, fields = entry_fields(mark=mark, timeout=timeout, status=status, labels=labels)
        has = _binding.HAS
        if not present:
            raise ValueError("update: give at least one of mark, timeout, status, labels")
        b = _binding.single()
        orig = flow._b.tuple(flow._i, "orig")
        b.set_tuple(0, "orig", orig)
        # CTA_ZONE only for a zone of both directions: a reply-only zone
        # (zone-reply=N) is not part of the original tuple's lookup key
        if flow.zone and orig[10] is None and flow._b.tuple(flow._i, "reply")[10] is None:
            fields["zone"] = flow.zone
            present |= has["zone"]
        b.set_fields(0, present | has["orig"], fields)
        try:
            self._sock.request(_binding.MSG_NEW, 0, b, 0, "update")
        except ConntrackOSError as exc:
            if labels is not None and exc.errno == errno.ENOSPC:
                raise from_errno(errno.ENOSPC, "update: labels: this network namespace keeps no "
                                 "connlabels (load a ruleset that uses `ct label` first)") from None
            raise

    def delete(
        self,
        target: Union[Flow, Filter, None] = None,
        *,
        dry_run: bool = False,
        **keywords: Any,
    ) -> DeleteResult:
        """Delete one flow, or every flow a :class:`Filter` matches.

        A flow read from the kernel is deleted only if it is still the same
        entry (its id); a flow built by hand by its tuple and zone.  One
        flow that is gone raises :class:`conntrack.NotFound`.

        With a filter: one filtered flush when the kernel can express the
        whole filter, else a dump with the kernel-side part and batched
        deletes pinned to each entry's id.  Entries that vanish meanwhile are
        counted, not errors.  ``dry_run=True`` deletes nothing and returns
        the matching flows in ``matched``.
        """
        if isinstance(target, Filter):
            if keywords:
                raise TypeError("give either a Filter or keywords, not both")
            return self._bulk_delete(target, dry_run)
        f = _lookup_record(target, keywords)
        if dry_run:
            try:
                return DeleteResult(method="single", dry_run=True, matched=[self.get(f)])
            except FileNotFoundError:
                return DeleteResult(method="single", dry_run=True)
        self._sock.request(_binding.MSG_DELETE, 0, f._b, f._i, "delete")
        return DeleteResult(deleted=1, method="single")

    def _bulk_delete(self, flt: Filter, dry_run: bool) -> DeleteResult:
        plan = flt.compile(self.features)
        kf = _binding.kfilter(plan.kernel)
        uf = _binding.ufilter(plan.user)
        if dry_run:
            return DeleteResult(dry_run=True, method="flush" if plan.flush_ok else "batch",
                                matched=list(self.dump(flt)))
        if plan.flush_ok:
            before = self._sock.global_stats()[0]
            self._sock.flush(plan.family, kf)
            after = self._sock.global_stats()[0]
            return DeleteResult(deleted=max(before - after, 0), method="flush", exact=False)
        result = DeleteResult()
        for b in self._sock.dump(plan.family, kf, uf, prefetch=True):
            try:
                deleted, vanished, failed, err, index = self._sock.batch(_binding.MSG_DELETE, 0, b, pin_id=True)
            except OSError as broken:  # the socket failed part-way: say what was done
                raise BulkDeleteError(
                    "bulk delete stopped after %d deletions: %s" % (result.deleted, broken), result
                ) from broken
            result.deleted += deleted
            result.vanished += vanished
            if failed:
                flow = Flow._from_batch(b, index)
                exc = from_errno(err, "delete of %s" % flow)
                raise BulkDeleteError(
                    "bulk delete stopped after %d deletions: %s" % (result.deleted, exc), result
                ) from exc
        return result

    def flush(self, family: Union[str, int, Family, None] = None) -> DeleteResult:
        """Delete every entry (of one family when given).

        Unlike ``conntrack -F -f ipv4``, a per-family flush really spares
        the other family.
        """
        if family is None:
            before = self._sock.global_stats()[0]
            self._sock.flush(0, _binding.kfilter({}))
            after = self._sock.global_stats()[0]
            return DeleteResult(deleted=max(before - after, 0), method="flush", exact=False)
        return self._bulk_delete(Filter(family=family), dry_run=False)

    def create_many(self, flows: Iterable[Flow], *, chunk: int = 4096) -> int:
        """Insert many new entries, many requests per system call.

        Returns how many were created.  At the first refusal it raises the
        matching :class:`conntrack.ConntrackOSError` subclass (for example
        :class:`conntrack.Exists`), naming the flow; the rest of that chunk
        is still sent, entries created stay, and the exception's ``created``
        attribute says how many there are.
        """
        created = 0
        pending: List[Any] = []

        def send() -> None:
            nonlocal created
            b = _binding.gather(pending)
            pending.clear()
            try:
                done, _vanished, failed, err, index = self._sock.batch(
                    _binding.MSG_NEW, _binding.F_CREATE_EXCL, b, pin_id=False)
            except OSError as exc:
                exc.created = created  # type: ignore[attr-defined]
                raise
            created += done
            if failed:
                refusal = from_errno(err, "create of %s (after %d created)" % (Flow._from_batch(b, index), created))
                refusal.created = created  # type: ignore[attr-defined]
                raise refusal

        for f in flows:
            if not isinstance(f, Flow):
                raise TypeError("create_many: expected Flow objects, got %r" % (f,))
            if f.timeout is None:
                raise ValueError("timeout: required to create a flow (%s)" % f)
            pending.append((f._b, f._i))
            if len(pending) >= chunk:
                send()
        if pending:
            send()
        return created

    # -- statistics -------------------------------------------------------------

    def stats(self) -> List[Dict[str, int]]:
        """Per-CPU conntrack statistics over netlink (found, invalid, insert,
        insert_failed, drop, early_drop, error, search_restart,
        clash_resolve, chaintoolong), one dict per CPU with a ``cpu`` key."""
        return self._sock.cpu_stats()

    def limit(self) -> int:
        """The table's size limit as the kernel reports it (nf_conntrack_max)."""
        return self._sock.global_stats()[1]

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return "<Conntrack %s %s>" % (state, self.features)


def _filter_kwargs(flt: Filter) -> dict:
    """The keywords that rebuild *flt* (used to add a family)."""
    out: dict = {}
    for name in ("proto", "src", "dst", "reply_src", "reply_dst", "sport", "dport", "state",
                 "status", "unreplied", "assured", "snat", "dnat", "mark", "zone"):
        value = getattr(flt, name)
        if value is not None:
            out[name] = value
    if flt.labels is not None:
        out["labels"] = int.from_bytes(flt.labels, "little")
    return out


__all__ = ["Conntrack", "DeleteResult", "ConntrackError"]
