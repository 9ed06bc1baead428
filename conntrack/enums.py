"""Enumerations for flows: address family, protocol, status bits, states.

Values come from the installed libnetfilter_conntrack and kernel headers
through the compiled module, never from a hand-copied table.

One convention for every enum of the package (these, :class:`conntrack.EventType`,
:class:`conntrack.health.Verdict`):

- Write members in UPPER_CASE, as the standard library's enums are
  (``Proto.TCP``, ``Family.IPV4``, ``TCPState.ESTABLISHED``, ``Status.ASSURED``).
- A member's ``name``, ``str()`` and JSON form (``to_dict()``) are the word
  conntrack(8) prints for it: ``tcp``, ``ipv4``, ``ESTABLISHED``,
  ``ASSURED|SEEN_REPLY``.  For :class:`Family`, :class:`Proto` and
  ``Verdict`` that word is lower case, so their lower-case spellings
  (``Proto.tcp``) are the members and the upper-case ones are aliases of
  them: both spellings work, ``Proto.TCP is Proto.tcp``.
- Parsing (``Filter(proto="TCP")``, ``parse_state(...)``) accepts any case.

The members are written out, one line per C constant with its docstring,
rather than built by a helper from a table of constant names: mypy, editors
and Sphinx only see members written in the class body.
"""

from __future__ import annotations

import enum
import socket
from typing import Dict, Type, TypeVar, Union

from ._binding import constant as _c
from .errors import InvalidType, InvalidValue, keyword

_E = TypeVar("_E", bound=enum.IntEnum)

_INT_FORMATS = frozenset("bcdeEfFgGnoxX%")


class NamedIntEnum(enum.IntEnum):
    """An IntEnum that prints as its member name on every Python.

    Python 3.11 changed ``str()`` and ``format()`` of IntEnum members to the
    number; ``print(flow.state)`` and ``f"{flow.state}"`` give
    ``ESTABLISHED`` here on 3.9 to 3.13.  A numeric format spec
    (``f"{proto:d}"``, ``"%d" % proto``) still gives the number.
    """

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in _INT_FORMATS:
            return int.__format__(int(self), spec)
        return format(self.name, spec)


class NamedIntFlag(enum.IntFlag):
    """An IntFlag that prints as its bit names joined by ``|`` (``0`` when none) on every Python."""

    def __str__(self) -> str:
        value = int(self)
        names = []
        for member in type(self).__members__.values():
            bit = int(member)
            if bit and bit & (bit - 1) == 0 and value & bit:
                names.append(member.name or hex(bit))
                value &= ~bit
        if value:
            names.append(hex(value))
        return "|".join(names) or "0"

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in _INT_FORMATS:
            return int.__format__(int(self), spec)
        return format(str(self), spec)


class Family(NamedIntEnum):
    """Address family of a flow."""

    ipv4 = _c("AF_INET")
    """IPv4 (AF_INET); also spelled ``Family.IPV4``."""
    ipv6 = _c("AF_INET6")
    """IPv6 (AF_INET6); also spelled ``Family.IPV6``."""

    IPV4 = ipv4
    IPV6 = ipv6


class Proto(NamedIntEnum):
    """Layer-4 protocol of a flow.

    Protocols without a name here (conntrack tracks any IP protocol
    generically) come back as pseudo-members named ``proto_N``.  Each
    member is also spelled in upper case (``Proto.TCP is Proto.tcp``).
    """

    icmp = _c("IPPROTO_ICMP")
    """ICMP."""
    tcp = _c("IPPROTO_TCP")
    """TCP."""
    udp = _c("IPPROTO_UDP")
    """UDP."""
    dccp = _c("IPPROTO_DCCP")
    """DCCP."""
    gre = _c("IPPROTO_GRE")
    """GRE."""
    icmpv6 = _c("IPPROTO_ICMPV6")
    """ICMPv6."""
    sctp = _c("IPPROTO_SCTP")
    """SCTP."""
    udplite = _c("IPPROTO_UDPLITE")
    """UDP-Lite."""

    ICMP = icmp
    TCP = tcp
    UDP = udp
    DCCP = dccp
    GRE = gre
    ICMPV6 = icmpv6
    SCTP = sctp
    UDPLITE = udplite

    @classmethod
    def _missing_(cls, value: object) -> Proto:
        if isinstance(value, int) and 0 <= value <= 255:
            member = int.__new__(cls, value)
            member._name_ = "proto_%d" % value
            member._value_ = value
            return member
        return None  # type: ignore[return-value]


