"""The table handle: :class:`Conntrack`.

One handle owns one ctnetlink socket in one network namespace.  Dumps and
counts open a socket of their own for their duration, so a dump can be
abandoned half-way, and entries can be deleted while a dump runs.
A handle belongs to the thread (and process) that opened it: using it from
another thread, or in a child after ``fork()``, raises
:class:`~conntrack.WrongOwner`; open one per thread.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
)

from . import _binding, _dump
from ._check import check_create, entry_fields, nat_bits, status_names
from ._limits import sum_cpus
from .enums import SETTABLE_STATUS, Family, Proto, Status, TCPState, parse_family, parse_status
from .errors import (
    BulkDeleteError,
    ConntrackError,
    ConntrackOSError,
    DeleteInterrupted,
    DumpInterrupted,
    HandleClosed,
    MatchesEverything,
    NotFound,
    Unsupported,
    WrongOwner,
    from_errno,
)
from .events import ALL as ALL_EVENTS
from .events import DEFAULT_RCVBUF, EventStream, EventType, listen
from .features import KernelFeatures
from .filter import Filter
from .flow import ROW_FIELDS, Flow, flow_at, flows_in, record_of, rows
from .netns import NetnsSpec, resolve
from .plan import KernelPart, Plan
from .top import By, Top, decode, parse_by


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

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready values (:ref:`json`); ``by_proto`` and ``tcp_states`` most frequent first."""
        return {
            "total": self.total, "unreplied": self.unreplied, "assured": self.assured,
            "by_proto": _by_count(self.by_proto), "tcp_states": _by_count(self.tcp_states),
        }


def _by_count(counts: Mapping[Any, int]) -> Dict[str, int]:
    """*counts* keyed by their ``str()``, most frequent first (ties by name)."""
    named = [(str(key), n) for key, n in counts.items()]
    return dict(sorted(named, key=lambda item: (-item[1], item[0])))


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
    """False when ``deleted`` is estimated from the table's entry counter (a kernel flush reports no count),
    or when the dump behind a batch delete was interrupted (``interrupted``)."""
    interrupted: bool = False
    """True when the kernel flagged the dump behind a batch delete as interrupted (``NLM_F_DUMP_INTR``:
    the table changed under it), so matching entries may have been missed.  Each delete was still
    pinned to an entry the filter selected."""
    dry_run: bool = False
    """True when nothing was deleted and ``matched`` lists what would have been."""
    matched: List[Flow] = field(default_factory=list)
    """With ``dry_run=True``: the flows that match."""

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready values (:ref:`json`); ``matched`` only for a dry run."""
        d: Dict[str, Any] = {"deleted": self.deleted, "vanished": self.vanished, "method": self.method,
                             "exact": self.exact, "dry_run": self.dry_run, "interrupted": self.interrupted}
        if self.dry_run:
            d["matched"] = [f.to_dict() for f in self.matched]
        return d


def _lookup_record(target: Union[Flow, Filter, None], kwargs: dict) -> Flow:
    if target is None:
        return Flow(**kwargs)
    if kwargs:
        raise TypeError("give either a Flow or keywords, not both")
    if not isinstance(target, Flow):
        raise TypeError("expected a Flow, got %r" % (target,))
    return target


_M = TypeVar("_M", bound=Callable[..., Any])


def _owned(method: _M) -> _M:
    """Run *method* only on an open handle, in its owner thread and process,
    holding the handle's lock (so close() from another thread waits for no one)."""

    @functools.wraps(method)
    def wrapper(self: Conntrack, *args: Any, **kwargs: Any) -> Any:
        self._check()
        with self._busy:
            try:
                return method(self, *args, **kwargs)
            finally:
                if self._close_pending:
                    self._close_now()

    return cast(_M, wrapper)


def _finalize(sock: _binding.Socket, netns_fd: Optional[int], text: str) -> None:
    """A handle was collected without close(): free its descriptors and say so."""
    sock.close()
    if netns_fd is not None:
        try:
            os.close(netns_fd)
        except OSError:
            pass
    warnings.warn("unclosed %s: close it or use `with`" % text, ResourceWarning, stacklevel=2)


