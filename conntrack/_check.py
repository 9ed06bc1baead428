"""Checks of user input shared by flows, filters and the sysctl setters (package-private).

Each check returns the value in the form the rest of the package uses, or
raises :class:`~conntrack.InvalidValue` / :class:`~conntrack.InvalidType`
naming the field (``exc.field``), before anything is sent to the kernel.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

from . import _binding
from .enums import SETTABLE_STATUS, Family, Proto, Status, parse_state, parse_status
from .errors import InvalidType, InvalidValue, keyword

if TYPE_CHECKING:
    from .flow import Flow

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

PORT_PROTOS = frozenset((Proto.TCP, Proto.UDP, Proto.UDPLITE, Proto.SCTP, Proto.DCCP))
"""Protocols whose tuples have ports."""


def check_int(value: Any, field: str, lo: int, hi: int, *, strings: bool = True, kernel: bool = False) -> int:
    """An int within [lo, hi], or ValueError/TypeError naming the field.

    *strings*: also take a number written as a str (``"0x10"``); *kernel*:
    call [lo, hi] "the kernel's range" (the sysctl setters' wording).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        if strings and isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise InvalidValue(keyword(field), "%s: %r is not a number" % (field, value)) from None
        else:
            raise InvalidType(keyword(field), "%s: expected an int, got %r" % (field, value))
    if not lo <= value <= hi:
        where = "the kernel's range" if kernel else "range"
        raise InvalidValue(keyword(field), "%s: %d is out of %s %d..%d" % (field, value, where, lo, hi))
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
            raise InvalidValue(keyword(field), "%s: %r is not an IPv4 or IPv6 address" % (field, value)) from None
    if family is not None and family_of(addr) != family:
        raise InvalidValue(
            keyword(field), "%s: %s is not an %s address" % (field, addr, "IPv4" if family == Family.IPV4 else "IPv6")
        )
    return addr


def labels_to_bytes(value: Any, field: str = "labels") -> bytes:
    """A 128-bit label set from bit numbers (an iterable, or a str of them
    separated by commas: ``"12"`` is bit 12) or an int bitmap."""
    if isinstance(value, int) and not isinstance(value, bool):
        bits = check_int(value, field, 0, (1 << 128) - 1)
    else:
        if isinstance(value, str):  # never its characters one by one: "12" is not bits 1 and 2
            value = [part.strip() for part in value.split(",")]
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
                raise InvalidValue("state", "state: needs the flow's protocol")
            fields[name] = int(parse_state(proto, value))
        elif name == "labels":
            fields[name] = labels_to_bytes(value)
        else:
            raise TypeError("unknown field %r" % name)
        present |= _binding.HAS[name]
    return present, fields


def status_names(bits: int) -> str:
    """``"SRC_NAT|DST_NAT"`` for a set of status bits (unknown ones in hex; ``""`` for none)."""
    return str(Status(bits)) if bits else ""


_PLAIN_STATUS = int(SETTABLE_STATUS | Status.CONFIRMED)


def check_create(flow: Flow) -> None:
    """ValueError when *flow* asks for status bits a create cannot set.

    The kernel sets CONFIRMED on insertion, and SRC_NAT/DST_NAT (with both
    NAT_DONE bits) when the reply tuple is translated; a user may set only
    ``SETTABLE_STATUS``.  Any other bit would be dropped without a word.
    """
    status = int(flow.status)
    if not status & ~_PLAIN_STATUS:  # the common case, without decoding the tuples
        return
    nat = nat_bits(flow)
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


def nat_bits(flow: Flow) -> Status:
    """SRC_NAT/DST_NAT as *flow*'s tuples say: the reply is not the original's inverse."""
    o, r = flow.orig, flow.reply
    ports = flow.proto in PORT_PROTOS
    bits = Status(0)
    if r.src != o.dst or ports and r.sport != o.dport:
        bits |= Status.DST_NAT
    if r.dst != o.src or ports and r.dport != o.sport:
        bits |= Status.SRC_NAT
    return bits


def family_of(addr: IPAddress) -> Family:
    """The Family of an address object."""
    return Family.IPV4 if addr.version == 4 else Family.IPV6