class Status(NamedIntFlag):
    """The kernel's IPS_* status bits of an entry."""

    EXPECTED = _c("IPS_EXPECTED")
    """An expected connection (a helper's related flow)."""
    SEEN_REPLY = _c("IPS_SEEN_REPLY")
    """Packets were seen in both directions."""
    ASSURED = _c("IPS_ASSURED")
    """Assured: not dropped early when the table is full."""
    CONFIRMED = _c("IPS_CONFIRMED")
    """The entry is in the table (left the unconfirmed list)."""
    SRC_NAT = _c("IPS_SRC_NAT")
    """Source NAT applies."""
    DST_NAT = _c("IPS_DST_NAT")
    """Destination NAT applies."""
    SEQ_ADJUST = _c("IPS_SEQ_ADJUST")
    """TCP sequence numbers are adjusted."""
    SRC_NAT_DONE = _c("IPS_SRC_NAT_DONE")
    """Source NAT has been set up."""
    DST_NAT_DONE = _c("IPS_DST_NAT_DONE")
    """Destination NAT has been set up."""
    DYING = _c("IPS_DYING")
    """The entry is being destroyed."""
    FIXED_TIMEOUT = _c("IPS_FIXED_TIMEOUT")
    """The timeout is fixed (not refreshed by traffic)."""
    TEMPLATE = _c("IPS_TEMPLATE")
    """A template entry (for zones or helpers)."""
    UNTRACKED = _c("IPS_UNTRACKED")
    """Untracked (also NAT_CLASH on recent kernels)."""
    HELPER = _c("IPS_HELPER")
    """A helper was assigned explicitly."""
    OFFLOAD = _c("IPS_OFFLOAD")
    """Offloaded to the flowtable."""
    HW_OFFLOAD = _c("IPS_HW_OFFLOAD")
    """Offloaded to hardware."""


#: Status bits a create or an update may set: the kernel ignores the others
#: (IPS_UNCHANGEABLE_MASK) or refuses to change them (EXPECTED, CONFIRMED, DYING).
SETTABLE_STATUS = Status(~_c("IPS_UNCHANGEABLE_MASK") & sum(Status))


class TCPState(NamedIntEnum):
    """TCP conntrack states, as `conntrack -L` names them."""

    NONE = _c("TCP_CONNTRACK_NONE")
    """No state."""
    SYN_SENT = _c("TCP_CONNTRACK_SYN_SENT")
    """SYN seen, no reply."""
    SYN_RECV = _c("TCP_CONNTRACK_SYN_RECV")
    """SYN/ACK seen."""
    ESTABLISHED = _c("TCP_CONNTRACK_ESTABLISHED")
    """Handshake complete."""
    FIN_WAIT = _c("TCP_CONNTRACK_FIN_WAIT")
    """FIN seen in one direction."""
    CLOSE_WAIT = _c("TCP_CONNTRACK_CLOSE_WAIT")
    """FIN seen, waiting for the other side."""
    LAST_ACK = _c("TCP_CONNTRACK_LAST_ACK")
    """FIN in both directions, last ACK pending."""
    TIME_WAIT = _c("TCP_CONNTRACK_TIME_WAIT")
    """Closed, lingering."""
    CLOSE = _c("TCP_CONNTRACK_CLOSE")
    """Closed (RST seen)."""
    SYN_SENT2 = _c("TCP_CONNTRACK_SYN_SENT2")
    """Simultaneous open."""
    LISTEN = _c("TCP_CONNTRACK_LISTEN")
    """The old name of state 9, which conntrack(8) accepts: an alias of SYN_SENT2."""


class SCTPState(NamedIntEnum):
    """SCTP conntrack states."""

    NONE = _c("SCTP_CONNTRACK_NONE")
    """No state."""
    CLOSED = _c("SCTP_CONNTRACK_CLOSED")
    """Closed."""
    COOKIE_WAIT = _c("SCTP_CONNTRACK_COOKIE_WAIT")
    """INIT sent."""
    COOKIE_ECHOED = _c("SCTP_CONNTRACK_COOKIE_ECHOED")
    """COOKIE ECHO sent."""
    ESTABLISHED = _c("SCTP_CONNTRACK_ESTABLISHED")
    """Association up."""
    SHUTDOWN_SENT = _c("SCTP_CONNTRACK_SHUTDOWN_SENT")
    """SHUTDOWN sent."""
    SHUTDOWN_RECD = _c("SCTP_CONNTRACK_SHUTDOWN_RECD")
    """SHUTDOWN received."""
    SHUTDOWN_ACK_SENT = _c("SCTP_CONNTRACK_SHUTDOWN_ACK_SENT")
    """SHUTDOWN ACK sent."""
    HEARTBEAT_SENT = _c("SCTP_CONNTRACK_HEARTBEAT_SENT")
    """HEARTBEAT sent (secondary path)."""


