"""Flows: one conntrack entry as an immutable Python object.

A :class:`Flow` read from the kernel is a small handle on a record in a
batch that the C dump loop filled; its fields are decoded when read.  A
flow built by a user (``Flow(proto="udp", src=..., ...)``) is validated at
once and carries the same kind of record, ready to send.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from typing import Any, Dict, FrozenSet, Iterable, NamedTuple, Optional, Tuple, Union

from . import _binding
from .enums import (
    SETTABLE_STATUS,
    STATE_ENUMS,
    Family,
    Proto,
    State,
    Status,
    parse_family,
    parse_proto,
    parse_state,
    parse_status,
)

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
AddressLike = Union[str, bytes, int, IPAddress]

_HAS = _binding.HAS
_PORT_PROTOS = frozenset((Proto.tcp, Proto.udp, Proto.udplite, Proto.sctp, Proto.dccp))
_ICMP_PROTOS = frozenset((Proto.icmp, Proto.icmpv6))
# The reply direction of an ICMP query carries the answer's type
# (RFC 792 and RFC 4443 pairs; the kernel's icmp invert maps).
_ICMP_REPLY = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17}
_ICMPV6_REPLY = {128: 129, 129: 128, 139: 140, 140: 139}


# Enum members by value: a dict lookup is ~10x cheaper than Enum(value).
_FAMILIES: Dict[int, Family] = {int(m): m for m in Family}
_PROTOS: Dict[int, Proto] = {int(m): m for m in Proto}
_STATUSES: Dict[int, Status] = {}


class FlowTuple(NamedTuple):
    """One direction of a flow: addresses, and ports or ICMP fields."""

    src: IPAddress
    dst: IPAddress
    sport: Optional[int] = None
    dport: Optional[int] = None
    icmp_type: Optional[int] = None
    icmp_code: Optional[int] = None
    icmp_id: Optional[int] = None

    def __str__(self) -> str:
        return _tuple_text(self)


class Counters(NamedTuple):
    """Packet and byte counters per direction (needs nf_conntrack_acct=1)."""

    orig_packets: int
    orig_bytes: int
    reply_packets: int
    reply_bytes: int


# -- validation helpers (plain Python, used by Flow and Filter) -------------


def check_int(value: Any, field: str, lo: int, hi: int) -> int:
    """An int within [lo, hi], or ValueError/TypeError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise ValueError("%s: %r is not a number" % (field, value)) from None
        else:
            raise TypeError("%s: expected an int, got %r" % (field, value))
    if not lo <= value <= hi:
        raise ValueError("%s: %d is out of range %d..%d" % (field, value, lo, hi))
    return value


def check_port(value: Any, field: str) -> int:
    """A port number 0..65535."""
    return check_int(value, field, 0, 0xFFFF)


