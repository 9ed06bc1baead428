"""Flows: one conntrack entry as an immutable Python object.

A :class:`Flow` read from the kernel is a small handle on a record in a
batch that the C dump loop filled; its fields are decoded when read.  A
flow built by a user (``Flow(proto="udp", src=..., ...)``) is validated at
once and carries the same kind of record, ready to send.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from itertools import repeat
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Tuple,
    Union,
)

from . import _binding
from ._check import PORT_PROTOS as _PORT_PROTOS
from ._check import IPAddress as IPAddress  # re-exported: annotations of the public API use it
from ._check import check_address, check_int, check_port, entry_fields, family_of
from ._json import plain
from .enums import (
    STATE_ENUMS,
    Family,
    Proto,
    State,
    Status,
    parse_family,
    parse_proto,
)
from .errors import InvalidValue

AddressLike = Union[str, bytes, int, IPAddress]

_HAS = _binding.HAS
_ICMP_PROTOS = frozenset((Proto.ICMP, Proto.ICMPV6))
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

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict: addresses as text, and only the fields the protocol has."""
        return {name: plain(value) for name, value in zip(self._fields, self) if value is not None}


class Counters(NamedTuple):
    """Packet and byte counters per direction (needs nf_conntrack_acct=1)."""

    orig_packets: int
    orig_bytes: int
    reply_packets: int
    reply_bytes: int


# -- address objects, built once per distinct address --------------------------
#
# Tables repeat addresses heavily, and building an ipaddress object costs more
# than the rest of a flow's decoding.  Flows read from the kernel share one
# object per distinct address, kept in a bounded cache (emptied when full).

ADDRESS_CACHE_SIZE = 1 << 16
"""Distinct addresses kept per family before the cache is emptied and refilled."""

_A4: Dict[int, ipaddress.IPv4Address] = {}
_A6: Dict[bytes, ipaddress.IPv6Address] = {}


def _fast_v4(value: int) -> ipaddress.IPv4Address:
    """IPv4Address from a 32-bit int without __init__'s checks (the value
    comes from a 4-byte field)."""
    a = object.__new__(ipaddress.IPv4Address)
    a._ip = value  # type: ignore[attr-defined]
    return a


def _v4_maker() -> Callable[[int], ipaddress.IPv4Address]:
    """_fast_v4 when this Python's IPv4Address is built that way, else the class."""
    try:
        probe, ref = _fast_v4(0x0A000102), ipaddress.IPv4Address("10.0.1.2")
        if probe == ref and str(probe) == "10.0.1.2" and hash(probe) == hash(ref) and probe.packed == ref.packed:
            return _fast_v4
    except Exception:  # pragma: no cover - an ipaddress without the _ip slot
        pass
    return ipaddress.IPv4Address  # pragma: no cover


_new_v4 = _v4_maker()


def _addrs4(values: List[int]) -> List[ipaddress.IPv4Address]:
    """IPv4Address objects for address values, from the cache."""
    cache = _A4
    got: List[Any] = list(map(cache.get, values))
    misses = [i for i, a in enumerate(got) if a is None]
    if misses:
        if len(cache) + len(misses) > ADDRESS_CACHE_SIZE:
            cache.clear()
        fast = _new_v4 is _fast_v4
        new, cls = object.__new__, ipaddress.IPv4Address
        for i in misses:
            v = values[i]
            a = cache.get(v)
            if a is None:
                if fast:
                    a = cache[v] = new(cls)
                    a._ip = v  # type: ignore[attr-defined]  # what _fast_v4 does, inlined
                else:  # pragma: no cover
                    a = cache[v] = _new_v4(v)
            got[i] = a
    return got


def _make_addr(family: int, raw: bytes) -> IPAddress:
    if family == Family.ipv4:
        v = int.from_bytes(raw, "big")
        a4 = _A4.get(v)
        if a4 is None:
            if len(_A4) >= ADDRESS_CACHE_SIZE:
                _A4.clear()
            a4 = _A4[v] = _new_v4(v)
        return a4
    a6 = _A6.get(raw)
    if a6 is None:
        if len(_A6) >= ADDRESS_CACHE_SIZE:
            _A6.clear()
        a6 = _A6[raw] = ipaddress.IPv6Address(raw)
    return a6


