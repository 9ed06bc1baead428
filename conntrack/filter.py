"""Filters: which flows a dump, count or bulk delete applies to.

A :class:`Filter` is built from keywords (strings accepted wherever a
person would type one) and compiled, per handle, into two parts: what the
kernel filters (family, mark, status, zone, exact tuple parts, when the
running kernel can) and what the C layer checks on every parsed record
(everything, so the answer never depends on the kernel).  Python never
looks at a record that does not match.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

from . import _binding
from ._check import PORT_PROTOS as _PORT_PROTOS
from ._check import IPAddress, check_address, check_int, check_port, labels_to_bytes
from .enums import Family, Proto, State, Status, parse_family, parse_proto, parse_state, parse_status
from .errors import InvalidType, InvalidValue, keyword
from .features import KernelFeatures

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
PortSpec = Union[int, str, Tuple[int, int], range]


class NatMatch(NamedTuple):
    """A NAT filter part: the translated address and port (None: any)."""

    addr: Optional[IPAddress] = None
    port: Optional[int] = None

    def __str__(self) -> str:
        addr = "" if self.addr is None else "[%s]" % self.addr if self.addr.version == 6 else str(self.addr)
        if self.port is None:
            return addr or "any"
        return "%s:%d" % (addr, self.port)


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


@dataclass(frozen=True)
class Filter:
    """Which flows to act on.  Every given part must match (AND).

    Examples::

        Filter(unreplied=True)                        # conntrack -L | grep UNREPLIED
        Filter(proto="udp", dst="10.0.0.0/8", dport=53)
        Filter(proto="tcp", state=["SYN_SENT", "SYN_RECV"])
        Filter(mark="0x10/0xff", zone=3)
        Filter(dst_nat="10.0.0.9:8080")               # conntrack -L --dst-nat 10.0.0.9:8080
        Filter(any_nat=True, reply_zone=4)            # conntrack -L --any-nat --reply-zone 4
    """

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
    mark: Optional[Tuple[int, int]] = None
    zone: Optional[int] = None
    labels: Optional[bytes] = None
    orig_zone: Optional[int] = None
    reply_zone: Optional[int] = None
    src_nat: Optional[NatMatch] = None
    dst_nat: Optional[NatMatch] = None
    any_nat: Optional[NatMatch] = None

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
        set_ = object.__setattr__
        fam = parse_family(family) if family is not None else None
        nats = {}
        for name, value in (("src_nat", src_nat), ("dst_nat", dst_nat), ("any_nat", any_nat)):
            if value is None:
                continue
            nat = _nat(value, name)
            if nat.addr is not None:
                nat_family = Family.ipv4 if nat.addr.version == 4 else Family.ipv6
                if fam is not None and nat_family != fam:
                    raise InvalidValue(keyword(name), "%s: %s is not in family %s" % (name, nat.addr, fam.name))
                fam = nat_family
            nats[name] = nat
        nets = {}
        for name, value in (("src", src), ("dst", dst), ("reply_src", reply_src), ("reply_dst", reply_dst)):
            if value is None:
                continue
            net = _network(value, name)
            net_family = Family.ipv4 if net.version == 4 else Family.ipv6
            if fam is not None and net_family != fam:
                raise InvalidValue(keyword(name), "%s: %s is not in family %s" % (name, net, fam.name))
            fam = net_family
            nets[name] = net
        p = parse_proto(proto) if proto is not None else None
        if p == Proto.icmp and fam == Family.ipv6 or p == Proto.icmpv6 and fam == Family.ipv4:
            raise InvalidValue("proto", "proto: %s does not go with family %s" % (p.name, fam.name))  # type: ignore[union-attr]
        states: Optional[Tuple[State, ...]] = None
        if state is not None:
            if p is None:
                p = Proto.tcp  # state names are TCP's unless proto says otherwise
            items = [state] if isinstance(state, (str, int)) else list(state)  # type: ignore[arg-type]
            if not items:
                raise InvalidValue("state", "state: give at least one state")
            states = tuple(parse_state(p, s) for s in items)
        for name, flag in (("unreplied", unreplied), ("assured", assured), ("snat", snat), ("dnat", dnat)):
            if flag is not None and not isinstance(flag, bool):
                raise InvalidType(keyword(name), "%s: expected True, False or None, got %r" % (name, flag))
        bits = parse_status(status) if status is not None else None
        if bits is not None:
            # a status bit that must be set next to a flag that says it is clear
            for name, flag, bit, clear_when in (
                ("unreplied", unreplied, Status.SEEN_REPLY, True),
                ("assured", assured, Status.ASSURED, False),
                ("snat", snat, Status.SRC_NAT, False),
                ("dnat", dnat, Status.DST_NAT, False),
            ):
                if flag is clear_when and bits & bit:
                    raise InvalidValue(keyword(name), "%s=%s contradicts status %s (the filter could never match)"
                                     % (name, flag, bit.name))
        if p is not None and (sport is not None or dport is not None) and p not in _PORT_PROTOS:
            raise ValueError("sport/dport: protocol %s has no ports" % p.name)
        set_(self, "family", fam)
        set_(self, "proto", p)
        for name in ("src", "dst", "reply_src", "reply_dst"):
            set_(self, name, nets.get(name))
        set_(self, "sport", _ports(sport, "sport") if sport is not None else None)
        set_(self, "dport", _ports(dport, "dport") if dport is not None else None)
        set_(self, "state", states)
        set_(self, "status", bits)
        set_(self, "unreplied", unreplied)
        set_(self, "assured", assured)
        set_(self, "snat", snat)
        set_(self, "dnat", dnat)
        set_(self, "mark", _masked(mark, "mark", 32) if mark is not None else None)
        set_(self, "zone", check_int(zone, "zone", 0, 0xFFFF) if zone is not None else None)
        set_(self, "labels", labels_to_bytes(labels) if labels is not None else None)
        # a zone of one direction only (conntrack's --orig-zone/--reply-zone; 0 is no zone)
        set_(self, "orig_zone", check_int(orig_zone, "orig_zone", 1, 0xFFFF) if orig_zone is not None else None)
        set_(self, "reply_zone", check_int(reply_zone, "reply_zone", 1, 0xFFFF) if reply_zone is not None else None)
        for name in ("src_nat", "dst_nat", "any_nat"):
            set_(self, name, nats.get(name))

    @property
    def matches_everything(self) -> bool:
        """True when no part of the filter restricts anything, so it matches
        every entry: ``Filter()``, ``mark=(0, 0)`` (mask 0), ``status=0``,
        ``labels=[]``.  :meth:`Conntrack.delete <conntrack.Conntrack.delete>`
        refuses such a filter unless told ``all=True``.

        Read from the filter's own fields, not from what it compiles to: any
        field that is set restricts, except an empty status, a zero mark mask
        and an empty label set (so a field added later restricts by default).
        """
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "status" and int(value) == 0:
                continue
            if f.name == "mark" and value[1] == 0:
                continue
            if f.name == "labels" and not any(value):
                continue
            return False
        return True

    # -- compilation -----------------------------------------------------------

    def _status_mask(self) -> Optional[Tuple[int, int]]:
        val = mask = 0
        if self.status is not None:
            val |= int(self.status)
            mask |= int(self.status)
        for flag, bit in (
            (self.unreplied, Status.SEEN_REPLY),
            (self.assured, Status.ASSURED),
            (self.snat, Status.SRC_NAT),
            (self.dnat, Status.DST_NAT),
        ):
            if flag is None:
                continue
            mask |= bit
            # unreplied=True means SEEN_REPLY is clear; the others mean set
            if (flag if bit != Status.SEEN_REPLY else not flag):
                val |= bit
        if not mask:
            return None
        return val, mask

    def compile(self, features: KernelFeatures) -> Plan:
        """Split the filter between the kernel and the C record check."""
        user: Dict[str, Any] = {}
        kernel: Dict[str, Any] = {}
        flush_ok = True
        ktext: List[str] = []
        utext: List[str] = []

        fam = int(self.family) if self.family is not None else 0
        if self.family is not None:
            user["family"] = fam
            ktext.append("family=%s" % self.family.name)
            flush_ok &= features.flush_family
        if self.mark is not None:
            user["mark"] = self.mark
            if features.dump_mark:
                kernel["mark"] = self.mark
                ktext.append("mark=%#x/%#x" % self.mark)
            else:
                utext.append("mark")
            # a flush may rely only on what the kernel is actually sent
            flush_ok &= features.flush_mark and "mark" in kernel
        status = self._status_mask()
        if status is not None:
            user["status"] = status
            if features.dump_status:
                kernel["status"] = status
                ktext.append("status=%#x/%#x" % status)
            else:
                utext.append("status")
            flush_ok &= features.flush_status and "status" in kernel
        if self.zone is not None:
            user["zone"] = self.zone
            if features.dump_zone:
                kernel["zone"] = self.zone
                ktext.append("zone=%d" % self.zone)
            else:
                utext.append("zone")
            flush_ok &= features.flush_zone and "zone" in kernel

        # Exact tuple parts can go to the kernel (CTA_FILTER) when the family
        # is known; ranges, CIDRs and states are checked in C.
        tuple_ok = features.dump_tuple and self.family is not None
        tuple_flush_ok = features.flush_tuple and tuple_ok  # the parts go out with the dump's CTA_FILTER
        addr_ok = self.family == Family.ipv4 or features.tuple_ipv6_addresses
        orig_flags = 0
        reply_flags = 0
        parts: Dict[str, Any] = {"src": b"", "dst": b"", "rsrc": b"", "rdst": b"", "sport": 0, "dport": 0}
        if self.proto is not None:
            user["proto"] = int(self.proto)
            if tuple_ok:
                orig_flags |= _CTA("proto")
                ktext.append("proto=%s" % self.proto.name)
            else:
                utext.append("proto")
            flush_ok &= tuple_flush_ok
        for name, key in (("src", "orig_src"), ("dst", "orig_dst"), ("reply_src", "reply_src"), ("reply_dst", "reply_dst")):
            net: Optional[Network] = getattr(self, name)
            if net is None:
                continue
            user[key] = (int(self.family or 0), net.network_address.packed, net.netmask.packed)
            exact = net.prefixlen == net.max_prefixlen and addr_ok
            if exact and tuple_ok:
                flag = _CTA("src" if name.endswith("src") else "dst")
                if name.startswith("reply"):
                    reply_flags |= flag
                    parts["r" + name[len("reply_"):]] = net.network_address.packed
                else:
                    orig_flags |= flag
                    parts[name] = net.network_address.packed
                ktext.append("%s=%s" % (name, net.network_address))
            else:
                utext.append("%s=%s" % (name, net))
            flush_ok &= exact and tuple_flush_ok
        for name in ("sport", "dport"):
            rng: Optional[Tuple[int, int]] = getattr(self, name)
            if rng is None:
                continue
            user[name] = rng
            single = rng[0] == rng[1]
            if single and tuple_ok and self.proto in _KERNEL_PORT_PROTOS:
                orig_flags |= _CTA(name)
                parts[name] = rng[0]
                ktext.append("%s=%d" % (name, rng[0]))
                flush_ok &= tuple_flush_ok
            else:
                utext.append("%s=%d-%d" % ((name,) + rng) if not single else "%s=%d" % (name, rng[0]))
                flush_ok = False
        if orig_flags:
            kernel["orig"] = (orig_flags, (fam, int(self.proto or 0), parts["src"], parts["dst"], parts["sport"], parts["dport"]))
        if reply_flags:
            if self.proto is not None:
                reply_flags |= _CTA("proto")
            kernel["reply"] = (reply_flags, (fam, int(self.proto or 0), parts["rsrc"], parts["rdst"], 0, 0))
        if self.state is not None:
            user["state"] = sum(1 << int(s) for s in self.state)
            utext.append("state=%s" % ",".join(s.name for s in self.state))
            flush_ok = False
        if self.labels is not None:
            user["labels"] = (self.labels, self.labels)
            utext.append("labels")
            flush_ok = False
        for name in ("orig_zone", "reply_zone"):
            zone: Optional[int] = getattr(self, name)
            if zone is not None:
                user[name] = zone
                utext.append("%s=%d" % (name, zone))
                flush_ok = False
        for name in ("src_nat", "dst_nat", "any_nat"):
            nat: Optional[NatMatch] = getattr(self, name)
            if nat is not None:
                addr = nat.addr
                user[name] = (int(Family.ipv4 if addr is None or addr.version == 4 else Family.ipv6),
                              addr.packed if addr is not None else None, nat.port)
                utext.append("%s=%s" % (name, nat))
                flush_ok = False
        bpf, btext = self._compile_events(features, user)
        return Plan(fam, kernel, user, flush_ok, ktext, utext, bpf, btext)

    def _compile_events(self, features: KernelFeatures, user: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
        """The part of the filter an event socket's BPF program can check.

        libnetfilter_conntrack's event filter (nfct_filter) checks the
        protocol, TCP states, original source/destination address with a
        mask, mark, and (1.1.0) zone 0, and lets a message through when it
        lacks the attribute it looks for: it only narrows what the C check
        then decides.
        """
        bpf: Dict[str, Any] = {}
        text: List[str] = []
        if not features.events_bpf:
            return bpf, text
        if self.proto is not None:
            bpf["proto"] = int(self.proto)
            text.append("proto=%s" % self.proto.name)
        if self.state is not None and self.proto == Proto.tcp and all(int(s) < 16 for s in self.state):
            bpf["state"] = user["state"]
            text.append("state=%s" % ",".join(s.name for s in self.state))
        for name, key in (("src", "orig_src"), ("dst", "orig_dst")):
            net: Optional[Network] = getattr(self, name)
            if net is not None:
                bpf[name] = user[key]
                text.append("%s=%s" % (name, net))
        if self.mark is not None:
            bpf["mark"] = self.mark
            text.append("mark=%#x/%#x" % self.mark)
        # nfct_filter's zone test (1.1.0) reads CTA_ZONE, which the kernel sends only
        # for a zone of both directions, and takes a missing one for zone 0; a Filter's
        # zone also matches a direction-specific zone (CTA_TUPLE_ZONE).  Only zone 0
        # survives that: an entry without CTA_ZONE passes, and C decides.
        if self.zone == 0 and _binding.BPF_ZONE:
            bpf["zone"] = self.zone
            text.append("zone=%d" % self.zone)
        return bpf, text

    def explain(self, features: Optional[KernelFeatures] = None, *, events: bool = False) -> str:
        """Say which parts run in the kernel and which in the C layer
        (for an event stream with ``events=True``)."""
        plan = self.compile(features or KernelFeatures.default())
        return plan.explain(events=events)


def _CTA(name: str) -> int:
    return int(_binding.CTA[name])


@dataclass
class Plan:
    """A filter compiled for one kernel: what each side evaluates."""

    family: int
    kernel: Dict[str, Any]
    user: Dict[str, Any]
    flush_ok: bool
    kernel_text: List[str] = field(default_factory=list)
    user_text: List[str] = field(default_factory=list)
    events_bpf: Dict[str, Any] = field(default_factory=dict)
    """The part an event socket's BPF program checks in the kernel (the C check still runs on all of it)."""
    events_bpf_text: List[str] = field(default_factory=list)

    def explain(self, events: bool = False) -> str:
        if events:
            names = {"orig_src": "src", "orig_dst": "dst"}
            rest = sorted(names.get(k, k) for k in self.user if names.get(k, k) not in self.events_bpf)
            k = ", ".join(self.events_bpf_text) or "nothing"
            u = ", ".join(rest) or "nothing more"
            return "events: kernel (socket BPF filter): %s; userspace (C, per event): %s" % (k, u)
        k = ", ".join(self.kernel_text) or "nothing"
        u = ", ".join(self.user_text) or "nothing more"
        how = "one filtered flush" if self.flush_ok else "dump, then batched deletes pinned by id"
        return "kernel: %s; userspace (C, per record): %s; bulk delete: %s" % (k, u, how)
