"""Conntrack events: NEW, UPDATE and DESTROY as they happen (``conntrack -E``).

Each subscription has its own socket with a large receive buffer (set with
SO_RCVBUFFORCE), events are parsed and filtered in C, and a burst that
overflows the buffer is reported, not hidden: the stream yields an
``EventType.OVERFLOW`` event and goes on.  After one, only a fresh dump
gives a whole view of the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Optional

from . import _binding
from .enums import NamedIntFlag
from .filter import Plan
from .flow import Flow

#: Receive buffer asked for an event socket: room for about 200,000 queued events.
DEFAULT_RCVBUF = 256 * 1024 * 1024


class EventType(NamedIntFlag):
    """What happened to an entry."""

    NEW = _binding.EV_NEW
    """An entry was created."""
    UPDATE = _binding.EV_UPDATE
    """An entry changed (state, status, mark, ...)."""
    DESTROY = _binding.EV_DESTROY
    """An entry was deleted or expired (counters are final)."""
    OVERFLOW = _binding.EV_OVERFLOW
    """Not an entry: the kernel dropped events because the receive buffer was full."""


ALL = EventType.NEW | EventType.UPDATE | EventType.DESTROY


@dataclass(frozen=True)
class Event:
    """One event: its type and the flow as the kernel reported it.

    ``flow`` is None only for ``EventType.OVERFLOW``.
    """

    type: EventType
    flow: Optional[Flow]


_TYPES = {int(t): t for t in EventType}


def listen(netns_fd: Optional[int], plan: Plan, types: EventType, rcvbuf: int,
           idle_timeout: Optional[float]) -> Iterator[Event]:
    """The event stream behind :meth:`conntrack.Conntrack.events`.

    Arguments are checked and the socket is subscribed here, at the call:
    events from then on are queued even before the first ``next()``, and
    the namespace is the one ``netns_fd`` names now (the handle may close it
    later).  A stream that is never iterated frees its socket when collected.
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
    return _stream(sock, _binding.ufilter(plan.user), idle_timeout)


def _stream(sock: _binding.EventSocket, uf: object, idle_timeout: Optional[float]) -> Iterator[Event]:
    try:
        last = time.monotonic()
        while True:
            wait = 0.5
            if idle_timeout is not None:
                wait = min(wait, max(0.0, idle_timeout - (time.monotonic() - last)))
            batch, kinds, overflows = sock.next(uf, int(wait * 1000))
            for i, kind in enumerate(kinds):
                yield Event(_TYPES[kind], Flow._from_batch(batch, i))
            if overflows:  # the loss comes after this batch's events (see ctpy_events_next)
                yield Event(EventType.OVERFLOW, None)
            now = time.monotonic()
            if kinds or overflows:
                last = now
            elif idle_timeout is not None and now - last >= idle_timeout:
                return
    finally:
        sock.close()