class DCCPState(NamedIntEnum):
    """DCCP conntrack states."""

    NONE = _c("DCCP_CONNTRACK_NONE")
    """No state."""
    REQUEST = _c("DCCP_CONNTRACK_REQUEST")
    """REQUEST sent."""
    RESPOND = _c("DCCP_CONNTRACK_RESPOND")
    """RESPONSE sent."""
    PARTOPEN = _c("DCCP_CONNTRACK_PARTOPEN")
    """Partly open."""
    OPEN = _c("DCCP_CONNTRACK_OPEN")
    """Open."""
    CLOSEREQ = _c("DCCP_CONNTRACK_CLOSEREQ")
    """CLOSEREQ sent."""
    CLOSING = _c("DCCP_CONNTRACK_CLOSING")
    """Closing."""
    TIMEWAIT = _c("DCCP_CONNTRACK_TIMEWAIT")
    """Time-wait."""


State = Union[TCPState, SCTPState, DCCPState]

STATE_ENUMS = {
    Proto.TCP: TCPState,
    Proto.SCTP: SCTPState,
    Proto.DCCP: DCCPState,
}


def _names(cls: Type[enum.Enum]) -> str:
    """The names a message lists: each member once (``tcp``, not also ``TCP``), other aliases too (``LISTEN``)."""
    seen: Dict[str, str] = {}
    for name in cls.__members__:
        seen.setdefault(name.lower(), name)
    return ", ".join(seen.values())


def _parse_enum(cls: Type[_E], value: object, field: str) -> _E:
    """Accept a member, its name (any case) or its integer value."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        for name, member in cls.__members__.items():  # aliases too (TCPState.LISTEN)
            if name.lower() == key:
                return member
        raise InvalidValue(keyword(field), "%s: unknown name %r (expected one of: %s)" % (field, value, _names(cls)))
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return cls(value)
        except ValueError:
            raise InvalidValue(keyword(field), "%s: %d is not a valid %s" % (field, value, cls.__name__)) from None
    raise InvalidType(keyword(field), "%s: expected %s, a name or an int, got %r" % (field, cls.__name__, value))


def parse_proto(value: object, field: str = "proto") -> Proto:
    """A Proto from a member, a number, or a name: the library's (``"udp"``,
    ``"proto_2"`` as it prints unnamed ones) or one from /etc/protocols
    (``"igmp"``), as conntrack(8) accepts them."""
    if isinstance(value, str) and value.strip().lower() not in Proto.__members__:
        key = value.strip().lower()
        if key.startswith("proto_") and key[6:].isdigit():
            return _parse_enum(Proto, int(key[6:]), field)
        try:
            return Proto(socket.getprotobyname(key))
        except (OSError, ValueError):
            # no such name, or no /etc/protocols (Debian's netbase): the library's names
            raise InvalidValue(keyword(field), "%s: unknown protocol %r (expected a number, proto_N, one of %s, "
                               "or a name from /etc/protocols)" % (field, value, _names(Proto))) from None
    return _parse_enum(Proto, value, field)


def parse_family(value: object, field: str = "family") -> Family:
    """A Family from a member, ``"ipv4"``/``"ipv6"`` (or ``4``/``6``) or AF_* number."""
    if value in (4, "4", "inet"):
        return Family.IPV4
    if value in (6, "6", "inet6"):
        return Family.IPV6
    return _parse_enum(Family, value, field)


def parse_state(proto: Proto, value: object, field: str = "state") -> State:
    """A state of *proto* from a member, a name such as ``"ESTABLISHED"`` or a number."""
    cls = STATE_ENUMS.get(proto)
    if cls is None:
        raise InvalidValue(keyword(field), "%s: protocol %s has no states" % (field, proto.name))
    if isinstance(value, enum.IntEnum) and not isinstance(value, cls):
        raise InvalidValue(keyword(field), "%s: %r is not a %s state" % (field, value, proto.name))
    return _parse_enum(cls, value, field)  # type: ignore[return-value]


def parse_status(value: object, field: str = "status") -> Status:
    """A Status from a Status, an int, or names like ``"ASSURED|SEEN_REPLY"``."""
    if isinstance(value, Status):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0 or value > 0xFFFFFFFF:
            raise InvalidValue(keyword(field), "%s: %d is out of range 0..0xffffffff" % (field, value))
        return Status(value)
    if isinstance(value, str):
        if not value.strip():
            raise InvalidValue(keyword(field), "%s: empty (give bit names such as ASSURED|SEEN_REPLY, or a number)" % field)
        try:
            return parse_status(int(value.strip(), 0), field)
        except ValueError as exc:
            if "out of range" in str(exc):
                raise
        result = Status(0)
        for part in value.replace(",", "|").split("|"):
            part = part.strip()
            if not part or part.upper() == "UNSET":  # conntrack(8)'s name for no bits
                continue
            member = Status.__members__.get(part.upper())
            if member is None:
                names = ", ".join(Status.__members__)
                raise InvalidValue(
                    keyword(field), "%s: unknown status bit %r (expected names from: %s)" % (field, part, names)
                )
            result |= member
        return result
    if isinstance(value, (list, tuple, set, frozenset)):
        result = Status(0)
        for part in value:
            result |= parse_status(part, field)
        return result
    raise InvalidType(keyword(field), "%s: expected Status, an int or names, got %r" % (field, value))
