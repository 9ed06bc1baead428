"""Filters: which flows a dump, count or bulk delete applies to.

A :class:`Filter` is built from keywords (strings accepted wherever a
person would type one) and compiled, per handle, into a
:class:`~conntrack.plan.Plan`: what the kernel filters (family, mark,
status, zone, exact tuple parts, when the running kernel can) and what the
C layer checks on every parsed record (everything, so the answer never
depends on the kernel).  Python never looks at a record that does not match.

Every keyword is declared once, in :data:`FIELDS`: how it is read, shown,
offered on the command line and compiled.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

from . import _binding
from ._check import PORT_PROTOS as _PORT_PROTOS
from ._check import IPAddress, check_address, check_int, check_port, labels_to_bytes
from .enums import Family, Proto, State, Status, parse_family, parse_proto, parse_state, parse_status
from .errors import InvalidType, InvalidValue, keyword
from .features import KernelFeatures
from .plan import BPFPart, CheckPart, KernelPart, NatMatch, Network, Plan, Selection, TuplePart

PortSpec = Union[int, str, Tuple[int, int], range]


def _nat(value: Any, field_name: str) -> NatMatch:
    """``True`` (any NAT), an address, ``"ADDR:PORT"``, ``"[V6ADDR]:PORT"``,
    ``":PORT"``, or an (address, port) pair where either may be None."""
    if value is True:
        return NatMatch()
    if isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidValue(keyword(field_name), "%s: expected (address, port), got %r" % (field_name, value))
        addr, port = value
    elif isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        addr, port = value, None
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            inner, sep, rest = text[1:].partition("]")
            if not sep or rest and not rest.startswith(":"):
                raise InvalidValue(keyword(field_name), "%s: %r is not [IPV6] or [IPV6]:PORT" % (field_name, value))
            addr, port = inner, rest[1:] if rest else None
        elif text.count(":") == 1:
            addr, _, port = text.partition(":")
            addr = addr or None
        else:
            addr, port = text, None
        if port == "":
            raise InvalidValue(keyword(field_name), "%s: %r has an empty port" % (field_name, value))
        if addr is None and port is None:
            raise InvalidValue(keyword(field_name), "%s: %r gives no address and no port" % (field_name, value))
    else:
        raise InvalidType(keyword(field_name),
                      "%s: expected True, an address or \"ADDR:PORT\", got %r" % (field_name, value))
    return NatMatch(check_address(addr, field_name) if addr is not None else None,
                    check_port(port, field_name + " port") if port is not None else None)

_KERNEL_PORT_PROTOS = (Proto.tcp, Proto.udp)  # the kernel's tuple filter compares ports only for these



def _network(value: Any, field_name: str) -> Network:
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(value)
    try:
        return ipaddress.ip_network(value, strict=False)
    except (ValueError, TypeError):
        raise InvalidValue(keyword(field_name),
                           "%s: %r is not an address or CIDR network" % (field_name, value)) from None


def _ports(value: PortSpec, field_name: str) -> Tuple[int, int]:
    if isinstance(value, range):
        if value.step != 1 or len(value) == 0:
            raise InvalidValue(keyword(field_name),
                               "%s: a range of ports needs step 1 and at least one port" % field_name)
        lo, hi = value.start, value.stop - 1
    elif isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidValue(keyword(field_name), "%s: expected (low, high), got %r" % (field_name, value))
        lo, hi = value
    elif isinstance(value, str) and "-" in value:
        a, _, b = value.partition("-")
        lo, hi = a.strip(), b.strip()  # type: ignore[assignment]
    else:
        lo = hi = value  # type: ignore[assignment]
    lo, hi = check_port(lo, field_name), check_port(hi, field_name)
    if lo > hi:
        raise InvalidValue(keyword(field_name), "%s: empty port range %d-%d" % (field_name, lo, hi))
    return lo, hi


def _masked(value: Any, field_name: str, bits: int) -> Tuple[int, int]:
    top = (1 << bits) - 1
    if isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidValue(keyword(field_name), "%s: expected (value, mask), got %r" % (field_name, value))
        val, mask = value
    elif isinstance(value, str) and "/" in value:
        val, _, mask = value.partition("/")
    else:
        val, mask = value, top
    v = check_int(val.strip() if isinstance(val, str) else val, field_name, 0, top)
    m = check_int(mask.strip() if isinstance(mask, str) else mask, field_name + " mask", 0, top)
    if v & ~m:
        # read literally it matches nothing; masking the value would widen the match
        raise InvalidValue(keyword(field_name),
                           "%s: value %#x has bits outside the mask %#x (it can never match)" % (field_name, v, m))
    return v, m


def _flag(value: Any, field_name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidType(keyword(field_name), "%s: expected True, False or None, got %r" % (field_name, value))
    return value


def _state_items(value: Any, field_name: str) -> Tuple[Any, ...]:
    """The states as given (read against the protocol in ``Filter.__init__``)."""
    items = (value,) if isinstance(value, (str, int)) else tuple(value)
    if not items:
        raise InvalidValue(keyword(field_name), "%s: give at least one state" % field_name)
    return items


def _mark(value: Any, field_name: str) -> Tuple[int, int]:
    return _masked(value, field_name, 32)


def _zone(value: Any, field_name: str) -> int:
    return check_int(value, field_name, 0, 0xFFFF)


def _direction_zone(value: Any, field_name: str) -> int:
    # a zone of one direction only (conntrack's --orig-zone/--reply-zone; 0 is no zone)
    return check_int(value, field_name, 1, 0xFFFF)


def _labels(value: Any, field_name: str) -> bytes:
    return labels_to_bytes(value, field_name)


def _show_net(net: Network) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _show_ports(rng: Tuple[int, int]) -> str:
    return "%d" % rng[0] if rng[0] == rng[1] else "%d-%d" % rng


def _show_labels(raw: bytes) -> str:
    bits = int.from_bytes(raw, "little")
    return ",".join(str(i) for i in range(128) if bits >> i & 1) or "none"


class Carrier(NamedTuple):
    """A kernel filter that can carry a field: the feature flags that say
    whether the running kernel honours it on a dump and on a flush."""

    dump: Optional[str]
    """The :class:`KernelFeatures` flag for dumps (None: always honoured)."""
    flush: str
    """The flag for flushes: a flush may rely on the field only then."""


FAMILY = Carrier(None, "flush_family")  # the request header's family
MARK = Carrier("dump_mark", "flush_mark")  # CTA_MARK + CTA_MARK_MASK
STATUS = Carrier("dump_status", "flush_status")  # CTA_STATUS + CTA_STATUS_MASK, one for every status field
ZONE = Carrier("dump_zone", "flush_zone")  # CTA_ZONE
TUPLE = Carrier("dump_tuple", "flush_tuple")  # CTA_FILTER: exact tuple parts only, the family known


class Option(NamedTuple):
    """One command-line spelling of a field (``pyconntrack list`` and friends)."""

    flags: Tuple[str, ...]
    help: str
    metavar: Optional[str] = None
    """None: the option takes no value and stands for ``const``."""
    const: Any = None
    """With a metavar: the value when the option is given alone (``--src-nat``)."""
    repeat: bool = False
    """May be given many times; the values are collected in a list."""


def _never(value: Any) -> bool:
    return False


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Field:
    """One :class:`Filter` keyword, declared once.

    The constructor reads it with ``parse``, :attr:`Filter.matches_everything`
    asks ``empty``, :meth:`Filter.compile` sends it to the kernel through
    ``carrier`` (None: the C check only; per-kind limits are in
    ``compile``), ``explain`` shows it as ``name=show(value)``, and the
    command line offers ``options``.  Cross-field rules (family from
    addresses, state needing a protocol, flags against status) are plain
    code in :class:`Filter`.
    """

    name: str
    parse: Callable[[Any, str], Any]
    """The keyword's value -> the stored value; raises ``InvalidValue``/``InvalidType`` naming the field."""
    options: Tuple[Option, ...]
    show: Callable[[Any], str] = str
    carrier: Optional[Carrier] = None
    bpf: bool = False
    """An event socket's BPF program can check it (when, is decided in ``_compile_events``)."""
    empty: Callable[[Any], bool] = _never
    """True for a stored value that restricts nothing (a field restricts by default)."""
    keyword: Callable[[Any], Any] = _same
    """The stored value back as a keyword value the constructor accepts."""

    def text(self, value: Any) -> str:
        return "%s=%s" % (self.name, self.show(value))


