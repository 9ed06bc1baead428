"""Root-free: the filtered-flush decision (``Plan.flush_ok``) against an independent model.

A bulk delete uses one filtered flush only when the kernel is sent the WHOLE filter: a flush
deletes what the kernel matched, and nothing checks it again in userspace.  ``flush_ok`` True
while some restricting part of the filter stays in the C check would delete entries the filter
does not match.  The model below says, from the kernel's side, which filter parts a filtered
flush honours under each feature flag; it is written from the kernel's ctnetlink rules, not by
reading ``Filter.compile``:

- family: the nfgenmsg family, honoured on flush from ``flush_family``;
- mark/mask: ``flush_mark`` (and the library must send it: ``dump_mark``);
- status/mask (``status``, ``unreplied``, ``assured``, ``snat``, ``dnat``): ``flush_status``;
- zone (both directions): ``flush_zone``;
- exact tuple parts (proto, a /32 address, one TCP/UDP port) with the family given: ``flush_tuple``;
  IPv6 addresses only with ``tuple_ipv6_addresses`` (off on every real profile: a kernel bug);
- never: CIDR prefixes, port ranges, ports of other protocols, states, labels, a zone of one
  direction, NAT matches;
- a part that restricts nothing (mark mask 0, no status bit, no label) is left out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Dict, Optional

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conntrack import Filter, KernelFeatures, _binding
from conntrack.enums import Status

_FLAGS = [f.name for f in dataclasses.fields(KernelFeatures) if f.name != "decided"]

PROFILES: Dict[str, KernelFeatures] = {
    "none": KernelFeatures.none(),
    "oldest": KernelFeatures.oldest(),
    "5.10": KernelFeatures.from_version("5.10"),
    "5.15": KernelFeatures.from_version("5.15"),
    "6.8": KernelFeatures.from_version("6.8"),
    "6.12": KernelFeatures.from_version("6.12"),
    "all": KernelFeatures(**{name: True for name in _FLAGS}),
    "all-but-ipv6": KernelFeatures(**{name: name != "tuple_ipv6_addresses" for name in _FLAGS}),
    "flush-without-dump": KernelFeatures(**{name: name.startswith("flush_") for name in _FLAGS}),
}

KERNEL_PORT_PROTOS = ("tcp", "udp")  # ctnetlink's tuple filter compares ports for these only


def model_flush_ok(kw: Dict[str, Any], f: Filter, feat: KernelFeatures) -> bool:
    """True when a filtered flush under *feat* honours every restricting part of *f*."""
    family = f.family
    tuple_ok = feat.dump_tuple and feat.flush_tuple and family is not None
    ok = True
    if family is not None:
        ok &= feat.flush_family
    if f.mark is not None and f.mark[1]:
        ok &= feat.dump_mark and feat.flush_mark
    if any(kw.get(k) is not None for k in ("unreplied", "assured", "snat", "dnat")) or kw.get("status"):
        ok &= feat.dump_status and feat.flush_status
    if f.zone is not None:
        ok &= feat.dump_zone and feat.flush_zone
    if f.proto is not None:
        ok &= tuple_ok
    for name in ("src", "dst", "reply_src", "reply_dst"):
        net = getattr(f, name)
        if net is not None:
            exact = net.prefixlen == net.max_prefixlen
            addr = net.version == 4 or feat.tuple_ipv6_addresses
            ok &= exact and addr and tuple_ok
    for name in ("sport", "dport"):
        rng = getattr(f, name)
        if rng is not None:
            ok &= rng[0] == rng[1] and f.proto is not None and f.proto.name in KERNEL_PORT_PROTOS and tuple_ok
    for name in ("state", "orig_zone", "reply_zone", "src_nat", "dst_nat", "any_nat"):
        if getattr(f, name) is not None:
            ok = False
    if f.labels is not None and any(f.labels):
        ok = False
    return bool(ok)


def status_mask(kw: Dict[str, Any]) -> Optional[tuple]:
    """The status value/mask a flush must carry (the kernel's CTA_STATUS/CTA_STATUS_MASK)."""
    val = mask = int(Status(kw.get("status") or 0))
    for key, bit, set_when in (("unreplied", Status.SEEN_REPLY, False), ("assured", Status.ASSURED, True),
                               ("snat", Status.SRC_NAT, True), ("dnat", Status.DST_NAT, True)):
        if kw.get(key) is not None:
            mask |= int(bit)
            if kw[key] is set_when:
                val |= int(bit)
    return (val, mask) if mask else None


def _addr(version: int, exact: st.SearchStrategy[bool]) -> st.SearchStrategy[str]:
    bits = 32 if version == 4 else 128

    def make(n: int, full: bool, plen: int) -> str:
        a = ipaddress.ip_address(n if version == 4 else n | (0x2001 << 112))
        return str(a) if full else str(ipaddress.ip_network("%s/%d" % (a, plen), strict=False))

    return st.builds(make, st.integers(1, 2**32 - 1), exact, st.integers(0, bits))


@st.composite
def filters(draw: st.DrawFn) -> Dict[str, Any]:
    kw: Dict[str, Any] = {}
    version = draw(st.sampled_from([None, 4, 6]))
    if version is not None and draw(st.booleans()):
        kw["family"] = "ipv4" if version == 4 else "ipv6"
    proto = draw(st.sampled_from([None, "tcp", "udp", "sctp", "icmp" if version != 6 else "icmpv6", "gre"]))
    if proto is not None:
        kw["proto"] = proto
    if version is not None:
        for name in ("src", "dst", "reply_src", "reply_dst"):
            if draw(st.integers(0, 2)) == 0:
                kw[name] = draw(_addr(version, st.booleans()))
    if proto in (None, "tcp", "udp", "sctp"):
        for name in ("sport", "dport"):
            if draw(st.integers(0, 2)) == 0:
                lo = draw(st.integers(1, 65535))
                kw[name] = lo if draw(st.booleans()) else (lo, draw(st.integers(lo, 65535)))
    if proto == "tcp" and draw(st.integers(0, 4)) == 0:
        kw["state"] = draw(st.sampled_from(["ESTABLISHED", ["SYN_SENT", "SYN_RECV"]]))
    for name in ("unreplied", "assured", "snat", "dnat"):
        if draw(st.integers(0, 3)) == 0:
            kw[name] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        kw["status"] = draw(st.sampled_from([0, int(Status.CONFIRMED), int(Status.SEEN_REPLY | Status.ASSURED)]))
    if draw(st.integers(0, 2)) == 0:
        kw["mark"] = draw(st.sampled_from([1, "0x10/0xff", (0, 0), 0xFFFFFFFF]))
    if draw(st.integers(0, 2)) == 0:
        kw["zone"] = draw(st.integers(0, 0xFFFF))
    for name in ("orig_zone", "reply_zone"):
        if draw(st.integers(0, 5)) == 0:
            kw[name] = draw(st.integers(1, 0xFFFF))
    if draw(st.integers(0, 5)) == 0:
        kw["labels"] = draw(st.sampled_from([[], [3], [0, 127]]))
    if draw(st.integers(0, 6)) == 0:
        kw[draw(st.sampled_from(["src_nat", "dst_nat", "any_nat"]))] = (
            True if version is None else draw(_addr(version, st.just(True))))
    return kw


def build(kw: Dict[str, Any]) -> Filter:
    try:
        return Filter(**kw)
    except ValueError:
        assume(False)  # a combination the constructor refuses (e.g. a status that contradicts a flag)
        raise


def check_plan(kw: Dict[str, Any], f: Filter, feat: KernelFeatures) -> None:
    plan = f.compile(feat)
    check_request(plan)
    expected = model_flush_ok(kw, f, feat)
    assert plan.flush_ok == expected, "flush_ok %s, the model says %s, for %r under %r: %s" % (
        plan.flush_ok, expected, kw, feat, plan.explain())
    if not plan.flush_ok:
        return
    # the flush carries every part: nothing is left to the C check alone ...
    assert plan.user_text == (), plan.explain()
    # ... and each part is in the request with the filter's own value
    k = plan.kernel
    assert k.family == f.family
    assert k.mark == (f.mark if f.mark is not None and f.mark[1] else None)
    assert k.status == status_mask(kw)
    assert k.zone == f.zone
    if f.proto is not None:
        assert k.orig is not None and k.orig.proto == f.proto
        assert k.reply is None or k.reply.proto == f.proto
    for name, side, part in (("src", "orig", "src"), ("dst", "orig", "dst"), ("reply_src", "reply", "src"),
                             ("reply_dst", "reply", "dst")):
        net = getattr(f, name)
        if net is not None:
            assert getattr(getattr(k, side), part) == net.network_address
    for name in ("sport", "dport"):
        rng = getattr(f, name)
        if rng is not None:
            assert getattr(k.orig, name) == rng[0]


def check_request(plan: Any) -> None:
    """The binding sends the kernel part as it reads: each set part with its CTPY_K_* bit and
    value, each tuple part with its CTA_FILTER flag (a flush carries exactly this)."""
    lib, k = _binding.lib, plan.kernel
    kf = _binding._kernel_filter(k)
    if kf == _binding.ffi.NULL:
        assert k.mark is k.status is k.zone is k.orig is k.reply is None
        return
    assert kf.fields == ((lib.CTPY_K_MARK if k.mark else 0) | (lib.CTPY_K_STATUS if k.status else 0)
                         | (lib.CTPY_K_ZONE if k.zone is not None else 0)
                         | (lib.CTPY_K_TUPLE if k.orig or k.reply else 0))
    if k.mark:
        assert (kf.mark_val, kf.mark_mask) == k.mark
    if k.status:
        assert (kf.status_val, kf.status_mask) == k.status
    for side, flags, t in (("orig", kf.orig_flags, kf.orig), ("reply", kf.reply_flags, kf.reply)):
        part = getattr(k, side)
        want = 0
        if part is not None:
            for name, flag in (("proto", lib.CTPY_CTA_PROTO_NUM), ("src", lib.CTPY_CTA_IP_SRC),
                               ("dst", lib.CTPY_CTA_IP_DST), ("sport", lib.CTPY_CTA_SRC_PORT),
                               ("dport", lib.CTPY_CTA_DST_PORT)):
                value = getattr(part, name)
                if value is None:
                    continue
                want |= flag
                got = bytes(getattr(t, name)[0:len(value.packed)]) if name in ("src", "dst") else getattr(t, name)
                assert got == (value.packed if name in ("src", "dst") else int(value)), (side, name)
            assert t.family == int(k.family)
        assert flags == want, (side, flags, want)


@pytest.mark.parametrize("profile", sorted(PROFILES))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(kw=filters())
def test_flush_ok_only_when_the_kernel_gets_the_whole_filter(profile: str, kw: Dict[str, Any]) -> None:
    check_plan(kw, build(kw), PROFILES[profile])


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("kw", [
    {},
    {"family": "ipv4"},
    {"mark": 1},
    {"unreplied": True},
    {"zone": 3},
    {"proto": "udp", "family": "ipv4"},
    {"proto": "udp", "dst": "10.0.0.1", "dport": 53},
    {"proto": "udp", "dst": "10.0.0.0/8"},
    {"proto": "udp", "dport": (53, 54), "family": "ipv4"},
    {"proto": "sctp", "dport": 9, "family": "ipv4"},
    {"proto": "tcp", "dst": "2001:db8::1"},
    {"reply_src": "10.0.0.1", "mark": "0x10/0xff", "assured": True, "zone": 7},
    {"state": "ESTABLISHED"},
    {"labels": [3]},
    {"orig_zone": 2},
    {"dst_nat": "10.0.0.9"},
])
def test_flush_ok_named_cases(profile: str, kw: Dict[str, Any]) -> None:
    """The cases above for every profile; the named profiles' own answers are pinned below."""
    check_plan(kw, Filter(**kw), PROFILES[profile])


@pytest.mark.parametrize("kw, profiles", [
    ({"mark": 1}, {"5.10", "5.15", "6.8", "6.12", "all", "all-but-ipv6"}),
    ({"unreplied": True}, {"5.15", "6.8", "6.12", "all", "all-but-ipv6"}),
    ({"zone": 3}, {"6.8", "6.12", "all", "all-but-ipv6"}),
    ({"proto": "udp", "dst": "10.0.0.1", "dport": 53}, {"6.12", "all", "all-but-ipv6"}),
    ({"proto": "tcp", "dst": "2001:db8::1"}, {"all"}),
    ({"proto": "udp", "dst": "10.0.0.0/8"}, set()),
])
def test_which_profiles_flush(kw: Dict[str, Any], profiles: set) -> None:
    f = Filter(**kw)
    assert {name for name, feat in PROFILES.items() if f.compile(feat).flush_ok} == profiles
