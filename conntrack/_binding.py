"""The one layer that touches ``ffi`` and ``lib``.

Everything above this module works with plain Python values.  Here live:
sockets (one ``struct ctpy_sock`` each, opened inside a network namespace
when asked), batches of flat records written by the C dump loop, the
conversion of a filter's plan (:mod:`conntrack.plan`) into C structs, and
the errno funnel.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from array import array
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ._nfct import ffi, lib
from .errors import ConntrackError, from_errno
from .plan import BPFPart, CheckPart, KernelPart, NatMatch, Network, TuplePart

#: Records per batch handed from C to Python.
BATCH = 2048
#: Bytes of string pool per batch (helper names, security contexts).
POOL = 64 * 1024
#: Bytes for the one reply of a get (an entry's message, long security context included).
REPLY_POOL = 16 * 1024
#: Receive buffer asked for each socket (needs CAP_NET_ADMIN to exceed rmem_max).
RCVBUF = 8 * 1024 * 1024
#: Seconds a request waits for the kernel's answer before raising TimedOut.
TIMEOUT = 30.0

MSG_NEW = lib.IPCTNL_MSG_CT_NEW
MSG_GET = lib.IPCTNL_MSG_CT_GET
MSG_DELETE = lib.IPCTNL_MSG_CT_DELETE
F_CREATE_EXCL = lib.NLM_F_CREATE | lib.NLM_F_EXCL

HAS = {
    name[len("CTPY_HAS_"):].lower(): getattr(lib, name)
    for name in dir(lib)
    if name.startswith("CTPY_HAS_")
}

#: Bytes per ``struct ctpy_record`` (a multiple of 8: the struct holds uint64_t).
RECORD_SIZE = ffi.sizeof("struct ctpy_record")
_FMT_SIZE = {"B": 1, "H": 2, "I": 4}
_SWAP = sys.byteorder == "little"


def _offsets() -> Dict[str, int]:
    out = {}
    for name, f in ffi.typeof("struct ctpy_record").fields:
        out[name] = f.offset
        if name in ("orig", "reply"):
            for sub, g in ffi.typeof("struct ctpy_tuple").fields:
                out[name + "." + sub] = f.offset + g.offset
    return out


#: Byte offset of each record field ("status", "orig.sport", ...), for :meth:`Batch.column`.
OFFSET = _offsets()

TOP_PARTS = {
    name[len("CTPY_TOP_"):].lower(): getattr(lib, name)
    for name in dir(lib)
    if name.startswith("CTPY_TOP_") and name != "CTPY_TOP_MAXPARTS"
}
"""What ``top()`` keys can be made of (src, dst, sport, dport, proto, state, zone, mark, family)."""
TOP_MAXPARTS = lib.CTPY_TOP_MAXPARTS


# -- what crosses the boundary: plain values with names ------------------------


_tuple_new = tuple.__new__


class TupleValues(NamedTuple):
    """One direction of a record (``struct ctpy_tuple``), copied out of C."""

    family: int
    proto: int
    src: bytes
    """4 or 16 bytes, network order."""
    dst: bytes
    sport: int
    dport: int
    icmp_type: int
    icmp_code: int
    icmp_id: int
    has_icmp: bool
    zone: Optional[int]
    """A zone of this direction only (CTA_TUPLE_ZONE), else None."""


class SummaryValues(NamedTuple):
    """The counts of one counting dump."""

    total: int
    unreplied: int
    assured: int
    by_proto: Dict[int, int]
    """Entries by protocol number (none left out)."""
    tcp_states: Dict[int, int]
    """TCP entries by state number (none left out)."""


class TopPart(NamedTuple):
    """One part of a ``top()`` key."""

    name: str
    """A name of :data:`TOP_PARTS`."""
    plen4: int = 0
    """Prefix length for IPv4 addresses (src, dst)."""
    plen6: int = 0
    """Prefix length for IPv6 addresses (src, dst)."""


class TopValues(NamedTuple):
    """Counts by key of one counting dump."""

    rows: List[Tuple[bytes, int]]
    """The most frequent (key bytes, count), most frequent first."""
    distinct: int


class TopResult(NamedTuple):
    counts: Optional[TopValues]
    """None when no key was asked for."""
    summary: SummaryValues


class CountValues(NamedTuple):
    entries: int
    interrupted: bool
    """The kernel flagged the dump (NLM_F_DUMP_INTR): the table changed under it."""


class BatchResult(NamedTuple):
    """The acknowledgements of one batch of requests."""

    done: int
    vanished: int
    """Requests answered ENOENT."""
    failed: int
    first_errno: int
    first_failed: int
    """Index in the batch of the first failed request."""


class GlobalStats(NamedTuple):
    entries: int
    limit: int
    """nf_conntrack_max as the kernel reports it."""


class CrossCheck(NamedTuple):
    checked: int
    mismatched: int
    first: Optional[Tuple[Batch, Batch]]
    """The first mismatch, as parsed by the fast parser and by libnetfilter_conntrack."""


class EventBatch(NamedTuple):
    """What one call into the event reader gave."""

    batch: Batch
    types: List[int]
    """Each record's CTPY_EV_* type."""
    overflows: int
    """Overflows since the previous call."""
    lost: Optional[int]
    """Events lost with them (None: unknown)."""


