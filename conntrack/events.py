"""Conntrack events: NEW, UPDATE and DESTROY as they happen (``conntrack -E``).

Each subscription has its own socket with a large receive buffer (set with
SO_RCVBUFFORCE).  The part of the filter that libnetfilter_conntrack's
event filter can express runs in the kernel as a socket BPF program; the C
layer checks the whole filter on every event that gets through.  A burst
that overflows the buffer is reported, not hidden: the stream yields an
``EventType.OVERFLOW`` event that says how many events were lost and goes
on; :meth:`EventStream.resync` then yields a fresh snapshot of the table.

One :class:`EventStream` serves both ``for`` and ``async for``.  The
asynchronous side never blocks the event loop and needs no thread: it reads
what is queued without waiting and, only when nothing is, waits for the
socket with ``loop.add_reader``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
import weakref
from dataclasses import dataclass
from typing import Any, Deque, Dict, Iterator, Optional

from . import _binding, _dump
from .enums import NamedIntFlag
from .flow import Flow, flow_at
from .plan import Plan

#: Receive buffer asked for an event socket: room for about 200,000 queued events.
DEFAULT_RCVBUF = 256 * 1024 * 1024

#: Longest time the blocking iterator spends in C before it looks at signals again.
_WAIT_SLICE = 0.5


class EventType(NamedIntFlag):
    """What happened to an entry."""

    NEW = _binding.EV_NEW
    """An entry was created."""
    UPDATE = _binding.EV_UPDATE
    """An entry changed (state, status, mark, ...)."""
    DESTROY = _binding.EV_DESTROY
    """An entry was deleted or expired (counters are final)."""
    SNAPSHOT = _binding.EV_SNAPSHOT
    """Not a kernel event: an entry as a resync dump read it."""
    SNAPSHOT_BEGIN = _binding.EV_SNAPSHOT_BEGIN
    """Not a kernel event: a resync snapshot starts (no flow)."""
    SNAPSHOT_END = _binding.EV_SNAPSHOT_END
    """Not a kernel event: the snapshot is complete (no flow)."""
    OVERFLOW = _binding.EV_OVERFLOW
    """Not an entry: the kernel dropped events because the receive buffer was full."""


ALL = EventType.NEW | EventType.UPDATE | EventType.DESTROY


@dataclass(frozen=True)
class Event:
    """One event: its type and the flow as the kernel reported it.

    ``flow`` is None for ``OVERFLOW``, ``SNAPSHOT_BEGIN`` and
    ``SNAPSHOT_END``.  ``lost`` is set on ``OVERFLOW`` only: the number of
    events the kernel dropped for this stream since the previous OVERFLOW
    (from the socket's SK_MEMINFO_DROPS counter; None if the kernel does not
    report it).  The kernel counts before the filter's C part, so they are
    events that passed the kernel-side part of the filter.
    """

    type: EventType
    flow: Optional[Flow]
    lost: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready values (:ref:`json`), what ``pyconntrack events --json`` prints: ``type``
        (its name) and the flow's :meth:`~conntrack.Flow.to_dict` keys, or ``type`` and ``lost``
        for an event without a flow."""
        if self.flow is None:
            return {"type": str(self.type), "lost": self.lost}
        return {"type": str(self.type), **self.flow.to_dict()}


_TYPES = {int(t): t for t in EventType}


