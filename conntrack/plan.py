"""A compiled filter: which side checks what, as plain Python values.

:meth:`Filter.compile <conntrack.Filter.compile>` turns a filter into a
:class:`Plan` for one kernel.  Its parts say what the kernel is asked to
filter (:class:`KernelPart`), what the C layer checks on every record
(:class:`CheckPart`) and what an event socket's BPF program checks
(:class:`BPFPart`).  They hold Python values only (enums, addresses, ints);
``conntrack._binding`` alone turns them into the C structs it sends.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, NamedTuple, Optional, Tuple, Union

if TYPE_CHECKING:  # annotations only: enums takes its values from _binding, which imports this module
    from .enums import Family, Proto, State, Status, TCPState

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Masked = Tuple[int, int]
"""A (value, mask) pair: an entry matches when ``entry & mask == value``."""


class NatMatch(NamedTuple):
    """A NAT filter part: the translated address and port (None: any)."""

    addr: Optional[IPAddress] = None
    port: Optional[int] = None

    def __str__(self) -> str:
        addr = "" if self.addr is None else "[%s]" % self.addr if self.addr.version == 6 else str(self.addr)
        if self.port is None:
            return addr or "any"
        return "%s:%d" % (addr, self.port)


class _Part:
    """Shared by the parts: a repr of the fields that are set, and truth = some field is set."""

    def __repr__(self) -> str:
        shown = ("%s=%r" % (f.name, getattr(self, f.name)) for f in fields(self)  # type: ignore[arg-type]
                 if getattr(self, f.name) is not None)
        return "%s(%s)" % (type(self).__name__, ", ".join(shown))

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True, repr=False)
class TuplePart(_Part):
    """The exact parts of one direction's tuple the kernel compares (CTA_FILTER)."""

    proto: Optional[Proto] = None
    src: Optional[IPAddress] = None
    dst: Optional[IPAddress] = None
    sport: Optional[int] = None
    dport: Optional[int] = None


@dataclass(frozen=True, repr=False)
class KernelPart(_Part):
    """What a dump or flush request asks the kernel to filter.

    ``family`` goes in the request's header (None: every family); the rest
    are ctnetlink's filter attributes, sent only when set.
    """

    family: Optional[Family] = None
    mark: Optional[Masked] = None
    status: Optional[Masked] = None
    zone: Optional[int] = None
    orig: Optional[TuplePart] = None
    reply: Optional[TuplePart] = None


@dataclass(frozen=True)
class Selection:
    """What a filter selects, field by field: the one declaration of the
    filter's fields, shared by :class:`~conntrack.Filter` (its keywords, in
    the order of ``filter.FIELDS``; ``tests/test_filter_fields.py`` checks
    both against the constructor) and :class:`CheckPart`."""

    family: Optional[Family] = None
    proto: Optional[Proto] = None
    src: Optional[Network] = None
    dst: Optional[Network] = None
    reply_src: Optional[Network] = None
    reply_dst: Optional[Network] = None
    sport: Optional[Tuple[int, int]] = None
    dport: Optional[Tuple[int, int]] = None
    state: Optional[Tuple[State, ...]] = None
    status: Optional[Status] = None
    unreplied: Optional[bool] = None
    assured: Optional[bool] = None
    snat: Optional[bool] = None
    dnat: Optional[bool] = None
    mark: Optional[Masked] = None
    zone: Optional[int] = None
    labels: Optional[bytes] = None
    orig_zone: Optional[int] = None
    reply_zone: Optional[int] = None
    src_nat: Optional[NatMatch] = None
    dst_nat: Optional[NatMatch] = None
    any_nat: Optional[NatMatch] = None


@dataclass(frozen=True, repr=False)
class CheckPart(_Part, Selection):
    """What the C layer checks on every parsed record: the whole filter,
    each field that restricts anything.

    ``status_mask`` folds the filter's ``status`` bits and its
    ``unreplied``, ``assured``, ``snat`` and ``dnat`` flags into one
    (value, mask); those five fields stay None here.
    """

    status_mask: Optional[Masked] = None


@dataclass(frozen=True, repr=False)
class BPFPart(_Part):
    """What an event socket's BPF program (libnetfilter_conntrack's
    ``nfct_filter``) checks in the kernel; the C check still runs after it."""

    proto: Optional[Proto] = None
    state: Optional[Tuple[TCPState, ...]] = None
    src: Optional[Network] = None
    dst: Optional[Network] = None
    mark: Optional[Masked] = None
    zone: Optional[int] = None


@dataclass(frozen=True)
class Plan:
    """A filter compiled for one kernel: what each side evaluates.

    Made by :meth:`Filter.compile <conntrack.Filter.compile>`; its
    :meth:`explain` is what :meth:`Filter.explain <conntrack.Filter.explain>`
    prints.  The C check always runs on everything, so the kernel's parts
    only save work; ``flush_ok`` says whether a bulk delete may be one
    filtered flush (the kernel is sent the whole filter and honours it on
    flush) instead of a dump followed by deletes pinned by id.
    """

    kernel: KernelPart
    """Sent with dump and flush requests."""
    user: CheckPart
    """Checked in C on every record (and event)."""
    flush_ok: bool
    """A filtered flush deletes exactly what the filter matches."""
    events_bpf: BPFPart = BPFPart()
    """Checked by an event socket's BPF program in the kernel."""
    kernel_text: Tuple[str, ...] = field(default=(), repr=False)
    """The fields the kernel filters, as :meth:`explain` shows them."""
    user_text: Tuple[str, ...] = field(default=(), repr=False)
    """The fields only the C check decides."""
    events_bpf_text: Tuple[str, ...] = field(default=(), repr=False)
    """The fields an event socket's BPF program checks."""
    events_user_text: Tuple[str, ...] = field(default=(), repr=False)
    """The fields only the C check decides for events."""

    def explain(self, events: bool = False) -> str:
        """One line: what the kernel filters, what C checks, how a bulk delete
        runs (for an event stream with ``events=True``)."""
        if events:
            k = ", ".join(self.events_bpf_text) or "nothing"
            u = ", ".join(self.events_user_text) or "nothing more"
            return "events: kernel (socket BPF filter): %s; userspace (C, per event): %s" % (k, u)
        k = ", ".join(self.kernel_text) or "nothing"
        u = ", ".join(self.user_text) or "nothing more"
        how = "one filtered flush" if self.flush_ok else "dump, then batched deletes pinned by id"
        return "kernel: %s; userspace (C, per record): %s; bulk delete: %s" % (k, u, how)