def _tuple_text(t: FlowTuple) -> str:
    parts = ["src=%s" % t.src, "dst=%s" % t.dst]
    if t.icmp_type is not None:
        parts.append("type=%d code=%d id=%d" % (t.icmp_type, t.icmp_code or 0, t.icmp_id or 0))
    elif t.sport is not None:
        parts.append("sport=%d dport=%d" % (t.sport, t.dport or 0))
    return " ".join(parts)


_OFF = _binding.OFFSET
_PORT_NUMS = frozenset(int(p) for p in _PORT_PROTOS)
_AF_INET = int(Family.ipv4)
_HAS_STATE = _HAS["state"]
_tuple_new = tuple.__new__


def _state_table() -> Dict[Tuple[int, int, int], State]:
    """State enum members by (CTPY_HAS_STATE, protocol number, state value)."""
    out: Dict[Tuple[int, int, int], State] = {}
    for proto, cls in STATE_ENUMS.items():
        for value in range(256):
            try:
                out[(_HAS_STATE, int(proto), value)] = cls(value)  # type: ignore[assignment]
            except ValueError:
                continue
    return out


_STATE_BY_KEY = _state_table()


def _decode_tuples(b: _binding.Batch, which: str) -> List[FlowTuple]:
    """One direction's FlowTuple for every record of a batch, in bulk: the
    fields are read as columns in C; IPv4 flows with ports (nearly every
    entry of a real table) are assembled without a Python loop, the others
    (IPv6, ICMP, no ports) one by one."""
    col = b.column
    fams = col(_OFF[which + ".family"], "B")
    protos = col(_OFF[which + ".proto"], "B")
    icmps = col(_OFF[which + ".has_icmp"], "B")
    if set(fams) == {_AF_INET} and _PORT_NUMS.issuperset(protos) and not any(icmps):
        odd: Iterable[int] = ()
    else:
        odd = [i for i, (f, p, c) in enumerate(zip(fams, protos, icmps)) if f != _AF_INET or p not in _PORT_NUMS or c]
    if len(odd) == b.n:  # type: ignore[arg-type]
        out = [_tuple_from(b.tuple(i, which)) for i in range(b.n)]
    else:
        none = repeat(None)
        src = _addrs4(col(_OFF[which + ".src"], "I", True))
        dst = _addrs4(col(_OFF[which + ".dst"], "I", True))
        out = list(map(_tuple_new, repeat(FlowTuple),
                       zip(src, dst, col(_OFF[which + ".sport"], "H"), col(_OFF[which + ".dport"], "H"),
                           none, none, none)))
        for i in odd:
            out[i] = _tuple_from(b.tuple(i, which))
    if which == "orig":
        b.origs = out
    else:
        b.replies = out
    return out


def _decode_states(b: _binding.Batch) -> List[Optional[State]]:
    col = b.column
    keys = zip(map(_HAS_STATE.__and__, col(_OFF["present"], "I")), col(_OFF["orig.proto"], "B"),
               col(_OFF["state"], "B"))
    out: List[Optional[State]] = list(map(_STATE_BY_KEY.get, keys))
    b.states = out
    return out


# -- plain rows (Conntrack.dump_tuples) ---------------------------------------------

#: The fields :meth:`Conntrack.dump_tuples` can return, and where the object API keeps each.
ROW_FIELDS = {
    "family": "family", "proto": "proto",
    "src": "orig.src", "dst": "orig.dst", "sport": "orig.sport", "dport": "orig.dport",
    "reply_src": "reply.src", "reply_dst": "reply.dst", "reply_sport": "reply.sport", "reply_dport": "reply.dport",
    "state": "state", "status": "status", "mark": "mark", "timeout": "timeout", "zone": "zone", "id": "id",
}


def _odd_rows(b: _binding.Batch, which: str) -> Optional[List[int]]:
    """Indexes of the records whose *which* tuple the IPv4 columns cannot
    describe (IPv6, ICMP, no ports); None when that is all of them."""
    col = b.column
    fams = col(_OFF[which + ".family"], "B")
    protos = col(_OFF[which + ".proto"], "B")
    icmps = col(_OFF[which + ".has_icmp"], "B")
    if set(fams) == {_AF_INET} and _PORT_NUMS.issuperset(protos) and not any(icmps):
        return []
    odd = [i for i, (f, p, c) in enumerate(zip(fams, protos, icmps)) if f != _AF_INET or p not in _PORT_NUMS or c]
    return None if len(odd) == b.n else odd


def _enum_column(values: List[int], cache: Dict[int, Any], make: Callable[[int], Any]) -> List[Any]:
    for v in set(values).difference(cache):
        cache[v] = make(v)
    return list(map(cache.__getitem__, values))


