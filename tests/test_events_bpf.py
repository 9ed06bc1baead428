"""The kernel-side event filter (a socket BPF program built by
libnetfilter_conntrack's nfct_filter) against the Python reference matcher.

Three streams watch the same real events: one unfiltered, one with only the
BPF program attached (no C check), one with the whole filter.  The BPF
stream must pass exactly what a model of nfct_filter's program says (it lets
a message through when the attribute it tests is missing), that must include
every event the reference matcher accepts, and the full stream must yield
exactly those.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from collections import Counter
from typing import Optional

import pytest
from hypothesis import event, given
from test_properties import SETTINGS, filters, reference_match, tables

import conntrack
from conntrack import EventType, Filter, Flow, KernelFeatures, Proto, _binding
from conntrack.events import listen
from conntrack.netns import resolve
from conntrack.plan import BPFPart, CheckPart


def bpf_model(flt: Filter, bpf: BPFPart, ev: conntrack.Event) -> Optional[bool]:
    """What nfct_filter's program decides for an event, as read in its source:
    True (passes), False (dropped) or None (either).

    Each test passes when the message lacks its attribute (a TCP state test
    on a message without protocol info).  The IPv4 address tests search for
    their attribute past the end of the address nest, so for an IPv6 event
    they may find another attribute of the same type number and compare it:
    undefined.  A Filter with an IPv4 address matches IPv4 only, so that
    never drops a match.
    """
    f = ev.flow
    assert f is not None
    verdict: Optional[bool] = True
    if bpf.proto is not None and f.proto != flt.proto:
        return False
    if bpf.state is not None and f.proto == Proto.tcp and f.state is not None and f.state not in flt.state:
        return False
    if bpf.mark is not None and ((f.mark or 0) & flt.mark[1]) != flt.mark[0]:
        return False
    if bpf.zone is not None and f.zone != flt.zone:
        return False
    for name, addr in (("src", f.orig.src), ("dst", f.orig.dst)):
        net = getattr(flt, name)
        if getattr(bpf, name) is None:
            continue
        if addr.version == net.version:
            if addr not in net:
                return False
        elif net.version == 4:
            verdict = None
    return verdict


def _drain(stream: conntrack.EventStream) -> Counter:
    """Every event queued now (the kernel delivers conntrack events during the
    request that causes them, so all are queued once the requests returned)."""
    with stream:
        return Counter((e.type, e.flow.key, e.flow.mark) for e in _all(stream))


def _all(stream):
    events = list(stream)
    assert not [e for e in events if e.type == EventType.OVERFLOW]
    return events


@SETTINGS
@given(table=tables(), flt=filters())
def test_bpf_passes_what_nfct_filter_should_and_never_drops_a_match(shared_netns, table, flt):
    with conntrack.Conntrack(shared_netns.name) as ct:
        ct.flush()
        plan = flt.compile(ct.features)
        fd = resolve(shared_netns.name)
        try:
            everything = listen(fd, Filter().compile(ct.features), conntrack.events.ALL, 64 << 20, 0)
            bpf_only = listen(fd, dataclasses.replace(plan, user=CheckPart()), conntrack.events.ALL, 64 << 20, 0)
        finally:
            os.close(fd)
        full = ct.events(flt, idle_timeout=0, rcvbuf=64 << 20)
        ct.create_many(table)
        for f in table[::3]:
            ct.update(ct.get(f), mark=0x11)
        ct.flush()

        events = _all(everything)
        everything.close()
        key = lambda e: (e.type, e.flow.key, e.flow.mark)  # noqa: E731
        verdicts = [(key(e), bpf_model(flt, plan.events_bpf, e)) for e in events]
        must = Counter(k for k, v in verdicts if v)
        may = must + Counter(k for k, v in verdicts if v is None)
        expected = Counter(key(e) for e in events if reference_match(flt, e.flow))
        assert len(events) >= 2 * len(table)
        got_bpf = _drain(bpf_only)
        event("kernel part: %s" % (",".join(plan.events_bpf_text) or "none"))
        event("kernel part dropped events: %s" % (sum(got_bpf.values()) < len(events)))
        assert not must - got_bpf, (plan.events_bpf, must - got_bpf)  # nothing it should pass is dropped
        assert not got_bpf - may, (plan.events_bpf, got_bpf - may)  # and it drops what it should
        assert not expected - got_bpf  # the BPF part never drops a match
        assert _drain(full) == expected


def test_explain_for_events_names_each_side():
    flt = Filter(proto="tcp", state="ESTABLISHED", dst="10.0.0.0/8", dport=443, mark=1)
    text = flt.explain(KernelFeatures.detect(), events=True)
    assert text.startswith("events: kernel (socket BPF filter): proto=tcp, dst=10.0.0.0/8, state=ESTABLISHED, mark=0x1/")
    assert text.endswith("userspace (C, per event): family=ipv4, dport=443")
    assert "kernel (socket BPF filter): nothing" in flt.explain(KernelFeatures.none(), events=True)
    zone = Filter(zone=0).explain(KernelFeatures.detect(), events=True)
    assert ("zone=0" in zone.split(";")[0]) == _binding.BPF_ZONE
    assert "zone=3" not in Filter(zone=3).explain(KernelFeatures.detect(), events=True).split(";")[0]


ZONE_RULES = """table inet zones {
  chain output { type filter hook output priority -300; udp dport 5000 ct original zone set 3; }
}
"""


def test_a_direction_specific_zone_matches_a_zone_filter(ns_ct):
    # the kernel sends such a zone only inside the original tuple (no CTA_ZONE):
    # nfct_filter's zone test would read it as zone 0, so it must not decide
    ns = ns_ct.ns
    ns.exec("ip", "link", "set", "lo", "up")
    ns.exec("nft", "-f", "-", input=ZONE_RULES)
    with ns_ct.events(Filter(zone=3), idle_timeout=0, types=EventType.NEW) as three, \
            ns_ct.events(Filter(zone=0), idle_timeout=0, types=EventType.NEW) as zero:
        ns.exec(sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                ".sendto(b'x', ('127.0.0.1', 5000))")
        got3, got0 = list(three), list(zero)
    [ev] = got3
    assert ev.flow.zone == 3 and ev.flow.orig.dport == 5000
    assert [e.flow.orig.dport for e in got0 if e.flow.orig.dport == 5000] == []


def _burst(i: int) -> Flow:
    # 1 in 100 comes from 10.200.0.0/16
    net = "10.200.0.0" if i % 100 == 0 else "10.1.0.0"
    return Flow(proto="udp", src=ipaddress.ip_address(net) + i + 1, dst="10.9.0.1",
                sport=1000, dport=53, timeout=600)


def test_a_kernel_side_filter_overflows_less_on_the_same_burst(netns):
    wanted = Filter(proto="udp", src="10.200.0.0/16")
    n = 20000
    with conntrack.Conntrack(netns.name, features=KernelFeatures(events_bpf=True)) as bpf_ct, \
            conntrack.Conntrack(netns.name, features=KernelFeatures.none()) as c_ct:
        assert wanted.compile(bpf_ct.features).events_bpf and not wanted.compile(c_ct.features).events_bpf
        with bpf_ct.events(wanted, rcvbuf=256 * 1024, idle_timeout=0, types=EventType.NEW) as with_bpf, \
                c_ct.events(wanted, rcvbuf=256 * 1024, idle_timeout=0, types=EventType.NEW) as without:
            bpf_ct.create_many(_burst(i) for i in range(n))
            got_bpf, got_c = list(with_bpf), list(without)
    assert [e.type for e in got_bpf] == [EventType.NEW] * (n // 100) and with_bpf.lost == 0
    assert without.lost is not None and without.lost > 0
    assert any(e.type == EventType.OVERFLOW for e in got_c)
    # the kernel counts what it dropped before the C check: with it, every event is accounted for
    assert sum(e.type == EventType.NEW for e in got_c) <= n // 100
    assert without.lost + sum(e.type == EventType.NEW for e in got_c) <= n


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_an_address_filter_of_one_family_passes_the_other_family_to_c(ns_ct, family):
    # nfct_filter lets events without the tested attribute through; C decides
    net = "10.0.0.0/8" if family == "ipv4" else "2001:db8::/32"
    with ns_ct.events(Filter(src=net), idle_timeout=0) as stream:
        ns_ct.create(Flow(proto="udp", src="10.1.1.1", dst="10.1.1.2", sport=1, dport=2, timeout=60))
        ns_ct.create(Flow(proto="udp", src="2001:db8::1", dst="2001:db8::2", sport=1, dport=2, timeout=60))
        [ev] = list(stream)
    assert str(ev.flow.orig.src) == ("10.1.1.1" if family == "ipv4" else "2001:db8::1")