def constant(name: str) -> int:
    """The value of a C constant (``AF_INET``, ``IPS_ASSURED``, ...) as the
    installed headers define it; :mod:`conntrack.enums` builds its members from these."""
    return int(getattr(lib, name))


def check(rc: int, what: str) -> int:
    """Raise the matching exception for a negative errno return."""
    if rc < 0:
        raise from_errno(-rc, what)
    return rc


def nfct_version() -> str:
    """Version of libnetfilter_conntrack the extension was built against."""
    return ffi.string(lib.ctpy_nfct_version()).decode()


class Batch:
    """A block of records from the C side, with their string pool.

    Flows hold a reference to their batch and an index into it; fields are
    read out of the record when asked for.
    """

    __slots__ = ("recs", "pool", "n", "size", "pool_size", "origs", "replies", "states")

    def __init__(self, size: int = BATCH, pool: int = POOL) -> None:
        self.recs = ffi.new("struct ctpy_record[]", size)
        self.pool = ffi.new("char[]", pool)
        self.n = 0
        self.size = size
        self.pool_size = pool
        # decoded once per batch, on first use, by flow.py (records never change once read)
        self.origs: Optional[List[Any]] = None
        self.replies: Optional[List[Any]] = None
        self.states: Optional[List[Any]] = None

    def fill(self, p: Any, uf: Any) -> int:
        """Let the C dump loop fill this batch; the number of records, or -errno."""
        self.n = lib.ctpy_dump_next(p, uf, self.recs, self.size, self.pool, self.pool_size)
        return self.n

    # -- reading -----------------------------------------------------------

    def present(self, i: int) -> int:
        return int(self.recs[i].present)

    def tuple(self, i: int, which: str) -> TupleValues:
        """The ``orig``, ``reply`` or ``master`` tuple of record *i*."""
        t = getattr(self.recs[i], which)
        size = 4 if t.family == lib.AF_INET else 16
        zone = int(t.zone) if t.has_zone else None
        return _tuple_new(TupleValues, (  # TupleValues(...) without its __new__'s call: 80 ns less
            int(t.family),
            int(t.proto),
            bytes(ffi.buffer(t.src, size)),
            bytes(ffi.buffer(t.dst, size)),
            int(t.sport),
            int(t.dport),
            int(t.icmp_type),
            int(t.icmp_code),
            int(t.icmp_id),
            bool(t.has_icmp),
            zone,
        ))

    def tuple_zone(self, i: int, which: str) -> Optional[int]:
        """The zone of one direction only (CTA_TUPLE_ZONE) of record *i*, else None."""
        t = getattr(self.recs[i], which)
        return int(t.zone) if t.has_zone else None

    # hot fields: one cdata access each, no getattr by name
    def status(self, i: int) -> int:
        return self.recs[i].status  # type: ignore[no-any-return]

    def family(self, i: int) -> int:
        return self.recs[i].orig.family  # type: ignore[no-any-return]

    def proto(self, i: int) -> int:
        return self.recs[i].orig.proto  # type: ignore[no-any-return]

    def optional(self, i: int, name: str, bit: int) -> Optional[int]:
        r = self.recs[i]
        return getattr(r, name) if r.present & bit else None

    def scalar(self, i: int, name: str) -> int:
        return int(getattr(self.recs[i], name))

    def counters(self, i: int) -> Tuple[int, int, int, int]:
        """(orig packets, orig bytes, reply packets, reply bytes), as the C array holds them."""
        c = self.recs[i].counters
        return (int(c[0]), int(c[1]), int(c[2]), int(c[3]))

    def labels(self, i: int) -> bytes:
        return bytes(ffi.buffer(self.recs[i].labels, 16))

    def string(self, i: int, name: str) -> str:
        r = self.recs[i]
        off = int(getattr(r, name + "_off"))
        n = int(getattr(r, name + "_len"))
        return bytes(ffi.buffer(self.pool + off, n)).decode("utf-8", "replace")

    def column(self, offset: int, fmt: str, network_order: bool = False) -> List[int]:
        """One field of every record as a list of ints, read in C (no call
        into the extension, so the GIL is never released here).  *offset* is
        the field's byte offset in a record (see ``OFFSET``); *fmt* is ``"B"``,
        ``"H"`` or ``"I"``, in native byte order unless *network_order*."""
        n = self.n
        if not n:
            return []
        size = _FMT_SIZE[fmt]
        mv = memoryview(ffi.buffer(self.recs, n * RECORD_SIZE))
        col = mv[offset:offset + (n - 1) * RECORD_SIZE + size].cast(fmt)[::RECORD_SIZE // size]  # type: ignore[call-overload]
        if network_order and _SWAP:
            arr = array(fmt, col.tobytes())
            arr.byteswap()
            return arr.tolist()
        return col.tolist()

    # -- writing (flows built by users) -----------------------------------

    def set_tuple(self, i: int, which: str, v: TupleValues) -> None:
        t = getattr(self.recs[i], which)
        _fill_tuple(t, v.family, v.proto, v.src, v.dst, v.sport, v.dport)
        t.icmp_type = v.icmp_type
        t.icmp_code = v.icmp_code
        t.icmp_id = v.icmp_id
        t.has_icmp = v.has_icmp
        t.has_zone = v.zone is not None
        t.zone = v.zone or 0

    def set_fields(self, i: int, present: int, fields: Dict[str, Any]) -> None:
        r = self.recs[i]
        for name, value in fields.items():
            if name == "counters":
                for k in range(4):
                    r.counters[k] = value[k]
            elif name == "labels":
                ffi.memmove(r.labels, value, 16)
            else:
                setattr(r, name, value)
        r.present |= present

    def set_string(self, i: int, name: str, value: str, offset: int) -> int:
        raw = value.encode()
        ffi.memmove(self.pool + offset, raw, len(raw))
        setattr(self.recs[i], name + "_off", offset)
        setattr(self.recs[i], name + "_len", len(raw))
        return offset + len(raw)


def gather(flows: List[Tuple[Batch, int]]) -> Batch:
    """Copy records (and their strings) from many batches into one."""
    b = Batch(max(len(flows), 1), max(64 * len(flows), 256))
    used = 0
    for k, (src, i) in enumerate(flows):
        b.recs[k] = src.recs[i]
        b.recs[k].present &= ~lib.CTPY_HAS_SECCTX  # its string is in src's pool, and a request never sends it
        r = src.recs[i]
        if r.present & lib.CTPY_HAS_HELPER:
            b.set_string(k, "helper", src.string(i, "helper"), used)
            used += int(r.helper_len)
    b.n = len(flows)
    return b


def _fill_tuple(t: Any, family: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> None:
    """The address and port part of a ``struct ctpy_tuple``."""
    t.family = family
    t.proto = proto
    ffi.memmove(t.src, src, len(src))
    ffi.memmove(t.dst, dst, len(dst))
    t.sport = sport
    t.dport = dport


def single() -> Batch:
    """A batch with room for one record, for flows built in Python."""
    b = Batch(1, 256)
    b.n = 1
    return b


def _parse_message(data: bytes, reference: bool = False) -> Tuple[Batch, Optional[Batch], bool]:
    """Parse one ctnetlink conntrack message with the dump path's parser (tests).

    Returns (its record, libnetfilter_conntrack's record of the same message
    or None when not asked for or refused by it, whether the two differ).  A
    message the parser refuses raises :class:`ConntrackOSError` (EBADMSG:
    malformed; EMSGSIZE: shorter than its header or its nlmsg_len; EPROTO:
    not a conntrack message).  Ask for the reference only on well-formed
    messages: libnetfilter_conntrack reads a security context up to its NUL,
    past the attribute when there is none.
    """
    size = max(len(data), 1)
    fast = Batch(1, size)
    ref = Batch(1, size) if reference else None
    ref_rc = ffi.new("int *")
    differ = ffi.new("int *")
    check(lib.ctpy_parse_message(ffi.from_buffer(data), len(data), fast.recs, fast.pool, size,
                                 ref.recs if ref else ffi.NULL, ref.pool if ref else ffi.NULL,
                                 ref_rc, differ), "parse a ctnetlink message")
    fast.n = 1
    if ref is not None:
        if ref_rc[0] < 0:
            ref = None
        else:
            ref.n = 1
    return fast, ref, bool(differ[0])


# -- filters ----------------------------------------------------------------


_CHECK_BITS = (
    # CheckPart field -> its bit in ctpy_filter.fields (the C check tests only the fields set)
    ("family", lib.CTPY_F_FAMILY), ("proto", lib.CTPY_F_PROTO),
    ("src", lib.CTPY_F_ORIG_SRC), ("dst", lib.CTPY_F_ORIG_DST),
    ("reply_src", lib.CTPY_F_REPLY_SRC), ("reply_dst", lib.CTPY_F_REPLY_DST),
    ("sport", lib.CTPY_F_SPORT), ("dport", lib.CTPY_F_DPORT), ("state", lib.CTPY_F_STATE),
    ("mark", lib.CTPY_F_MARK), ("zone", lib.CTPY_F_ZONE),
    ("labels", lib.CTPY_F_LABELS), ("orig_zone", lib.CTPY_F_ORIG_ZONE), ("reply_zone", lib.CTPY_F_REPLY_ZONE),
    ("src_nat", lib.CTPY_F_SRC_NAT), ("dst_nat", lib.CTPY_F_DST_NAT), ("any_nat", lib.CTPY_F_ANY_NAT),
    ("status_mask", lib.CTPY_F_STATUS),
)
_BPF_BITS = (
    ("proto", lib.CTPY_B_PROTO), ("state", lib.CTPY_B_STATE), ("src", lib.CTPY_B_SRC),
    ("dst", lib.CTPY_B_DST), ("mark", lib.CTPY_B_MARK), ("zone", lib.CTPY_B_ZONE),
)


def _bits(part: Any, table: Tuple[Tuple[str, int], ...]) -> int:
    return sum(bit for name, bit in table if getattr(part, name) is not None)


def _states(states: Tuple[Any, ...]) -> int:
    return sum(1 << int(s) for s in set(states))


def _cidr(c: Any, net: Network) -> None:
    """A ``struct ctpy_cidr`` from a network (its address is already masked)."""
    c.family = lib.AF_INET if net.version == 4 else lib.AF_INET6
    ffi.memmove(c.addr, net.network_address.packed, len(net.network_address.packed))
    ffi.memmove(c.mask, net.netmask.packed, len(net.netmask.packed))


def _nat(c: Any, nat: NatMatch) -> None:
    c.family = lib.AF_INET6 if nat.addr is not None and nat.addr.version == 6 else lib.AF_INET
    if nat.addr is not None:
        ffi.memmove(c.addr, nat.addr.packed, len(nat.addr.packed))
        c.has_addr = 1
    if nat.port is not None:
        c.port = nat.port
        c.has_port = 1


def _fill_shared(c: Any, part: Any, src: Any, dst: Any) -> None:
    """The members ``struct ctpy_filter`` and ``struct ctpy_bpf`` share: protocol,
    states, original addresses (into *src*, *dst*), mark and zone."""
    if part.proto is not None:
        c.proto = part.proto
    if part.state is not None:
        c.states = _states(part.state)
    if part.src is not None:
        _cidr(src, part.src)
    if part.dst is not None:
        _cidr(dst, part.dst)
    if part.mark is not None:
        c.mark_val, c.mark_mask = part.mark
    if part.zone is not None:
        c.zone = part.zone


@functools.lru_cache(maxsize=64)
def _check_filter(part: CheckPart) -> Any:
    """A ``struct ctpy_filter`` for the C check (cached: an event stream asks per batch)."""
    f = ffi.new("struct ctpy_filter *")
    f.fields = _bits(part, _CHECK_BITS)
    _fill_shared(f, part, f.orig_src, f.orig_dst)
    if part.family is not None:
        f.family = part.family
    for net, c in ((part.reply_src, f.reply_src), (part.reply_dst, f.reply_dst)):
        if net is not None:
            _cidr(c, net)
    if part.sport is not None:
        f.sport_lo, f.sport_hi = part.sport
    if part.dport is not None:
        f.dport_lo, f.dport_hi = part.dport
    if part.status_mask is not None:
        f.status_val, f.status_mask = part.status_mask
    if part.labels is not None:
        ffi.memmove(f.labels_val, part.labels, 16)
        ffi.memmove(f.labels_mask, part.labels, 16)
    if part.orig_zone is not None:
        f.orig_zone = part.orig_zone
    if part.reply_zone is not None:
        f.reply_zone = part.reply_zone
    for nat, c in ((part.src_nat, f.src_nat), (part.dst_nat, f.dst_nat), (part.any_nat, f.any_nat)):
        if nat is not None:
            _nat(c, nat)
    return f


def _kernel_tuple(t: Any, family: int, part: TuplePart) -> int:
    """Fill a ``struct ctpy_tuple`` with *part*; its CTA_FILTER flags."""
    flags = 0
    t.family = family
    if part.proto is not None:
        t.proto = part.proto
        flags |= lib.CTPY_CTA_PROTO_NUM
    if part.src is not None:
        ffi.memmove(t.src, part.src.packed, len(part.src.packed))
        flags |= lib.CTPY_CTA_IP_SRC
    if part.dst is not None:
        ffi.memmove(t.dst, part.dst.packed, len(part.dst.packed))
        flags |= lib.CTPY_CTA_IP_DST
    if part.sport is not None:
        t.sport = part.sport
        flags |= lib.CTPY_CTA_SRC_PORT
    if part.dport is not None:
        t.dport = part.dport
        flags |= lib.CTPY_CTA_DST_PORT
    return flags


@functools.lru_cache(maxsize=64)
def _kernel_filter(part: KernelPart) -> Any:
    """A ``struct ctpy_kfilter`` for dump/flush requests (NULL when it asks nothing)."""
    k = ffi.new("struct ctpy_kfilter *")
    fields = 0
    if part.mark is not None:
        fields |= lib.CTPY_K_MARK
        k.mark_val, k.mark_mask = part.mark
    if part.status is not None:
        fields |= lib.CTPY_K_STATUS
        k.status_val, k.status_mask = part.status
    if part.zone is not None:
        fields |= lib.CTPY_K_ZONE
        k.zone = part.zone
    family = int(part.family or 0)
    if part.orig is not None:
        fields |= lib.CTPY_K_TUPLE
        k.orig_flags = _kernel_tuple(k.orig, family, part.orig)
    if part.reply is not None:
        fields |= lib.CTPY_K_TUPLE
        k.reply_flags = _kernel_tuple(k.reply, family, part.reply)
    if not fields:
        return ffi.NULL
    k.fields = fields
    return k


def _bpf_filter(part: BPFPart) -> Any:
    """A ``struct ctpy_bpf`` for an event socket's kernel-side filter."""
    b = ffi.new("struct ctpy_bpf *")
    b.fields = _bits(part, _BPF_BITS)
    _fill_shared(b, part, b.src, b.dst)
    return b


#: ctnetlink wire values from the installed headers (the parser tests build messages).
WIRE = {
    name: getattr(lib, name)
    for name in dir(lib)
    if name.startswith(("CTA_", "NFNL", "NLM_F_", "NLA_F_", "IPCTNL_", "IPPROTO_", "AF_"))
}

# -- sockets ----------------------------------------------------------------


class _Sock:
    """A ``struct ctpy_sock``: opened (inside the network namespace open at
    *netns_fd*, when given) and closed the same way for every kind of socket."""

    #: What using the socket after close() says.
    closed_text = "operation on a closed socket"

    def __init__(self, netns_fd: Optional[int], rcvbuf: int, what: str) -> None:
        err = ffi.new("int *")
        ptr = lib.ctpy_open(-1 if netns_fd is None else netns_fd, rcvbuf, err)
        if ptr == ffi.NULL:
            if err[0] == -1:  # ctpy_open entered the namespace, then setns() back failed
                raise ConntrackError("%s: the thread entered the network namespace but could not return "
                                     "to its own, and stays in the other one" % what)
            raise from_errno(err[0] if err[0] > 0 else errno.EIO, what)
        self._ptr: Any = ffi.gc(ptr, lib.ctpy_close)
        self._netns_fd = netns_fd

    def _p(self) -> Any:
        if self._ptr is None:
            raise ValueError(self.closed_text)
        return self._ptr

    def fileno(self) -> int:
        """The socket's descriptor."""
        return int(lib.ctpy_sock_fd(self._p()))

    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            ffi.release(ptr)

    @property
    def closed(self) -> bool:
        return self._ptr is None


class Socket(_Sock):
    """One ctnetlink socket for requests and dumps.

    Not thread-safe: one operation at a time.
    """

    closed_text = "operation on a closed Conntrack handle"

    def __init__(self, netns_fd: Optional[int] = None, timeout: Optional[float] = TIMEOUT) -> None:
        super().__init__(netns_fd, RCVBUF, "cannot open a ctnetlink socket")
        self._timeout = timeout
        if timeout is not None:
            check(lib.ctpy_set_timeout(self._ptr, max(int(timeout * 1000), 1)), "socket timeout")

    # -- dumps ----------------------------------------------------------------

    def _start_dump(self, kernel: KernelPart) -> Socket:
        """A new socket in the same namespace with a dump request sent on it."""
        sock = Socket(self._netns_fd, self._timeout)
        try:
            check(lib.ctpy_dump_start(sock._p(), int(kernel.family or 0), _kernel_filter(kernel)), "dump")
        except BaseException:
            sock.close()
            raise
        return sock

    def dump(self, kernel: KernelPart, user: CheckPart) -> Dump:
        """A dump of the records *user* matches, of a dump the kernel filters by
        *kernel*, started now on a socket of its own (read it with
        :func:`conntrack._dump.batches`)."""
        return Dump(self._start_dump(kernel), _check_filter(user))

    def count(self, kernel: KernelPart, user: CheckPart) -> CountValues:
        sock = self._start_dump(kernel)
        try:
            p = sock._p()
            out = ffi.new("uint64_t *")
            check(lib.ctpy_dump_count(p, _check_filter(user), out), "dump")
            return CountValues(int(out[0]), bool(lib.ctpy_dump_interrupted(p)))
        finally:
            sock.close()

    def summary(self, kernel: KernelPart, user: CheckPart) -> SummaryValues:
        """The counts of one dump."""
        return self.top(kernel, user, None, 0).summary

    def top(self, kernel: KernelPart, user: CheckPart, parts: Optional[List[TopPart]], n: int) -> TopResult:
        """One counting dump, in C: the summary and, with *parts*, counts by key:
        the *n* most frequent (key bytes, count), most frequent first, with the
        number of distinct keys.
        """
        t = ffi.NULL
        keylen = 0
        if parts is not None:
            spec = ffi.new("struct ctpy_topspec *")
            spec.n = len(parts)
            for i, part in enumerate(parts):
                spec.kind[i] = TOP_PARTS[part.name]
                spec.plen4[i] = part.plen4
                spec.plen6[i] = part.plen6
            keylen = check(lib.ctpy_top_keylen(spec), "top")
            ptr = lib.ctpy_top_new(spec)
            if ptr == ffi.NULL:
                raise from_errno(errno.ENOMEM, "top")
            t = ffi.gc(ptr, lib.ctpy_top_free)
        out = ffi.new("struct ctpy_summary *")
        sock = self._start_dump(kernel)
        try:
            check(lib.ctpy_dump_top(sock._p(), _check_filter(user), t, out), "dump")
        finally:
            sock.close()
        protos = {k: int(out.by_proto[k]) for k in range(256) if out.by_proto[k]}
        states = {k: int(out.tcp_states[k]) for k in range(32) if out.tcp_states[k]}
        summary = SummaryValues(int(out.total), int(out.unreplied), int(out.assured), protos, states)
        if t == ffi.NULL:
            return TopResult(None, summary)
        distinct = int(lib.ctpy_top_distinct(t))
        want = min(n, distinct)
        keys = ffi.new("uint8_t[]", max(want, 1) * keylen)
        counts = ffi.new("uint64_t[]", max(want, 1))
        got = lib.ctpy_top_result(t, want, keys, counts)
        raw = ffi.buffer(keys, got * keylen)[:]
        ffi.release(t)
        rows = [(raw[i * keylen:(i + 1) * keylen], int(counts[i])) for i in range(got)]
        return TopResult(TopValues(rows, distinct), summary)

    def crosscheck(self) -> CrossCheck:
        """Dump the table parsing every entry twice: with the fast C parser and
        with libnetfilter_conntrack's."""
        sock = self._start_dump(KernelPart())
        try:
            p = sock._p()
            checked = ffi.new("uint64_t *")
            bad = ffi.new("uint64_t *")
            fast, ref = Batch(1, 16), Batch(1, 16)
            check(lib.ctpy_dump_crosscheck(p, checked, bad, fast.recs, ref.recs), "dump")
            fast.n = ref.n = 1
            return CrossCheck(int(checked[0]), int(bad[0]), ((fast, ref) if bad[0] else None))
        finally:
            sock.close()

    # -- requests -------------------------------------------------------------

    def request(self, msg: int, flags: int, b: Batch, i: int, what: str) -> Optional[Batch]:
        out = Batch(1, REPLY_POOL)
        rc = lib.ctpy_request(self._p(), msg, flags, b.recs + i, b.pool, out.recs, out.pool, REPLY_POOL)
        check(rc, what)
        if rc == 0:
            return None
        out.n = 1
        return out

    def flush(self, kernel: KernelPart) -> None:
        check(lib.ctpy_flush(self._p(), int(kernel.family or 0), _kernel_filter(kernel)), "flush")

    def batch(self, msg: int, flags: int, b: Batch, pin_id: bool,
              tally: Optional[Tally] = None) -> BatchResult:
        """Send one request per record of *b*, many per sendmsg; count the acks.

        With *tally*, the counts are also left in it, so a caller interrupted
        right after this returns can still read them.
        """
        t = tally if tally is not None else Tally()
        check(lib.ctpy_batch(self._p(), msg, flags, b.recs, b.pool, b.n, int(pin_id), t._res), "batch")
        return t.values()

    def global_stats(self) -> GlobalStats:
        entries = ffi.new("uint32_t *")
        limit = ffi.new("uint32_t *")
        check(lib.ctpy_global_stats(self._p(), entries, limit), "statistics")
        return GlobalStats(int(entries[0]), int(limit[0]))

    def cpu_stats(self) -> List[Dict[str, int]]:
        ncpu = max(os.cpu_count() or 1, 1) * 2 + 64
        out = ffi.new("struct ctpy_cpu_stats[]", ncpu)
        n = check(lib.ctpy_cpu_stats(self._p(), out, ncpu), "per-CPU statistics")
        counters = [f[0] for f in ffi.typeof("struct ctpy_cpu_stats").fields][2:]  # after cpu, present
        rows = []
        for i in range(n):
            o = out[i]
            row = {"cpu": int(o.cpu)}
            row.update((k, int(getattr(o, k))) for bit, k in enumerate(counters) if o.present >> bit & 1)
            rows.append(row)
        return rows  # only the counters this kernel sends, as conntrack -S shows them


class Dump:
    """A dump in flight on a socket of its own, read one batch per :meth:`read`.

    It owns that socket: :meth:`close` frees it, so close it only from the
    thread that reads it (the dump layer's worker does).
    """

    __slots__ = ("_sock", "_uf", "done", "interrupted")

    def __init__(self, sock: Socket, uf: Any) -> None:
        self._sock = sock
        self._uf = uf  # the C filter lives as long as the dump
        self.done = False
        """The kernel's last message came (or the dump failed)."""
        self.interrupted = False
        """The kernel set NLM_F_DUMP_INTR: the table changed under the dump."""

    def read(self) -> Batch:
        """The next batch of matching records (maybe none: look at :attr:`done`).

        Runs the C dump loop, which releases the GIL while it waits for the kernel.
        """
        p = self._sock._p()
        b = Batch()
        rc = b.fill(p, self._uf)
        if rc < 0:
            self.done = True
            raise from_errno(-rc, "dump")
        if lib.ctpy_dump_interrupted(p):
            self.interrupted = True
        self.done = bool(lib.ctpy_dump_done(p))
        return b

    def close(self) -> None:
        self._sock.close()


class Tally:
    """The acknowledgement counts of one batch, in C memory the C call fills.

    Allocated (zeroed) before the call, so whatever interrupts the caller
    afterwards, what the kernel acknowledged can still be read.
    """

    __slots__ = ("_res",)

    def __init__(self) -> None:
        self._res = ffi.new("struct ctpy_batch_result *")

    def values(self) -> BatchResult:
        r = self._res
        return BatchResult(int(r.done), int(r.vanished), int(r.failed), int(r.first_errno), int(r.first_failed))


class EventSocket(_Sock):
    """A socket subscribed to conntrack events, with a large receive buffer."""

    closed_text = "operation on a closed event stream"

    def __init__(self, netns_fd: Optional[int], types: int, rcvbuf: int) -> None:
        super().__init__(netns_fd, rcvbuf, "cannot open a ctnetlink event socket")
        self._overflows = ffi.new("uint32_t *")
        self._lost = ffi.new("int64_t *")
        self._types = ffi.new("uint8_t[]", EVENT_BATCH)
        try:
            check(lib.ctpy_events_subscribe(self._ptr, types), "subscribe to conntrack events")
        except BaseException:
            self.close()
            raise

    def attach_bpf(self, part: BPFPart) -> None:
        """Attach the kernel-side event filter *part*."""
        check(lib.ctpy_events_bpf(self._p(), _bpf_filter(part)), "attach the event filter")

    def next(self, user: CheckPart, timeout_ms: int) -> EventBatch:
        """A batch of matching events (maybe empty), their types, the overflows
        since the last call and the events lost with them.

        With ``timeout_ms=0`` it never waits: an empty batch and no overflow
        mean that nothing is queued, neither in our buffer nor in the kernel's.
        """
        b = Batch(EVENT_BATCH, 64 * 1024)
        types = self._types
        self._overflows[0] = 0
        self._lost[0] = 0
        b.n = check(lib.ctpy_events_next(self._p(), _check_filter(user), b.recs, types, EVENT_BATCH, b.pool, b.pool_size,
                                         timeout_ms, self._overflows, self._lost), "events")
        lost = int(self._lost[0])
        return EventBatch(b, [int(types[i]) for i in range(b.n)], int(self._overflows[0]),
                          (lost if lost >= 0 else None))


#: Events per batch handed from the event reader to Python.
EVENT_BATCH = 256
#: True when libnetfilter_conntrack can filter events by zone in the kernel (1.1.0).
BPF_ZONE = bool(lib.ctpy_events_bpf_zone())

EV_NEW = lib.CTPY_EV_NEW
EV_UPDATE = lib.CTPY_EV_UPDATE
EV_DESTROY = lib.CTPY_EV_DESTROY
EV_SNAPSHOT = lib.CTPY_EV_SNAPSHOT
EV_SNAPSHOT_BEGIN = lib.CTPY_EV_SNAPSHOT_BEGIN
EV_SNAPSHOT_END = lib.CTPY_EV_SNAPSHOT_END
EV_OVERFLOW = lib.CTPY_EV_OVERFLOW


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at *fd*."""
    check(lib.ctpy_setns(fd), "cannot enter the network namespace")


def unshare_netns() -> None:
    """Move the calling thread into a new, empty network namespace (it ends with the thread's sockets)."""
    check(lib.ctpy_unshare_netns(), "cannot make a network namespace")


def netns_open(path: str) -> int:
    """Open a network namespace file; the caller closes the descriptor.

    O_NONBLOCK: opening a FIFO by mistake must not block.
    """
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)