def check_address(value: Any, field: str, family: Optional[Family] = None) -> IPAddress:
    """An IPv4 or IPv6 address, of *family* when given."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        addr: IPAddress = value
    else:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("%s: %r is not an IPv4 or IPv6 address" % (field, value)) from None
    if family is not None and _family_of(addr) != family:
        raise ValueError(
            "%s: %s is not an %s address" % (field, addr, "IPv4" if family == Family.ipv4 else "IPv6")
        )
    return addr


def labels_to_bytes(value: Any, field: str = "labels") -> bytes:
    """A 128-bit label set from bit numbers (an iterable) or an int bitmap."""
    if isinstance(value, int) and not isinstance(value, bool):
        bits = check_int(value, field, 0, (1 << 128) - 1)
    else:
        bits = 0
        for bit in value:
            bits |= 1 << check_int(bit, field, 0, 127)
    return bits.to_bytes(16, "little")


def entry_fields(proto: Optional[Proto] = None, **values: Any) -> Tuple[int, Dict[str, Any]]:
    """Checked record fields for the values given (None means not given),
    with their ``CTPY_HAS_*`` bits: what create and update send."""
    present = 0
    fields: Dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name in ("timeout", "mark"):
            fields[name] = check_int(value, name, 0, 0xFFFFFFFF)
        elif name == "zone":
            fields[name] = check_int(value, name, 0, 0xFFFF)
        elif name == "status":
            fields[name] = int(parse_status(value))
        elif name == "state":
            if proto is None:
                raise ValueError("state: needs the flow's protocol")
            fields[name] = int(parse_state(proto, value))
        elif name == "labels":
            fields[name] = labels_to_bytes(value)
        else:
            raise TypeError("unknown field %r" % name)
        present |= _HAS[name]
    return present, fields


def status_names(bits: int) -> str:
    """``"SRC_NAT|DST_NAT"`` for a set of status bits (unknown ones in hex)."""
    names = [m.name or "" for m in Status if m & bits]
    rest = bits & ~sum(Status)
    if rest:
        names.append("%#x" % rest)
    return "|".join(names)


_PLAIN_STATUS = int(SETTABLE_STATUS | Status.CONFIRMED)


def check_create(flow: Flow) -> None:
    """ValueError when *flow* asks for status bits a create cannot set.

    The kernel sets CONFIRMED on insertion, and SRC_NAT/DST_NAT (with both
    NAT_DONE bits) when the reply tuple is translated; a user may set only
    ``SETTABLE_STATUS``.  Any other bit would be dropped without a word.
    """
    status = flow._b.status(flow._i) if flow._has("status") else 0
    if not status & ~_PLAIN_STATUS:  # the common case, without decoding the tuples
        return
    nat = flow._nat_bits()
    allowed = _PLAIN_STATUS
    if nat:
        allowed |= int(nat | Status.SRC_NAT_DONE | Status.DST_NAT_DONE)
    bad = status & ~allowed
    if bad:
        msg = "status: the kernel does not let a create set %s" % status_names(bad)
        if bad & (Status.SRC_NAT | Status.DST_NAT | Status.SRC_NAT_DONE | Status.DST_NAT_DONE):
            msg += (" (it sets the NAT bits itself when the reply tuple is translated: give "
                    "reply_src/reply_sport for DNAT, reply_dst/reply_dport for SNAT)")
        raise ValueError(msg)


def _family_of(addr: IPAddress) -> Family:
    return Family.ipv4 if addr.version == 4 else Family.ipv6


def _make_addr(family: int, raw: bytes) -> IPAddress:
    if family == Family.ipv4:
        return ipaddress.IPv4Address(raw)
    return ipaddress.IPv6Address(raw)


def _tuple_text(t: FlowTuple) -> str:
    parts = ["src=%s" % t.src, "dst=%s" % t.dst]
    if t.icmp_type is not None:
        parts.append("type=%d code=%d id=%d" % (t.icmp_type, t.icmp_code or 0, t.icmp_id or 0))
    elif t.sport is not None:
        parts.append("sport=%d dport=%d" % (t.sport, t.dport or 0))
    return " ".join(parts)


def _tuple_from(values: _binding.TupleValues) -> FlowTuple:
    family, proto, src, dst, sport, dport, itype, icode, iid, has_icmp, _zone = values
    if has_icmp:
        return FlowTuple(_make_addr(family, src), _make_addr(family, dst), None, None, itype, icode, iid)
    if proto in _PORT_PROTOS:
        return FlowTuple(_make_addr(family, src), _make_addr(family, dst), sport, dport)
    return FlowTuple(_make_addr(family, src), _make_addr(family, dst))


# -- the flow ----------------------------------------------------------------


class Flow:
    """One connection tracking entry.

    Build one for create/get/delete with keywords::

        Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=5353, dport=53, timeout=30)

    The reply direction defaults to the inverse of the original one.  Every
    value is checked here; a bad one raises ``ValueError`` naming the field.
    Flows are immutable and hashable; two flows are equal when every field
    is equal (``flow.key`` identifies the kernel entry regardless of timers).
    """

    __slots__ = ("_b", "_i")

    _b: _binding.Batch
    _i: int

    def __init__(
        self,
        *,
        proto: Union[str, int, Proto],
        src: AddressLike,
        dst: AddressLike,
        sport: Optional[int] = None,
        dport: Optional[int] = None,
        family: Union[str, int, Family, None] = None,
        icmp_type: Optional[int] = None,
        icmp_code: Optional[int] = None,
        icmp_id: Optional[int] = None,
        reply_src: Optional[AddressLike] = None,
        reply_dst: Optional[AddressLike] = None,
        reply_sport: Optional[int] = None,
        reply_dport: Optional[int] = None,
        timeout: Optional[int] = None,
        mark: Optional[int] = None,
        zone: Optional[int] = None,
        orig_zone: Optional[int] = None,
        reply_zone: Optional[int] = None,
        status: Union[Status, int, str, None] = None,
        state: Union[State, int, str, None] = None,
        labels: Union[Iterable[int], int, None] = None,
        helper: Optional[str] = None,
    ) -> None:
        p = parse_proto(proto)
        fam = parse_family(family) if family is not None else None
        s = check_address(src, "src", fam)
        fam = _family_of(s)
        d = check_address(dst, "dst", fam)
        rs = check_address(reply_src, "reply_src", fam) if reply_src is not None else d
        rd = check_address(reply_dst, "reply_dst", fam) if reply_dst is not None else s
        if p == Proto.icmp and fam != Family.ipv4:
            raise ValueError("proto: icmp needs IPv4 addresses (use icmpv6)")
        if p == Proto.icmpv6 and fam != Family.ipv6:
            raise ValueError("proto: icmpv6 needs IPv6 addresses (use icmp)")

        orig_ports = (0, 0)
        reply_ports = (0, 0)
        icmp = (0, 0, 0)
        has_icmp = p in _ICMP_PROTOS
        if p in _PORT_PROTOS:
            if sport is None or dport is None:
                raise ValueError("sport/dport: required for %s" % p.name)
            orig_ports = (check_port(sport, "sport"), check_port(dport, "dport"))
            reply_ports = (
                check_port(reply_sport, "reply_sport") if reply_sport is not None else orig_ports[1],
                check_port(reply_dport, "reply_dport") if reply_dport is not None else orig_ports[0],
            )
        elif sport is not None or dport is not None or reply_sport is not None or reply_dport is not None:
            raise ValueError("sport/dport: %s has no ports" % p.name)
        if has_icmp:
            default_type = 8 if p == Proto.icmp else 128
            icmp = (
                check_int(default_type if icmp_type is None else icmp_type, "icmp_type", 0, 255),
                check_int(0 if icmp_code is None else icmp_code, "icmp_code", 0, 255),
                check_int(0 if icmp_id is None else icmp_id, "icmp_id", 0, 0xFFFF),
            )
        elif icmp_type is not None or icmp_code is not None or icmp_id is not None:
            raise ValueError("icmp_type/icmp_code/icmp_id: only for icmp and icmpv6")

        # The kernel keeps one zone per entry: for both directions (CTA_ZONE)
        # or for one (CTA_TUPLE_ZONE in that tuple); it refuses two.
        given = [n for n, v in (("zone", zone), ("orig_zone", orig_zone), ("reply_zone", reply_zone))
                 if v is not None]
        if len(given) > 1:
            raise ValueError("%s: an entry has one zone, for both directions (zone=) or for one "
                             "(orig_zone= or reply_zone=); give one of them" % "/".join(given))
        oz = check_int(orig_zone, "orig_zone", 1, 0xFFFF) if orig_zone is not None else None
        rz = check_int(reply_zone, "reply_zone", 1, 0xFFFF) if reply_zone is not None else None
        one_way = oz if oz is not None else rz
        present, fields = entry_fields(
            p, timeout=timeout, mark=mark, zone=zone if one_way is None else one_way,
            status=status, state=state, labels=labels)
        present |= _HAS["orig"] | _HAS["reply"]
        if helper is not None:
            if not isinstance(helper, str) or not 0 < len(helper.encode()) < 16:
                raise ValueError("helper: expected a helper name of 1..15 bytes, got %r" % (helper,))
            present |= _HAS["helper"]

        b = _binding.single()
        b.set_tuple(0, "orig", (int(fam), int(p), s.packed, d.packed, orig_ports[0], orig_ports[1],
                                icmp[0], icmp[1], icmp[2], has_icmp, oz))
        reply_type = (_ICMP_REPLY if p == Proto.icmp else _ICMPV6_REPLY).get(icmp[0], icmp[0])
        b.set_tuple(0, "reply", (int(fam), int(p), rs.packed, rd.packed, reply_ports[0], reply_ports[1],
                                 reply_type, icmp[1], icmp[2], has_icmp, rz))
        b.set_fields(0, present, fields)
        if helper is not None:
            b.set_string(0, "helper", helper, 0)
        self._b = b
        self._i = 0

    @classmethod
    def _from_batch(cls, b: _binding.Batch, i: int) -> Flow:
        f = cls.__new__(cls)
        f._b = b
        f._i = i
        return f

    # -- fields -----------------------------------------------------------------

    def _has(self, what: str) -> bool:
        return bool(self._b.present(self._i) & _HAS[what])

    def _opt(self, what: str) -> Optional[int]:
        return self._b.optional(self._i, what, _HAS[what])

    @property
    def family(self) -> Family:
        """Address family (``Family.ipv4`` or ``Family.ipv6``)."""
        return _FAMILIES[self._b.family(self._i)]

    @property
    def proto(self) -> Proto:
        """Layer-4 protocol."""
        value = self._b.proto(self._i)
        proto = _PROTOS.get(value)
        if proto is None:
            proto = _PROTOS[value] = Proto(value)
        return proto

    @property
    def orig(self) -> FlowTuple:
        """The original direction (as the first packet went)."""
        return _tuple_from(self._b.tuple(self._i, "orig"))

    @property
    def reply(self) -> FlowTuple:
        """The reply direction (as answers are expected)."""
        return _tuple_from(self._b.tuple(self._i, "reply"))

    @property
    def status(self) -> Status:
        """The IPS_* status bits (``Status(0)`` when unknown)."""
        value = self._b.status(self._i)
        status = _STATUSES.get(value)
        if status is None:  # IntFlag construction is slow; there are few distinct values
            status = _STATUSES[value] = Status(value)
        return status

    @property
    def state(self) -> Optional[State]:
        """TCP, SCTP or DCCP state; None for other protocols."""
        if not self._has("state"):
            return None
        cls = STATE_ENUMS.get(self.proto)
        if cls is None:
            return None
        value = self._b.scalar(self._i, "state")
        try:
            return cls(value)  # type: ignore[return-value]
        except ValueError:
            return None

    @property
    def timeout(self) -> Optional[int]:
        """Seconds until the entry expires."""
        return self._opt("timeout")

    @property
    def mark(self) -> Optional[int]:
        """The connection mark (ctmark)."""
        return self._opt("mark")

    @property
    def zone(self) -> int:
        """The conntrack zone (0 is the default zone), whichever direction it
        applies to (see :attr:`orig_zone` and :attr:`reply_zone`)."""
        return self._b.scalar(self._i, "zone") if self._has("zone") else 0

    @property
    def orig_zone(self) -> Optional[int]:
        """The zone when it applies to the original direction only (conntrack's
        ``zone-orig=``, ``--orig-zone``), else None."""
        return self._b.tuple(self._i, "orig")[10]

    @property
    def reply_zone(self) -> Optional[int]:
        """The zone when it applies to the reply direction only (conntrack's
        ``zone-reply=``, ``--reply-zone``), else None."""
        return self._b.tuple(self._i, "reply")[10]

    @property
    def id(self) -> Optional[int]:
        """The kernel's id for this entry (stable while it lives)."""
        return self._opt("id")

    @property
    def use(self) -> Optional[int]:
        """The kernel's reference count of the entry."""
        return self._opt("use")

    @property
    def counters(self) -> Optional[Counters]:
        """Packets and bytes per direction, or None when accounting is off."""
        if not self._has("counters"):
            return None
        return Counters(*self._b.counters(self._i))

    @property
    def start(self) -> Optional[_dt.datetime]:
        """When the entry was created (needs nf_conntrack_timestamp=1)."""
        return _ts(self._opt("ts_start"))

    @property
    def stop(self) -> Optional[_dt.datetime]:
        """When the entry was destroyed (events only)."""
        return _ts(self._opt("ts_stop"))

    @property
    def labels(self) -> FrozenSet[int]:
        """The connlabel bit numbers that are set."""
        if not self._has("labels"):
            return frozenset()
        bits = int.from_bytes(self._b.labels(self._i), "little")
        return frozenset(n for n in range(128) if bits >> n & 1)

    @property
    def secctx(self) -> Optional[str]:
        """Security context (SELinux), if any."""
        return self._b.string(self._i, "secctx") if self._has("secctx") else None

    @property
    def helper(self) -> Optional[str]:
        """Name of the conntrack helper attached, if any."""
        return self._b.string(self._i, "helper") if self._has("helper") else None

    @property
    def master(self) -> Optional[FlowTuple]:
        """For an expected flow, the original tuple of its master."""
        if not self._has("master"):
            return None
        return _tuple_from(self._b.tuple(self._i, "master"))

    # -- convenience ---------------------------------------------------------

    @property
    def unreplied(self) -> bool:
        """True when no reply was seen (what `conntrack -L` marks [UNREPLIED])."""
        return not self.status & Status.SEEN_REPLY

    @property
    def assured(self) -> bool:
        """True when the entry is ASSURED (safe from early drop)."""
        return bool(self.status & Status.ASSURED)

    @property
    def snat(self) -> bool:
        """True when source NAT applies."""
        return bool(self.status & Status.SRC_NAT)

    @property
    def dnat(self) -> bool:
        """True when destination NAT applies."""
        return bool(self.status & Status.DST_NAT)

    def _nat_bits(self) -> Status:
        """SRC_NAT/DST_NAT as the tuples say: the reply is not the original's inverse."""
        o, r = self.orig, self.reply
        ports = self.proto in _PORT_PROTOS
        bits = Status(0)
        if r.src != o.dst or ports and r.sport != o.dport:
            bits |= Status.DST_NAT
        if r.dst != o.src or ports and r.dport != o.sport:
            bits |= Status.SRC_NAT
        return bits

    @property
    def key(self) -> Tuple[int, Proto, FlowTuple]:
        """What names the entry in the kernel: zone, protocol, original tuple."""
        return (self.zone, self.proto, self.orig)

    def _values(self) -> Tuple[Any, ...]:
        return (
            self.family, self.proto, self.orig, self.reply, self.status, self.state,
            self.timeout, self.mark, self.zone, self.orig_zone, self.reply_zone, self.id, self.use, self.counters,
            self.start, self.stop, self.labels, self.secctx, self.helper, self.master,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Flow):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (addresses as strings, enums as names)."""
        def tup(t: Optional[FlowTuple]) -> Optional[Dict[str, Any]]:
            if t is None:
                return None
            d: Dict[str, Any] = {"src": str(t.src), "dst": str(t.dst)}
            for name in ("sport", "dport", "icmp_type", "icmp_code", "icmp_id"):
                if getattr(t, name) is not None:
                    d[name] = getattr(t, name)
            return d

        state = self.state
        counters = self.counters
        start, stop = self.start, self.stop
        return {
            "family": self.family.name,
            "proto": self.proto.name,
            "orig": tup(self.orig),
            "reply": tup(self.reply),
            "status": [m.name for m in Status if m & self.status],
            "state": state.name if state is not None else None,
            "timeout": self.timeout,
            "mark": self.mark,
            "zone": self.zone,
            "orig_zone": self.orig_zone,
            "reply_zone": self.reply_zone,
            "id": self.id,
            "use": self.use,
            "counters": counters._asdict() if counters is not None else None,
            "start": start.isoformat() if start else None,
            "stop": stop.isoformat() if stop else None,
            "labels": sorted(self.labels),
            "secctx": self.secctx,
            "helper": self.helper,
            "master": tup(self.master),
        }

    def __str__(self) -> str:
        """The flow in `conntrack -L`'s one-line format."""
        status = self.status
        counters = self.counters
        proto = self.proto
        name = "unknown" if proto.name.startswith("proto_") else proto.name
        parts = ["%-8s %d" % (name, proto)]
        if self.timeout is not None:
            parts.append(str(self.timeout))
        state = self.state
        if state is not None:
            parts.append(state.name)
        parts.append(_tuple_text(self.orig))
        orig_zone, reply_zone = self.orig_zone, self.reply_zone
        if orig_zone is not None:
            parts.append("zone-orig=%d" % orig_zone)
        if counters is not None:
            parts.append("packets=%d bytes=%d" % (counters.orig_packets, counters.orig_bytes))
        if not status & Status.SEEN_REPLY:
            parts.append("[UNREPLIED]")
        parts.append(_tuple_text(self.reply))
        if reply_zone is not None:
            parts.append("zone-reply=%d" % reply_zone)
        if counters is not None:
            parts.append("packets=%d bytes=%d" % (counters.reply_packets, counters.reply_bytes))
        if status & Status.ASSURED:
            parts.append("[ASSURED]")
        if status & Status.HW_OFFLOAD:
            parts.append("[HW_OFFLOAD]")
        elif status & Status.OFFLOAD:
            parts.append("[OFFLOAD]")
        if self.mark is not None:
            parts.append("mark=%d" % self.mark)
        if self.secctx is not None:
            parts.append("secctx=%s" % self.secctx)
        if self.zone and orig_zone is None and reply_zone is None:
            parts.append("zone=%d" % self.zone)
        if self.helper is not None:
            parts.append("helper=%s" % self.helper)
        if self.use is not None:
            parts.append("use=%d" % self.use)
        return " ".join(parts)

    def __repr__(self) -> str:
        return "<Flow %s>" % self


def _ts(ns: Optional[int]) -> Optional[_dt.datetime]:
    if not ns:
        return None
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc)
