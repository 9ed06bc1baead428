"""Conntrack events: NEW, UPDATE and DESTROY as they happen (``conntrack -E``).

Each subscription has its own socket with a large receive buffer (set with
SO_RCVBUFFORCE), events are parsed and filtered in C, and a burst that
overflows the buffer is reported, not hidden: the stream yields an
``EventType.OVERFLOW`` event and goes on.  After one, only a fresh dump
gives a whole view of the table.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Iterator, Optional

from . import _binding
from .filter import Plan
from .flow import Flow

#: Receive buffer asked for an event socket: room for about 200,000 queued events.
DEFAULT_RCVBUF = 256 * 1024 * 1024


class EventType(enum.IntFlag):
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
    """The event stream behind :meth:`conntrack.Conntrack.events`."""
    if not types or types & ~ALL:
        raise ValueError("types: give NEW, UPDATE and/or DESTROY")
    if rcvbuf <= 0:
        raise ValueError("rcvbuf: %d is not a positive size" % rcvbuf)
    if idle_timeout is not None and idle_timeout < 0:
        raise ValueError("idle_timeout: %r is negative" % idle_timeout)
    sock = _binding.EventSocket(netns_fd, int(types), rcvbuf)
    uf = _binding.ufilter(plan.user)
    try:
        last = time.monotonic()
        while True:
            wait = 0.5
            if idle_timeout is not None:
                wait = min(wait, max(0.0, idle_timeout - (time.monotonic() - last)))
            batch, kinds, overflows = sock.next(uf, int(wait * 1000))
            if overflows:
                yield Event(EventType.OVERFLOW, None)
            for i, kind in enumerate(kinds):
                yield Event(_TYPES[kind], Flow._from_batch(batch, i))
            now = time.monotonic()
            if kinds or overflows:
                last = now
            elif idle_timeout is not None and now - last >= idle_timeout:
                return
    finally:
        sock.close()