def _optional_column(b: _binding.Batch, name: str) -> List[Optional[int]]:
    values: List[Optional[int]] = b.column(_OFF[name], "I")  # type: ignore[assignment]
    bit = _HAS[name]
    presents = b.column(_OFF["present"], "I")
    if all(map(bit.__and__, presents)):
        return values
    return [v if p & bit else None for v, p in zip(values, presents)]


def rows(b: _binding.Batch, fields: Tuple[str, ...], int_addresses: bool = False) -> Iterator[Tuple[Any, ...]]:
    """One plain tuple per record of a batch, the values of *fields* (names of
    :data:`ROW_FIELDS`), each equal to what the object API returns (addresses
    as ints when *int_addresses*)."""
    col = b.column
    cols: List[List[Any]] = []
    odd: set = set()
    slow = False
    for name in fields:
        if name in ("src", "dst", "sport", "dport", "reply_src", "reply_dst", "reply_sport", "reply_dport"):
            which, _, part = ("orig_" + name if not name.startswith("reply_") else name).partition("_")
            bad = _odd_rows(b, which)
            if bad is None:
                slow = True
                break
            odd.update(bad)
            if part in ("src", "dst"):
                values = col(_OFF[which + "." + part], "I", True)
                cols.append(values if int_addresses else _addrs4(values))
            else:
                cols.append(col(_OFF[which + "." + part], "H"))
        elif name == "state":
            keys = zip(map(_HAS_STATE.__and__, col(_OFF["present"], "I")), col(_OFF["orig.proto"], "B"),
                       col(_OFF["state"], "B"))
            cols.append(list(map(_STATE_BY_KEY.get, keys)))
        elif name == "status":
            cols.append(_enum_column(col(_OFF["status"], "I"), _STATUSES, Status))
        elif name == "proto":
            cols.append(_enum_column(col(_OFF["orig.proto"], "B"), _PROTOS, Proto))
        elif name == "family":
            cols.append(_enum_column(col(_OFF["orig.family"], "B"), _FAMILIES, Family))
        elif name == "zone":
            zones = col(_OFF["zone"], "H")
            bit = _HAS["zone"]
            cols.append([z if p & bit else 0 for z, p in zip(zones, col(_OFF["present"], "I"))]
                        if any(zones) else zones)
        else:
            cols.append(_optional_column(b, name))
    if slow:
        out: List[Tuple[Any, ...]] = [_row_of(Flow._from_batch(b, i), fields, int_addresses) for i in range(b.n)]
        return iter(out)
    if not odd:
        return zip(*cols)
    out = list(zip(*cols))
    for i in odd:
        out[i] = _row_of(Flow._from_batch(b, i), fields, int_addresses)
    return iter(out)


_ADDRESS_FIELDS = frozenset(("src", "dst", "reply_src", "reply_dst"))


def _row_of(f: Flow, fields: Tuple[str, ...], int_addresses: bool = False) -> Tuple[Any, ...]:
    """A row through the object API (the records the columns cannot describe)."""
    out = []
    for name in fields:
        obj: Any = f
        for attr in ROW_FIELDS[name].split("."):
            obj = getattr(obj, attr)
        out.append(int(obj) if int_addresses and name in _ADDRESS_FIELDS else obj)
    return tuple(out)