class Conntrack:
    """A handle on one network namespace's conntrack table.

    ``netns`` is None (this process's namespace), a name under /run/netns,
    a path such as /proc/PID/ns/net, or an open file descriptor.  The
    socket is opened inside that namespace; the calling thread is always
    returned to its own.  Use as a context manager or call :meth:`close`;
    a handle collected unclosed is closed with a ``ResourceWarning``.

    The handle belongs to the thread that opened it: another thread, or a
    child process after ``fork()``, gets :class:`~conntrack.WrongOwner`
    (only :meth:`close` works from any thread).  Every request waits at
    most ``timeout`` seconds for the kernel's answer
    (:class:`~conntrack.TimedOut`); ``None`` waits forever.

    ``features`` are the kernel-side filters the handle may use; by default
    :meth:`KernelFeatures.default` (probed once per process, or what
    ``CONNTRACK_FEATURES`` names).
    """

    def __init__(self, netns: NetnsSpec = None, *, features: Optional[KernelFeatures] = None,
                 timeout: Optional[float] = _binding.TIMEOUT) -> None:
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 < timeout < 2**31 / 1000):
            raise ValueError("timeout: %r is not a number of seconds > 0 (or None)" % (timeout,))
        self._closed = True  # until the socket is open (a failed __init__ leaves a closed handle)
        self._close_pending = False
        self._netns_fd = resolve(netns)
        try:
            self._sock = _binding.Socket(self._netns_fd, timeout)
        except BaseException:
            if self._netns_fd is not None:
                os.close(self._netns_fd)
                self._netns_fd = None
            raise
        self._closed = False
        self._owner = threading.get_ident()
        self._pid = os.getpid()
        self._busy = threading.RLock()
        self._finalizer = weakref.finalize(self, _finalize, self._sock, self._netns_fd,
                                           "Conntrack handle (netns %r)" % (netns,))
        self._finalizer.atexit = False
        self.features = features if features is not None else KernelFeatures.default()
        """The kernel-side filters this handle uses."""

    # -- lifetime -------------------------------------------------------------

    def _check(self) -> None:
        if self._pid != os.getpid():
            raise WrongOwner("this Conntrack handle was opened in process %d; after fork() open a new "
                             "one in the child" % self._pid)
        if self._closed:
            raise HandleClosed("operation on a closed Conntrack handle")
        if self._owner != threading.get_ident():
            raise WrongOwner("this Conntrack handle belongs to the thread that opened it; "
                             "open one handle per thread")
        if self._close_pending:
            self._close_now()
            raise HandleClosed("operation on a closed Conntrack handle (closed from another thread)")

    def close(self) -> None:
        """Close the socket (and the namespace descriptor).  Idempotent.

        Works from any thread: while the owner thread is inside a call, the
        handle closes as soon as that call returns.
        """
        if self._closed:
            return
        if self._pid != os.getpid():  # a forked child: its copies of the descriptors only
            self._close_now()
            return
        if self._busy.acquire(blocking=False):
            try:
                self._close_now()
            finally:
                self._busy.release()
        else:
            self._close_pending = True

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_pending = False
        self._finalizer.detach()
        self._sock.close()
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None

    @property
    def netns_fd(self) -> Optional[int]:
        """The descriptor of the handle's network namespace (None: the caller's own)."""
        return self._netns_fd

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run (or was asked for from another thread)."""
        return self._closed or self._close_pending

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
                flt = flt.replace(family=fam)
        return flt.compile(self.features)

    @_owned
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
        The dump starts at this call.  If the kernel flags it as interrupted
        (the table changed under it), a :class:`~conntrack.errors.DumpInterrupted`
        warning follows the last flow.
        """
        plan = self._plan(filter, family)
        dump = self._sock.dump(plan.kernel, plan.user)
        return _flows(_dump.batches(dump, prefetch), where, dump)

    @_owned
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
        plan = self._plan(filter, family)
        dump = self._sock.dump(plan.kernel, plan.user)
        return _rows(_dump.batches(dump, prefetch), names, addresses == "int", dump)

    @_owned
    def events(
        self,
        filter: Optional[Filter] = None,
        *,
        types: EventType = ALL_EVENTS,
        family: Union[str, int, Family, None] = None,
        rcvbuf: int = DEFAULT_RCVBUF,
        idle_timeout: Optional[float] = None,
        resync: bool = False,
    ) -> EventStream:
        """Follow the table's events (``conntrack -E``): an
        :class:`~conntrack.events.EventStream` of :class:`~conntrack.events.Event`
        objects, iterated with ``for`` (blocking) or ``async for``.

        ``types`` picks the kernel's event groups: ask only for what you need
        (``EventType.NEW | EventType.DESTROY`` leaves out the UPDATE flood of
        every TCP state change).  The filter's protocol, TCP states, original
        addresses, mark (and zone with libnetfilter_conntrack 1.1) are checked
        in the kernel by a socket filter, the whole filter in C before Python
        sees an event (:meth:`Filter.explain(events=True) <conntrack.Filter.explain>`).

        The stream has its own socket (receive buffer ``rcvbuf``, forced with
        CAP_NET_ADMIN).  When the kernel drops events anyway it yields an
        ``EventType.OVERFLOW`` event whose ``lost`` says how many, and goes
        on; :meth:`~conntrack.events.EventStream.resync` (or ``resync=True``,
        after every overflow) then yields a snapshot of the matching entries.
        It ends after ``idle_timeout`` seconds without events (never by
        default) or when you close it.  The subscription starts at this
        call.  The kernel sends no labels with DESTROY events, so those pass
        a labels filter.
        """
        plan = self._plan(filter, family)
        return listen(self._netns_fd, plan, types, rcvbuf, idle_timeout, resync)

    def aevents(
        self,
        filter: Optional[Filter] = None,
        *,
        types: EventType = ALL_EVENTS,
        family: Union[str, int, Family, None] = None,
        rcvbuf: int = DEFAULT_RCVBUF,
        idle_timeout: Optional[float] = None,
        resync: bool = False,
    ) -> EventStream:
        """The same stream as :meth:`events`, spelled for asyncio::

            async with ct.aevents(Filter(dport=443), types=EventType.NEW | EventType.DESTROY) as stream:
                async for ev in stream:
                    ...

        ``async for`` never blocks the event loop and uses no thread (a
        resync's dump runs in the loop's default executor).  ``async with``
        removes the loop's reader before the socket closes.
        """
        return self.events(filter, types=types, family=family, rcvbuf=rcvbuf,
                           idle_timeout=idle_timeout, resync=resync)

    @_owned
    def count(self, filter: Optional[Filter] = None, *, family: Union[str, int, Family, None] = None) -> int:
        """Number of entries; with a filter, the number that match.

        Without a filter this asks the kernel's counter over netlink (no
        procfs); with one, the kernel and the C layer count without
        building any Python object.
        """
        if filter is None and family is None:
            return self._sock.global_stats().entries
        plan = self._plan(filter, family)
        counted = self._sock.count(plan.kernel, plan.user)
        if counted.interrupted:
            warnings.warn(DumpInterrupted("count: the kernel flagged the dump as interrupted; "
                                          "the count may be off"), stacklevel=3)
        return counted.entries

    @_owned
    def summary(self, filter: Optional[Filter] = None, *,
                family: Union[str, int, Family, None] = None) -> Summary:
        """Totals by protocol, TCP state and status from one dump, with no
        Python object per entry (what a monitoring scrape needs)."""
        plan = self._plan(filter, family)
        return _summary(self._sock.summary(plan.kernel, plan.user))

    def top(self, by: By = "src", n: Optional[int] = 20, filter: Optional[Filter] = None, *,
            family: Union[str, int, Family, None] = None) -> Top:
        """The *n* most frequent keys among the matching entries (all with
        ``n=None``), as ``(key, count)`` pairs, most frequent first.

        *by* is a field such as ``"src"``, ``"dport"``, ``"src/24"``, or a
        tuple such as ``("src", "dport")``; see :mod:`conntrack.top`.  One
        dump, counted in C in a hash table of distinct keys: no Python
        object per entry.
        """
        return self.top_and_summary(by, n, filter, family=family)[0]

    @_owned
    def top_and_summary(self, by: By = "src", n: Optional[int] = 20, filter: Optional[Filter] = None, *,
                        family: Union[str, int, Family, None] = None) -> Tuple[Top, Summary]:
        """:meth:`top` and :meth:`summary` from the same single dump."""
        names, parts = parse_by(by)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError("n: expected a positive number of keys or None, got %r" % (n,))
        plan = self._plan(filter, family)
        counts, summary = self._sock.top(plan.kernel, plan.user, parts, 2**31 - 1 if n is None else n)
        assert counts is not None
        return decode(names, parts, counts.rows, summary.total, counts.distinct), _summary(summary)

    @_owned
    def get(self, flow: Optional[Flow] = None, **keywords: Any) -> Flow:
        """The current entry for a flow's original tuple (and zone).

        Raises :class:`conntrack.NotFound` when there is none.
        """
        f = _lookup_record(flow, keywords)
        out = self._sock.request(_binding.MSG_GET, 0, *record_of(f), "get")
        if out is None:
            raise from_errno(errno.ENOENT, "get: no entry returned")
        return flow_at(out, 0)

    # -- writing ----------------------------------------------------------------

    @_owned
    def create(self, flow: Flow) -> None:
        """Insert a new entry.  Raises :class:`conntrack.Exists` if it is there.

        A reply tuple that is not the inverse of the original one makes a NAT
        entry (``conntrack -I --dst-nat/--src-nat``): the kernel translates it
        and sets DST_NAT/SRC_NAT.  Status bits: a create sets SEEN_REPLY,
        ASSURED, FIXED_TIMEOUT and HELPER; CONFIRMED and the NAT bits the tuples
        imply are the kernel's and accepted; any other bit raises ``ValueError``
        before anything is sent.  A flow with labels or NAT is read back: when
        the kernel dropped the labels (no connlabel storage in the namespace:
        ``ENOSPC``) or translated otherwise than asked (:class:`ConntrackError`),
        the new entry is deleted again and the call raises.
        """
        if not isinstance(flow, Flow):
            raise TypeError("create: expected a Flow, got %r" % (flow,))
        if flow.timeout is None:
            raise ValueError("timeout: required to create a flow")
        check_create(flow)
        _check_creatable(flow)
        try:
            self._sock.request(_binding.MSG_NEW, _binding.F_CREATE_EXCL, *record_of(flow), "create")
        except ConntrackOSError as exc:
            if exc.errno in (errno.ENOMEM, errno.ENOSPC):
                raise self._insert_refused(exc.errno, "create of %s" % flow) from None
            raise
        nat = nat_bits(flow)
        labels = flow.labels
        if not nat and not labels:
            return
        got = self.get(flow)
        problem: Optional[Exception] = None
        if labels and got.labels != labels:
            problem = from_errno(errno.ENOSPC, "create: labels: the kernel kept %s of %s: this network "
                                 "namespace keeps no connlabels (load a ruleset that uses `ct label` first)"
                                 % (sorted(got.labels), sorted(labels)))
        elif nat and (got.reply[:4] != flow.reply[:4] or got.status & nat != nat):
            problem = ConntrackError("create: asked for NAT to reply %s, the kernel made %s (status %s)"
                                     % (flow.reply, got.reply, status_names(got.status)))
        if problem is not None:
            try:  # pinned to the new entry's id: never another one
                self._sock.request(_binding.MSG_DELETE, 0, *record_of(got), "delete")
            except NotFound:
                pass
            raise problem

    def _insert_refused(self, err: int, what: str) -> OSError:
        """The error for a create the kernel refused for want of room, saying which room, with numbers."""
        try:
            stats = self._sock.global_stats()
            totals = sum_cpus(self._sock.cpu_stats())
        except OSError:
            return from_errno(err, what)
        return from_errno(err, insert_refused_text(err, what, stats.entries, stats.limit, totals, _buckets()))

    @_owned
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

        Only the values given are sent.  ``status`` adds bits, as ``conntrack -U
        -u`` does: the call reads the entry and sends its current bits OR the
        given ones (the kernel refuses a status that drops CONFIRMED, SEEN_REPLY
        or ASSURED).  Only SEEN_REPLY, ASSURED, FIXED_TIMEOUT and HELPER can be
        added; asking for another bit the entry does not have already raises
        ``ValueError`` (the kernel would ignore it).  Labels
        need connlabel storage in the namespace (a ruleset that uses
        ``ct label``); without it the kernel refuses them (ENOSPC; on create it
        drops them, and :meth:`create` raises).
        Raises :class:`conntrack.NotFound` when the entry is gone.
        """
        if not isinstance(flow, Flow):
            raise TypeError("update: expected a Flow, got %r" % (flow,))
        present, fields = entry_fields(mark=mark, timeout=timeout, status=status, labels=labels)
        has = _binding.HAS
        if not present:
            raise ValueError("update: give at least one of mark, timeout, status, labels")
        rec, i = record_of(flow)
        orig = rec.tuple(i, "orig")
        # CTA_ZONE only for a zone of both directions: a reply-only zone
        # (zone-reply=N) is not part of the original tuple's lookup key
        if flow.zone and orig.zone is None and flow.reply_zone is None:
            fields["zone"] = flow.zone
            present |= has["zone"]
        for attempt in range(3):
            if status is not None:
                current = int(self.get(flow).status)
                wanted = int(parse_status(status))
                bad = wanted & ~current & ~int(SETTABLE_STATUS)
                if bad:
                    raise ValueError("status: update can add only %s; the kernel would ignore %s"
                                     % (status_names(SETTABLE_STATUS), status_names(bad)))
                fields["status"] = current | wanted
            b = _binding.single()
            b.set_tuple(0, "orig", orig)
            b.set_fields(0, present | has["orig"], fields)
            try:
                self._sock.request(_binding.MSG_NEW, 0, b, 0, "update")
                return
            except ConntrackOSError as exc:
                if labels is not None and exc.errno == errno.ENOSPC:
                    raise from_errno(errno.ENOSPC, "update: labels: this network namespace keeps no "
                                     "connlabels (load a ruleset that uses `ct label` first)") from None
                # EBUSY: the entry gained a bit (SEEN_REPLY, ASSURED) since we read it
                if status is None or exc.errno != errno.EBUSY or attempt == 2:
                    raise

    @_owned
    def delete(
        self,
        target: Union[Flow, Filter, None] = None,
        *,
        dry_run: bool = False,
        all: bool = False,
        **keywords: Any,
    ) -> DeleteResult:
        """Delete one flow, or every flow a :class:`Filter` matches.

        A flow read from the kernel carries its entry id and is deleted only
        if an entry with that tuple and that id is there; a flow built by
        hand is deleted by its tuple and zone.  The id is a hash of the
        entry's kernel address and tuple: it tells an entry from a
        replacement that got different memory, not from one that reused the
        same memory (then the id is the same and the replacement is
        deleted).  One flow that is gone raises :class:`conntrack.NotFound`.

        With a filter: one filtered flush when the kernel can express the
        whole filter, else a dump with the kernel-side part and batched
        deletes pinned to each entry's id.  Entries that vanish meanwhile are
        counted, not errors.  ``dry_run=True`` deletes nothing and returns
        the matching flows in ``matched``.

        A filter that matches every entry (:attr:`Filter.matches_everything`,
        e.g. ``Filter()`` or ``mark="0/0"``) raises
        :class:`~conntrack.MatchesEverything` unless ``all=True``;
        ``delete(all=True)`` with no filter empties the table, as
        :meth:`flush` does.  Ctrl-C during a bulk delete raises
        :class:`~conntrack.DeleteInterrupted` (a ``KeyboardInterrupt``)
        whose ``result`` says what was deleted.
        """
        if all and not isinstance(all, bool):
            raise TypeError("all: expected True or False, got %r" % (all,))
        if target is None and not keywords and all:
            target = Filter()
        if isinstance(target, Filter):
            if keywords:
                raise TypeError("give either a Filter or keywords, not both")
            if target.matches_everything and not all:
                raise MatchesEverything(
                    "delete: %r matches every entry; pass all=True (or call flush()) to empty the table"
                    % (target,))
            if all and not target.matches_everything:
                raise ValueError("all=True: means every entry; leave it out to delete what the filter matches")
            return self._bulk_delete(target, dry_run)
        if all:
            raise ValueError("all=True: goes with no target (or a Filter), not with one flow")
        f = _lookup_record(target, keywords)
        if dry_run:
            try:
                return DeleteResult(method="single", dry_run=True, matched=[self.get(f)])
            except FileNotFoundError:
                return DeleteResult(method="single", dry_run=True)
        self._sock.request(_binding.MSG_DELETE, 0, *record_of(f), "delete")
        return DeleteResult(deleted=1, method="single")

    def _bulk_delete(self, flt: Filter, dry_run: bool) -> DeleteResult:
        plan = flt.compile(self.features)
        if dry_run:
            return DeleteResult(dry_run=True, method="flush" if plan.flush_ok else "batch",
                                matched=list(self.dump(flt)))
        if plan.flush_ok:
            return self._flush(plan.kernel)
        # Counts live in C memory filled by each batch call (a Tally allocated
        # before the call), so an interrupt at any point still finds them.
        tallies: List[_binding.Tally] = []
        dump: Optional[_binding.Dump] = None

        def so_far() -> DeleteResult:
            r = DeleteResult()
            for t in tallies:
                acks = t.values()
                r.deleted += acks.done
                r.vanished += acks.vanished
            if dump is not None and dump.interrupted:
                r.interrupted, r.exact = True, False
            return r

        try:
            dump = self._sock.dump(plan.kernel, plan.user)
            for b in _dump.batches(dump):
                tally = _binding.Tally()
                tallies.append(tally)
                try:
                    acks = self._sock.batch(_binding.MSG_DELETE, 0, b, pin_id=True, tally=tally)
                except OSError as broken:  # the socket failed part-way: say what was done
                    result = so_far()
                    result.exact = False  # a lost acknowledgement may be a deletion not counted
                    raise BulkDeleteError(
                        "bulk delete stopped after %d deletions: %s" % (result.deleted, broken), result
                    ) from broken
                if acks.failed:
                    result = so_far()
                    flow = flow_at(b, acks.first_failed)
                    exc = from_errno(acks.first_errno, "delete of %s" % flow)
                    raise BulkDeleteError(
                        "bulk delete stopped after %d deletions: %s" % (result.deleted, exc), result
                    ) from exc
        except KeyboardInterrupt as stop:
            result = so_far()
            raise DeleteInterrupted("bulk delete interrupted after %d deletions" % result.deleted,
                                    result) from stop
        return so_far()

    def _flush(self, kernel: KernelPart) -> DeleteResult:
        """One flush request; the count is the change of the entry counter."""
        before = None
        try:
            before = self._sock.global_stats().entries
            self._sock.flush(kernel)
            after = self._sock.global_stats().entries
        except KeyboardInterrupt as stop:
            result = DeleteResult(method="flush", exact=False)
            if before is not None:  # the flush itself is one kernel call: done, or not sent
                try:
                    result.deleted = max(before - self._sock.global_stats().entries, 0)
                except BaseException:
                    pass
            raise DeleteInterrupted("flush interrupted", result) from stop
        return DeleteResult(deleted=max(before - after, 0), method="flush", exact=False)

    @_owned
    def flush(self, family: Union[str, int, Family, None] = None) -> DeleteResult:
        """Delete every entry (of one family when given).

        Unlike ``conntrack -F -f ipv4``, a per-family flush really spares
        the other family.
        """
        if family is None:
            return self._flush(KernelPart())
        return self._bulk_delete(Filter(family=family), dry_run=False)

    @_owned
    def create_many(self, flows: Iterable[Flow], *, chunk: int = 4096) -> int:
        """Insert many new entries, many requests per system call.

        Returns how many were created.  Status bits and NAT follow
        :meth:`create`, but nothing is read back: use :meth:`create` for flows
        with labels.  At the first refusal it raises the
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
                acks = self._sock.batch(_binding.MSG_NEW, _binding.F_CREATE_EXCL, b, pin_id=False)
            except OSError as exc:
                exc.created = created  # type: ignore[attr-defined]
                raise
            created += acks.done
            if acks.failed:
                err = acks.first_errno
                what = "create of %s (after %d created)" % (flow_at(b, acks.first_failed), created)
                if err in (errno.ENOMEM, errno.ENOSPC):
                    refusal = self._insert_refused(err, what)
                else:
                    refusal = from_errno(err, what)
                refusal.created = created  # type: ignore[attr-defined]
                raise refusal

        for f in flows:
            if not isinstance(f, Flow):
                raise TypeError("create_many: expected Flow objects, got %r" % (f,))
            if f.timeout is None:
                raise ValueError("timeout: required to create a flow (%s)" % f)
            check_create(f)
            _check_creatable(f)
            pending.append(record_of(f))
            if len(pending) >= chunk:
                send()
        if pending:
            send()
        return created

    # -- statistics -------------------------------------------------------------

    @_owned
    def stats(self) -> List[Dict[str, int]]:
        """Per-CPU conntrack statistics over netlink (found, invalid, insert,
        insert_failed, drop, early_drop, error, search_restart,
        clash_resolve, chaintoolong), one dict per CPU with a ``cpu`` key."""
        return self._sock.cpu_stats()

    @_owned
    def limit(self) -> int:
        """The table's size limit as the kernel reports it (nf_conntrack_max)."""
        return self._sock.global_stats().limit

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return "<Conntrack %s %s>" % (state, self.features)