class EventStream:
    """A subscription to a table's events; iterate it with ``for`` or ``async for``.

    Returned by :meth:`conntrack.Conntrack.events` and
    :meth:`conntrack.Conntrack.aevents`.  Use it as a context manager
    (``with`` or ``async with``) or call :meth:`close`.  Not thread-safe:
    one consumer at a time.
    """

    def __init__(self, sock: _binding.EventSocket, plan: Plan, netns_fd: Optional[int],
                 idle_timeout: Optional[float], resync: bool) -> None:
        self._sock = sock
        self._plan = plan
        self._idle = idle_timeout
        self._auto_resync = resync
        self._pending: Deque[Event] = collections.deque()
        self._snap: Optional[Iterator[_binding.Batch]] = None
        self._snap_wanted = False
        self._last = time.monotonic()
        self._waiting: Optional[Any] = None  # (loop, fd, future) while add_reader is registered
        self._netns_fd = netns_fd
        self._fd_finalizer = weakref.finalize(self, os.close, netns_fd) if netns_fd is not None else None
        self.lost: Optional[int] = 0
        """Events the kernel dropped for this stream so far (the sum of the
        OVERFLOW events' ``lost``; None once a count was unknown)."""
        self.overflows = 0
        """OVERFLOW events yielded so far."""

    # -- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Unsubscribe: remove a pending ``add_reader``, then close the socket.  Idempotent."""
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            loop, fd, fut = waiting
            loop.remove_reader(fd)
            if not fut.done():
                fut.cancel()
        snap, self._snap = self._snap, None
        if snap is not None:
            try:
                snap.close()  # type: ignore[attr-defined]
            except ValueError:  # a worker thread is inside it (a cancelled resync): its socket goes with it
                pass
        self._sock.close()
        if self._fd_finalizer is not None:
            self._fd_finalizer()
        self._pending.clear()

    @property
    def closed(self) -> bool:
        """True once the stream is closed (by :meth:`close` or after ``idle_timeout``)."""
        return self._sock.closed

    def fileno(self) -> int:
        """The event socket's descriptor: readable when events are queued in the kernel.

        Events may also wait in the stream's own buffer while the descriptor
        is not readable; read until the stream returns nothing before waiting
        on it.
        """
        return self._sock.fileno()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    # -- resync -----------------------------------------------------------------

    def resync(self) -> None:
        """Have the stream yield a snapshot of the table next.

        After the events already read, the stream yields ``SNAPSHOT_BEGIN``,
        one ``SNAPSHOT`` event per entry that matches the stream's filter
        (read by a dump on another socket), ``SNAPSHOT_END``, then the
        events that were queued meanwhile.  Events are received all along, so
        events that race the dump come after ``SNAPSHOT_END`` even if the
        dump already shows their effect: apply them by entry id on top of
        the snapshot (see the events documentation).
        """
        self._sock._p()
        self._snap_wanted = True

    def _snapshot_batches(self) -> Iterator[_binding.Batch]:
        plan = self._plan
        factory = _binding.Socket(self._netns_fd)
        try:
            yield from _dump.batches(factory.dump(plan.kernel, plan.user), prefetch=False)
        finally:
            factory.close()

    def _snapshot_step(self, batch: Optional[_binding.Batch]) -> None:
        if batch is None:
            self._snap = None
            self._pending.append(Event(EventType.SNAPSHOT_END, None))
            return
        snap = EventType.SNAPSHOT
        self._pending.extend(Event(snap, flow_at(batch, i)) for i in range(batch.n))

    def _snapshot_start(self) -> None:
        self._snap_wanted = False
        self._snap = self._snapshot_batches()
        self._pending.append(Event(EventType.SNAPSHOT_BEGIN, None))

    # -- reading ----------------------------------------------------------------

    def _read(self, timeout: float) -> bool:
        """One call into the C reader; True when it produced something."""
        got = self._sock.next(self._plan.user, int(timeout * 1000))
        pending = self._pending
        batch = got.batch
        for i, kind in enumerate(got.types):
            pending.append(Event(_TYPES[kind], flow_at(batch, i)))
        if got.overflows:  # the loss comes after this batch's events (see ctpy_events_next)
            lost = got.lost
            self.overflows += 1
            if lost is None or self.lost is None:
                self.lost = None
            else:
                self.lost += lost
            pending.append(Event(EventType.OVERFLOW, None, lost))
            if self._auto_resync:
                self._snap_wanted = True
        if got.types or got.overflows:
            self._last = time.monotonic()
            return True
        return False

    def _idle_left(self) -> Optional[float]:
        if self._idle is None:
            return None
        return max(0.0, self._idle - (time.monotonic() - self._last))

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self.closed:
                raise StopIteration
            if self._snap is not None:
                self._snapshot_step(next(self._snap, None))
                continue
            if self._snap_wanted:
                self._snapshot_start()
                continue
            left = self._idle_left()
            if self._read(_WAIT_SLICE if left is None else min(_WAIT_SLICE, left)):
                continue
            if left is not None and self._idle_left() == 0.0:
                self.close()
                raise StopIteration

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self.closed:
                raise StopAsyncIteration
            if self._snap is not None:
                # the dump blocks in recv(): one batch at a time in a worker thread
                self._snapshot_step(await asyncio.get_running_loop().run_in_executor(None, next, self._snap, None))
                continue
            if self._snap_wanted:
                self._snapshot_start()
                continue
            if self._read(0):  # drain without waiting: our buffer may hold events the fd does not show
                continue
            left = self._idle_left()
            if left == 0.0:
                self.close()
                raise StopAsyncIteration
            await self._readable(left)

    async def _readable(self, timeout: Optional[float]) -> None:
        """Wait until the socket is readable (or *timeout* passes).

        The reader is registered only for the wait: ``add_reader`` is
        level-triggered, and left registered it would spin the loop while
        the consumer is busy with the events already read.
        """
        loop = asyncio.get_running_loop()
        fd = self._sock.fileno()
        fut = loop.create_future()
        loop.add_reader(fd, _wake, fut)
        self._waiting = (loop, fd, fut)
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if self._waiting is not None and self._waiting[2] is fut:
                self._waiting = None
                loop.remove_reader(fd)


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def listen(netns_fd: Optional[int], plan: Plan, types: EventType, rcvbuf: int,
           idle_timeout: Optional[float], resync: bool = False) -> EventStream:
    """The event stream behind :meth:`conntrack.Conntrack.events`.

    Arguments are checked, the socket is subscribed and the kernel-side
    filter attached here, at the call: events from then on are queued even
    before the first ``next()``, and the namespace is the one ``netns_fd``
    names now (the stream keeps its own descriptor, for resync dumps).
    """
    if not types or types & ~ALL:
        raise ValueError("types: give NEW, UPDATE and/or DESTROY")
    if isinstance(rcvbuf, bool) or not isinstance(rcvbuf, int):
        raise TypeError("rcvbuf: expected a size in bytes, got %r" % (rcvbuf,))
    if not 0 < rcvbuf <= 0x7FFFFFFF:  # a C int in setsockopt
        raise ValueError("rcvbuf: %d is not a size in 1..2147483647" % rcvbuf)
    if idle_timeout is not None and not idle_timeout >= 0:  # NaN too
        raise ValueError("idle_timeout: %r is not a number of seconds >= 0" % idle_timeout)
    sock = _binding.EventSocket(netns_fd, int(types), rcvbuf)
    ns: Optional[int] = None
    try:
        if plan.events_bpf:
            sock.attach_bpf(plan.events_bpf)
        ns = os.dup(netns_fd) if netns_fd is not None else None
        return EventStream(sock, plan, ns, idle_timeout, resync)
    except BaseException:
        sock.close()
        if ns is not None:
            os.close(ns)
        raise