def _tuple_from(v: _binding.TupleValues) -> FlowTuple:
    src, dst = _make_addr(v.family, v.src), _make_addr(v.family, v.dst)
    if v.has_icmp:
        return FlowTuple(src, dst, None, None, v.icmp_type, v.icmp_code, v.icmp_id)
    if v.proto in _PORT_PROTOS:
        return FlowTuple(src, dst, v.sport, v.dport)
    return FlowTuple(src, dst)


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
        fam = family_of(s)
        d = check_address(dst, "dst", fam)
        rs = check_address(reply_src, "reply_src", fam) if reply_src is not None else d
        rd = check_address(reply_dst, "reply_dst", fam) if reply_dst is not None else s
        if p == Proto.icmp and fam != Family.ipv4:
            raise InvalidValue("proto", "proto: icmp needs IPv4 addresses (use icmpv6)")
        if p == Proto.icmpv6 and fam != Family.ipv6:
            raise InvalidValue("proto", "proto: icmpv6 needs IPv6 addresses (use icmp)")

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
                raise InvalidValue("helper", "helper: expected a helper name of 1..15 bytes, got %r" % (helper,))
            present |= _HAS["helper"]

        b = _binding.single()
        itype, icode, iid = icmp
        b.set_tuple(0, "orig", _binding.TupleValues(
            family=int(fam), proto=int(p), src=s.packed, dst=d.packed, sport=orig_ports[0], dport=orig_ports[1],
            icmp_type=itype, icmp_code=icode, icmp_id=iid, has_icmp=has_icmp, zone=oz))
        b.set_tuple(0, "reply", _binding.TupleValues(
            family=int(fam), proto=int(p), src=rs.packed, dst=rd.packed, sport=reply_ports[0], dport=reply_ports[1],
            icmp_type=(_ICMP_REPLY if p == Proto.icmp else _ICMPV6_REPLY).get(itype, itype), icmp_code=icode,
            icmp_id=iid, has_icmp=has_icmp, zone=rz))
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
        """Address family (``Family.IPV4`` or ``Family.IPV6``)."""
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
        t = self._b.origs
        if t is None:
            t = _decode_tuples(self._b, "orig")
        return t[self._i]  # type: ignore[no-any-return]

    @property
    def reply(self) -> FlowTuple:
        """The reply direction (as answers are expected)."""
        t = self._b.replies
        if t is None:
            t = _decode_tuples(self._b, "reply")
        return t[self._i]  # type: ignore[no-any-return]

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
        s = self._b.states
        if s is None:
            s = _decode_states(self._b)
        return s[self._i]  # type: ignore[no-any-return]

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
        return self._b.tuple_zone(self._i, "orig")

    @property
    def reply_zone(self) -> Optional[int]:
        """The zone when it applies to the reply direction only (conntrack's
        ``zone-reply=``, ``--reply-zone``), else None."""
        return self._b.tuple_zone(self._i, "reply")

    @property
    def id(self) -> Optional[int]:
        """The kernel's id for this entry (stable while it lives).

        A 32-bit hash, not a unique number: two live entries can share one
        (among n entries about n*n/2**33 pairs do, some 116 in a million).
        To tell entries apart, in a dict for instance, use :attr:`key`.
        """
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

    @property
    def key(self) -> Tuple[int, Proto, FlowTuple]:
        """What names the entry in the kernel: the zone of the original
        direction, protocol, original tuple.  No two live entries of a
        namespace share it (the kernel finds an entry by these and refuses a
        second one), so it is the dict key for flows, where :attr:`id` is not."""
        return (0 if self.reply_zone is not None else self.zone, self.proto, self.orig)

    def _values(self) -> Tuple[Any, ...]:  # in _FIELD_NAMES' order
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
        """A JSON-ready dict of every field, by the package's one JSON convention
        (:ref:`json`): addresses as text, enums as their names, times in ISO 8601."""
        return dict(zip(_FIELD_NAMES, map(plain, self._values())))

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


# -- the record layer's hooks: a Flow is a (batch, index) pair ---------------------
# For the package's modules that make flows from records or send a flow's record
# (table, events, features); not part of the documented API.


def flow_at(b: _binding.Batch, i: int) -> Flow:
    """The flow of record *i* of batch *b* (nothing decoded yet)."""
    return Flow._from_batch(b, i)


def record_of(f: Flow) -> Tuple[_binding.Batch, int]:
    """The batch and the index that hold *f*'s record."""
    return f._b, f._i


def flows_in(batches: Iterable[_binding.Batch], where: Optional[Callable[[Flow], bool]],
             finished: Optional[Callable[[], None]] = None) -> Iterator[Flow]:
    """Every record of *batches* as a :class:`Flow`, kept when *where* (if
    given) says so, then ``finished()``: a dump's loop, one object of two
    slots per record (one generator, so no delegation cost per flow)."""
    new = Flow.__new__
    for b in batches:
        for i in range(b.n):
            f = new(Flow)
            f._b = b
            f._i = i
            if where is None or where(f):
                yield f
    if finished is not None:
        finished()


_FIELD_NAMES = ("family", "proto", "orig", "reply", "status", "state", "timeout", "mark", "zone", "orig_zone",
                "reply_zone", "id", "use", "counters", "start", "stop", "labels", "secctx", "helper", "master")
"""The keys of :meth:`Flow.to_dict`, in the order of ``Flow._values()``."""


def _ts(ns: Optional[int]) -> Optional[_dt.datetime]:
    if not ns:
        return None
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc)