def _buckets() -> Optional[int]:
    """nf_conntrack_buckets (one hash table for every namespace, so readable from this one)."""
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_buckets") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def insert_refused_text(err: int, what: str, count: int, limit: int, totals: Dict[str, int],
                        buckets: Optional[int]) -> str:
    """What a create refused with ENOMEM or ENOSPC means, with the numbers and what to do.

    The kernel answers ENOMEM when the namespace's table is full (it also
    logs "nf_conntrack: table full, dropping packet" and drops new flows'
    packets meanwhile), and ENOSPC when the entry's hash bucket already
    holds too long a chain (statistic ``chaintoolong``): many entries, few
    buckets, and the bucket array is shared by every namespace.
    """
    stats = "chaintoolong %d, insert_failed %d, drop %d, early_drop %d in this namespace since it was made" % (
        totals.get("chaintoolong", 0), totals.get("insert_failed", 0), totals.get("drop", 0),
        totals.get("early_drop", 0))
    if err == errno.ENOSPC:
        return ("%s: no space: a hash chain is too long (the kernel refuses to grow one bucket's chain "
                "further; %s). %d entries here (limit %d); %s buckets for every namespace's entries. "
                "Raise the hash size (pyconntrack set-hashsize N, one bucket per entry keeps chains short) "
                "or delete entries (pyconntrack top shows who fills the table)"
                % (what, stats, count, limit, buckets if buckets is not None else "?"))
    if limit and count >= limit:
        return ("%s: the table is full: %d of %d entries (nf_conntrack_max); new flows are dropped too (%s). "
                "Raise the limit (pyconntrack set-max N from the host; pyconntrack limits --recommend) or "
                "delete entries (pyconntrack top shows who fills the table; pyconntrack delete --unreplied)"
                % (what, count, limit, stats))
    return "%s: out of memory (%d of %d entries; %s)" % (what, count, limit, stats)