def _yes_no(name: str, yes: str, no: str) -> Tuple[Option, ...]:
    return (Option(("--" + name,), yes, const=True), Option(("--no-" + name,), no, const=False))


def _nat_options(flag: str, what: str) -> Tuple[Option, ...]:
    return (Option((flag,), "only entries with %s (to ADDR[:PORT] when given; [IPV6]:PORT), "
                            "as conntrack(8) compares the reply tuple" % what, "ADDR[:PORT]", const=True),)


def _net_options(flags: Tuple[str, ...], what: str) -> Tuple[Option, ...]:
    return (Option(flags, "%s address or CIDR network" % what, "ADDR[/LEN]"),)


# The table: one entry per Filter keyword, in the order of Filter's fields (its repr).
FIELDS: Tuple[Field, ...] = (
    Field("family", parse_family, (Option(("-f", "--family"), "address family", "ipv4|ipv6"),),
          carrier=FAMILY),
    Field("proto", parse_proto,
          (Option(("-p", "--proto"), "layer-4 protocol: tcp, udp, icmp, sctp, ... or a number", "PROTO"),),
          carrier=TUPLE, bpf=True),
    Field("src", _network, _net_options(("-s", "--src"), "original source"), show=_show_net, carrier=TUPLE, bpf=True),
    Field("dst", _network, _net_options(("-d", "--dst"), "original destination"), show=_show_net, carrier=TUPLE, bpf=True),
    Field("reply_src", _network, _net_options(("--reply-src",), "reply source"), show=_show_net, carrier=TUPLE),
    Field("reply_dst", _network, _net_options(("--reply-dst",), "reply destination"), show=_show_net, carrier=TUPLE),
    Field("sport", _ports, (Option(("--sport",), "original source port or range", "PORT|LO-HI"),),
          show=_show_ports, carrier=TUPLE),
    Field("dport", _ports, (Option(("--dport",), "original destination port or range", "PORT|LO-HI"),),
          show=_show_ports, carrier=TUPLE),
    Field("state", _state_items,
          (Option(("--state",), "connection state, e.g. ESTABLISHED (TCP unless --proto says otherwise); "
                                "repeat or separate with commas for any of several", "STATE[,STATE...]",
                  repeat=True),),
          show=lambda states: ",".join(s.name for s in states), bpf=True),
    Field("status", parse_status,
          (Option(("-u", "--status"), "status bits that must all be set, e.g. ASSURED,SEEN_REPLY", "BIT[,BIT...]"),),
          carrier=STATUS, empty=lambda bits: int(bits) == 0),
    Field("unreplied", _flag, (Option(("--unreplied",), "only entries that never saw a reply ([UNREPLIED])",
                                      const=True),
                               Option(("--replied",), "only entries that saw a reply", const=False)),
          carrier=STATUS),
    Field("assured", _flag, _yes_no("assured", "only ASSURED entries", "no ASSURED entries"), carrier=STATUS),
    Field("snat", _flag, _yes_no("snat", "only source-NATed entries", "no source-NATed entries"), carrier=STATUS),
    Field("dnat", _flag, _yes_no("dnat", "only destination-NATed entries", "no destination-NATed entries"),
          carrier=STATUS),
    Field("mark", _mark, (Option(("-m", "--mark"), "connection mark, e.g. 0x10/0xff", "VALUE[/MASK]"),),
          show=lambda m: "%#x/%#x" % m, carrier=MARK, bpf=True, empty=lambda m: m[1] == 0),
    Field("zone", _zone, (Option(("-w", "--zone"), "conntrack zone", "ZONE"),), carrier=ZONE, bpf=True),
    Field("labels", _labels,
          (Option(("--label",), "connection label bit that must be set (repeatable)", "BIT", repeat=True),),
          show=_show_labels, empty=lambda raw: not any(raw), keyword=lambda raw: int.from_bytes(raw, "little")),
    Field("orig_zone", _direction_zone,
          (Option(("--orig-zone",), "zone of the original direction only (zone-orig=)", "ZONE"),)),
    Field("reply_zone", _direction_zone,
          (Option(("--reply-zone",), "zone of the reply direction only (zone-reply=)", "ZONE"),)),
    Field("src_nat", _nat, _nat_options("--src-nat", "source NAT")),
    Field("dst_nat", _nat, _nat_options("--dst-nat", "destination NAT")),
    Field("any_nat", _nat, _nat_options("--any-nat", "any NAT")),
)
"""Every :class:`Filter` keyword; ``tests/test_filter_fields.py`` checks it against
the dataclass fields and the constructor's signature."""