def _summary(values: _binding.SummaryValues) -> Summary:
    tcp_states: Dict[TCPState, int] = {}
    for value, n in values.tcp_states.items():
        try:
            tcp_states[TCPState(value)] = n
        except ValueError:  # a state newer than this build's headers
            continue
    return Summary(values.total, values.unreplied, values.assured,
                   {Proto(k): n for k, n in values.by_proto.items()}, tcp_states)


_DCCP_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_dccp_timeout_open"


@functools.lru_cache(maxsize=1)
def dccp_keeps_ports() -> bool:
    """Whether the kernel tracks DCCP with ports.  Kernels from 6.16 dropped
    DCCP tracking: a DCCP entry is tracked like an unknown protocol, its ports
    are dropped on create (so a second flow between the same hosts is a
    duplicate).  The DCCP sysctls exist only while the kernel tracks DCCP."""
    return os.path.exists(_DCCP_SYSCTL)


def _check_creatable(flow: Flow) -> None:
    """Refuse what the kernel would silently drop from a new entry."""
    if flow.proto == Proto.dccp and not dccp_keeps_ports():
        ports = (flow.orig.sport, flow.orig.dport, flow.reply.sport, flow.reply.dport)
        if any(ports):
            raise Unsupported(errno.EOPNOTSUPP, "create: this kernel tracks DCCP without ports (DCCP tracking "
                              "was removed in 6.16), so ports %s would be dropped; give sport=0 and dport=0"
                              % "/".join(str(p or 0) for p in ports[:2]))


def _warn_if_interrupted(dump: _binding.Dump, stacklevel: int) -> None:
    if dump.interrupted:
        warnings.warn(DumpInterrupted("dump: the kernel flagged the dump as interrupted (the table changed "
                                      "under it); entries may be missing or repeated"), stacklevel=stacklevel + 1)


def _flows(batches: Iterator[_binding.Batch], where: Optional[Callable[[Flow], bool]],
           dump: _binding.Dump) -> Iterator[Flow]:
    # the warning's frame: this lambda, flows_in, then the caller's loop
    return flows_in(batches, where, lambda: _warn_if_interrupted(dump, 3))


def _rows(batches: Iterator[_binding.Batch], names: Tuple[str, ...], int_addresses: bool,
          dump: _binding.Dump) -> Iterator[Tuple[Any, ...]]:
    for b in batches:
        yield from rows(b, names, int_addresses)
    _warn_if_interrupted(dump, 2)


__all__ = ["Conntrack", "DeleteResult", "ConntrackError"]