FIELD = {f.name: f for f in FIELDS}
# the family check's order: NAT parts first, so a conflict names the address field
_FAMILY_ORDER = tuple(f for f in FIELDS if f.parse is _nat) + tuple(f for f in FIELDS if f.parse is not _nat)


def _family_of(value: Any) -> Optional[Family]:
    """The family an address-like value implies (None: it implies none)."""
    addr = value.addr if isinstance(value, NatMatch) else value
    if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv4Network)):
        return Family.ipv4
    if isinstance(addr, (ipaddress.IPv6Address, ipaddress.IPv6Network)):
        return Family.ipv6
    return None


@dataclass(frozen=True)
class Filter(Selection):
    """Which flows to act on.  Every given part must match (AND).

    Examples::

        Filter(unreplied=True)                        # conntrack -L | grep UNREPLIED
        Filter(proto="udp", dst="10.0.0.0/8", dport=53)
        Filter(proto="tcp", state=["SYN_SENT", "SYN_RECV"])
        Filter(mark="0x10/0xff", zone=3)
        Filter(dst_nat="10.0.0.9:8080")               # conntrack -L --dst-nat 10.0.0.9:8080
        Filter(any_nat=True, reply_zone=4)            # conntrack -L --any-nat --reply-zone 4
    """

    def __init__(
        self,
        *,
        family: Union[str, int, Family, None] = None,
        proto: Union[str, int, Proto, None] = None,
        src: Any = None,
        dst: Any = None,
        reply_src: Any = None,
        reply_dst: Any = None,
        sport: Optional[PortSpec] = None,
        dport: Optional[PortSpec] = None,
        state: Union[str, int, State, Iterable[Union[str, int, State]], None] = None,
        status: Union[Status, int, str, None] = None,
        unreplied: Optional[bool] = None,
        assured: Optional[bool] = None,
        snat: Optional[bool] = None,
        dnat: Optional[bool] = None,
        mark: Union[int, str, Tuple[int, int], None] = None,
        zone: Optional[int] = None,
        labels: Union[Iterable[int], int, None] = None,
        orig_zone: Optional[int] = None,
        reply_zone: Optional[int] = None,
        src_nat: Any = None,
        dst_nat: Any = None,
        any_nat: Any = None,
    ) -> None:
        given = locals()  # the keywords by name: the signature is FIELDS, written out for type checkers
        v: Dict[str, Any] = {f.name: f.parse(given[f.name], f.name) for f in FIELDS if given[f.name] is not None}
        # the family: given, or implied by an address (all of them in one family)
        fam: Optional[Family] = v.get("family")
        for f in _FAMILY_ORDER:
            implied = _family_of(v.get(f.name))
            if implied is None or f.name == "family":
                continue
            if fam is not None and implied != fam:
                shown = v[f.name].addr if isinstance(v[f.name], NatMatch) else v[f.name]
                raise InvalidValue(f.name, "%s: %s is not in family %s" % (f.name, shown, fam.name))
            fam = implied
        if fam is not None:
            v["family"] = fam
        p: Optional[Proto] = v.get("proto")
        if p == Proto.icmp and fam == Family.ipv6 or p == Proto.icmpv6 and fam == Family.ipv4:
            raise InvalidValue("proto", "proto: %s does not go with family %s" % (p.name, fam.name))  # type: ignore[union-attr]
        if "state" in v:
            if p is None:
                v["proto"] = p = Proto.tcp  # state names are TCP's unless proto says otherwise
            v["state"] = tuple(parse_state(p, s) for s in v["state"])
        bits: Optional[Status] = v.get("status")
        if bits is not None:
            # a status bit that must be set next to a flag that says it is clear
            for name, bit, clear_when in _STATUS_FLAGS:
                if v.get(name) is clear_when and bits & bit:
                    raise InvalidValue(name, "%s=%s contradicts status %s (the filter could never match)"
                                       % (name, v[name], bit.name))
        if p is not None and ("sport" in v or "dport" in v) and p not in _PORT_PROTOS:
            raise ValueError("sport/dport: protocol %s has no ports" % p.name)
        for f in FIELDS:
            object.__setattr__(self, f.name, v.get(f.name))

    def replace(self, **changes: Any) -> Filter:
        """A filter with some keywords changed (``None`` removes one), checked
        like a new one: ``flt.replace(family="ipv4")``."""
        unknown = sorted(set(changes) - set(FIELD))
        if unknown:
            raise TypeError("replace: unknown keyword %s" % ", ".join(unknown))
        kw = {f.name: f.keyword(getattr(self, f.name)) for f in FIELDS if getattr(self, f.name) is not None}
        kw.update(changes)
        return Filter(**{k: value for k, value in kw.items() if value is not None})

    @property
    def matches_everything(self) -> bool:
        """True when no part of the filter restricts anything, so it matches
        every entry: ``Filter()``, ``mark=(0, 0)`` (mask 0), ``status=0``,
        ``labels=[]``.  :meth:`Conntrack.delete <conntrack.Conntrack.delete>`
        refuses such a filter unless told ``all=True``.

        Read from the filter's own fields, not from what it compiles to: any
        field that is set restricts, except an empty status, a zero mark mask
        and an empty label set (each field's ``empty`` in ``FIELDS``, so a
        field added later restricts by default).
        """
        return not self._restricting()

    def _restricting(self) -> List[Field]:
        """The fields that are set to a value that restricts something."""
        return [f for f in FIELDS if getattr(self, f.name) is not None and not f.empty(getattr(self, f.name))]

    # -- compilation -----------------------------------------------------------

    def _status_mask(self) -> Optional[Tuple[int, int]]:
        val = mask = 0
        if self.status is not None:
            val |= int(self.status)
            mask |= int(self.status)
        for name, bit, clear_when in _STATUS_FLAGS:
            flag = getattr(self, name)
            if flag is None:
                continue
            mask |= int(bit)
            if flag is not clear_when:  # unreplied=True means SEEN_REPLY is clear; the others mean set
                val |= int(bit)
        if not mask:
            return None
        return val, mask

    def _kernel_takes(self, f: Field, features: KernelFeatures) -> bool:
        """Whether the running kernel filters field *f* (set and restricting) on a dump."""
        if f.carrier is None or f.carrier.dump is not None and not getattr(features, f.carrier.dump):
            return False
        if f.carrier is not TUPLE:
            return True
        if self.family is None:  # CTA_FILTER needs the family
            return False
        value = getattr(self, f.name)
        if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            # exact addresses only; IPv6 ones only where the kernel compares them right
            return value.prefixlen == value.max_prefixlen and (
                value.version == 4 or features.tuple_ipv6_addresses)
        if f.name in ("sport", "dport"):
            return value[0] == value[1] and self.proto in _KERNEL_PORT_PROTOS  # one port, TCP or UDP
        return True

    def compile(self, features: KernelFeatures) -> Plan:
        """Split the filter between the kernel and the C record check."""
        sent: Dict[str, Any] = {}
        ktext: List[str] = []
        utext: List[str] = []
        flush_ok = True
        restricting = self._restricting()
        for f in restricting:
            if self._kernel_takes(f, features):
                sent[f.name] = getattr(self, f.name)
                ktext.append(f.text(sent[f.name]))
                # a flush may rely only on what the kernel is actually sent, and honours on flush
                flush_ok = flush_ok and getattr(features, f.carrier.flush)  # type: ignore[union-attr]
            else:
                utext.append(f.text(getattr(self, f.name)))
                flush_ok = False
        status = self._status_mask()
        orig = TuplePart(sent.get("proto"), _addr(sent.get("src")), _addr(sent.get("dst")),
                         _port(sent.get("sport")), _port(sent.get("dport")))
        reply = TuplePart(sent.get("proto"), _addr(sent.get("reply_src")), _addr(sent.get("reply_dst")))
        kernel = KernelPart(
            family=self.family,
            mark=sent.get("mark"),
            status=status if any(FIELD[name].carrier is STATUS for name in sent) else None,
            zone=sent.get("zone"),
            orig=orig or None,
            reply=reply if reply.src or reply.dst else None,
        )
        user = CheckPart(
            **{f.name: getattr(self, f.name) for f in restricting if f.carrier is not STATUS},
            status_mask=status,
        )
        bpf = self._compile_events(features, restricting)
        in_bpf = [getattr(bpf, f.name, None) is not None for f in restricting]
        return Plan(kernel, user, flush_ok, bpf, tuple(ktext), tuple(utext),
                    tuple(f.text(getattr(self, f.name)) for f, b in zip(restricting, in_bpf) if b),
                    tuple(f.text(getattr(self, f.name)) for f, b in zip(restricting, in_bpf) if not b))

    def _compile_events(self, features: KernelFeatures, restricting: List[Field]) -> BPFPart:
        """The part of the filter an event socket's BPF program can check.

        libnetfilter_conntrack's event filter (nfct_filter) checks the
        protocol, TCP states, original source/destination address with a
        mask, mark, and (1.1.0) zone 0, and lets a message through when it
        lacks the attribute it looks for: it only narrows what the C check
        then decides.
        """
        if not features.events_bpf:
            return BPFPart()
        taken = {f.name: getattr(self, f.name) for f in restricting if f.bpf}
        if "state" in taken and not (self.proto == Proto.tcp and all(int(s) < 16 for s in taken["state"])):
            del taken["state"]  # TCP states only, and the program's state mask has 16 bits
        # nfct_filter's zone test (1.1.0) reads CTA_ZONE, which the kernel sends only
        # for a zone of both directions, and takes a missing one for zone 0; a Filter's
        # zone also matches a direction-specific zone (CTA_TUPLE_ZONE).  Only zone 0
        # survives that: an entry without CTA_ZONE passes, and C decides.
        if "zone" in taken and not (taken["zone"] == 0 and _binding.BPF_ZONE):
            del taken["zone"]
        return BPFPart(**taken)

    def explain(self, features: Optional[KernelFeatures] = None, *, events: bool = False) -> str:
        """Say which parts run in the kernel and which in the C layer
        (for an event stream with ``events=True``)."""
        plan = self.compile(features or KernelFeatures.default())
        return plan.explain(events=events)


_STATUS_FLAGS = (
    # (flag, its status bit, the flag's value that means the bit is clear)
    ("unreplied", Status.SEEN_REPLY, True),
    ("assured", Status.ASSURED, False),
    ("snat", Status.SRC_NAT, False),
    ("dnat", Status.DST_NAT, False),
)


def _addr(net: Optional[Network]) -> Optional[IPAddress]:
    return None if net is None else net.network_address


def _port(rng: Optional[Tuple[int, int]]) -> Optional[int]:
    return None if rng is None else rng[0]
