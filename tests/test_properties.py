"""Property tests against the real kernel (hypothesis).

Ranges come from the protocol: any IPv4/IPv6 address, ports 0..65535,
32-bit marks, 16-bit zones.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import conntrack
from conntrack import Filter, Flow, KernelFeatures, Status

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ports = st.integers(0, 0xFFFF)
marks = st.integers(0, 0xFFFFFFFF)
zones = st.integers(0, 0xFFFF)
v4 = st.ip_addresses(v=4)
v6 = st.ip_addresses(v=6)


@st.composite
def flows(draw, zone=zones):
    six = draw(st.booleans())
    addr = v6 if six else v4
    src, dst = draw(addr), draw(addr)
    # no dccp: kernels from 6.16 track it generically, without ports
    proto = draw(st.sampled_from(["tcp", "udp", "icmp", "sctp", "udplite"]))
    kw = dict(proto=proto, src=src, dst=dst, timeout=draw(st.integers(60, 100000)),
              mark=draw(marks), zone=draw(zone))
    if proto == "icmp":
        kw["proto"] = "icmpv6" if six else "icmp"
        kw["icmp_type"] = 128 if six else 8
        kw["icmp_id"] = draw(ports)
    else:
        kw["sport"], kw["dport"] = draw(ports), draw(ports)
    if proto == "tcp":
        kw["state"] = draw(st.sampled_from(["SYN_SENT", "ESTABLISHED", "TIME_WAIT", "CLOSE"]))
        if draw(st.booleans()):
            kw["status"] = "SEEN_REPLY|ASSURED"
    return kw


@pytest.fixture
def ct(shared_netns):
    with conntrack.Conntrack(shared_netns.name) as handle:
        handle.flush()
        yield handle


@SETTINGS
@given(spec=flows())
def test_create_dump_round_trip(ct, spec):
    ct.flush()
    made = Flow(**spec)
    ct.create(made)
    [got] = list(ct.dump())
    assert got.key == made.key
    assert (got.orig, got.reply, got.mark, got.zone, got.proto, got.family) == \
        (made.orig, made.reply, made.mark, made.zone, made.proto, made.family)
    assert made.timeout - 5 <= got.timeout <= made.timeout
    if made.state is not None:
        assert got.state == made.state
    assert got.status & made.status == made.status


bad_values = st.one_of(
    st.fixed_dictionaries({"sport": st.one_of(st.integers(max_value=-1), st.integers(min_value=0x10000))}),
    st.fixed_dictionaries({"mark": st.one_of(st.integers(max_value=-1), st.integers(min_value=1 << 32))}),
    st.fixed_dictionaries({"zone": st.one_of(st.integers(max_value=-1), st.integers(min_value=1 << 16))}),
    st.fixed_dictionaries({"dst": v6.map(str)}),
    st.fixed_dictionaries({"src": st.text(max_size=20).filter(lambda s: not _is_ip(s))}),
    st.fixed_dictionaries({"state": st.text(min_size=1, max_size=12).filter(
        lambda s: s.strip().upper() not in conntrack.TCPState.__members__ and not s.strip().lstrip("+-").isdigit())}),
)


def _is_ip(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


@SETTINGS
@given(bad=bad_values)
def test_invalid_input_raises_value_error_and_changes_nothing(ct, bad):
    ct.flush()
    ct.create(Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60))
    spec = dict(proto="tcp", src="10.0.0.1", dst="10.0.0.3", sport=1, dport=2, timeout=60)
    spec.update(bad)
    with pytest.raises(ValueError):
        ct.create(Flow(**spec))
    assert [str(f.orig.dst) for f in ct.dump()] == ["10.0.0.2"]


# -- filters: kernel-side + C against a plain Python reference ------------------

TABLE_NETS = ["10.1.0.0/16", "10.2.0.0/16", "2001:db8:1::/48"]


@st.composite
def tables(draw):
    rows = []
    seen = set()
    for _ in range(draw(st.integers(20, 80))):
        net = ipaddress.ip_network(draw(st.sampled_from(TABLE_NETS)))
        src = net.network_address + draw(st.integers(1, 200))
        dst = net.network_address + draw(st.integers(1, 3))
        proto = draw(st.sampled_from(["tcp", "udp"]))
        sport, dport = draw(st.integers(1000, 1010)), draw(st.sampled_from([53, 80, 443]))
        key = (str(src), str(dst), proto, sport, dport)
        if key in seen:
            continue
        seen.add(key)
        kw = dict(proto=proto, src=src, dst=dst, sport=sport, dport=dport, timeout=600,
                  mark=draw(st.sampled_from([0, 1, 2, 0x11])), zone=draw(st.sampled_from([0, 0, 3])))
        if proto == "tcp":
            kw["state"] = draw(st.sampled_from(["SYN_SENT", "ESTABLISHED"]))
        if draw(st.booleans()):
            kw["status"] = "SEEN_REPLY" + ("|ASSURED" if draw(st.booleans()) else "")
        rows.append(Flow(**kw))
    return rows


@st.composite
def filters(draw):
    kw = {}
    if draw(st.booleans()):
        kw["proto"] = draw(st.sampled_from(["tcp", "udp"]))
    choice = draw(st.sampled_from(["none", "net", "host", "dsthost"]))
    if choice == "net":
        kw["src"] = draw(st.sampled_from(TABLE_NETS + ["10.1.0.0/24", "10.0.0.0/8"]))
    elif choice == "host":
        kw["src"] = draw(st.sampled_from(["10.1.0.5", "10.2.0.7", "2001:db8:1::9"]))
    elif choice == "dsthost":
        kw["dst"] = draw(st.sampled_from(["10.1.0.1", "10.2.0.2", "2001:db8:1::3"]))
    if draw(st.booleans()):
        kw["dport"] = draw(st.sampled_from([53, 80, (50, 90), (443, 443)]))
    if draw(st.booleans()):
        kw["sport"] = draw(st.sampled_from([1000, (1003, 1007)]))
    for flag in ("unreplied", "assured"):
        if draw(st.integers(0, 3)) == 0:
            kw[flag] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        kw["mark"] = draw(st.sampled_from([1, "0x1/0x1", (0x10, 0xF0)]))
    if draw(st.integers(0, 3)) == 0:
        kw["zone"] = draw(st.sampled_from([0, 3]))
    if draw(st.integers(0, 4)) == 0 and kw.get("proto") != "udp":
        kw["state"] = draw(st.sampled_from(["ESTABLISHED", ["SYN_SENT", "ESTABLISHED"]]))
    if draw(st.integers(0, 3)) == 0 and "src" not in kw and "dst" not in kw:
        kw["family"] = draw(st.sampled_from(["ipv4", "ipv6"]))
    return Filter(**kw)


def reference_match(flt: Filter, f: Flow) -> bool:
    """An independent, plain-Python reading of what a Filter means."""
    if flt.family is not None and f.family != flt.family:
        return False
    if flt.proto is not None and f.proto != flt.proto:
        return False
    for name, addr in (("src", f.orig.src), ("dst", f.orig.dst), ("reply_src", f.reply.src),
                       ("reply_dst", f.reply.dst)):
        net = getattr(flt, name)
        if net is not None and (addr.version != net.version or addr not in net):
            return False
    for name, port in (("sport", f.orig.sport), ("dport", f.orig.dport)):
        rng = getattr(flt, name)
        if rng is not None and (port is None or not rng[0] <= port <= rng[1]):
            return False
    if flt.unreplied is not None and f.unreplied != flt.unreplied:
        return False
    if flt.assured is not None and f.assured != flt.assured:
        return False
    if flt.mark is not None and ((f.mark or 0) & flt.mark[1]) != flt.mark[0]:  # events may omit a zero mark
        return False
    if flt.zone is not None and f.zone != flt.zone:
        return False
    if flt.state is not None and f.state not in flt.state:
        return False
    if flt.status is not None and f.status & flt.status != flt.status:
        return False
    if flt.snat is not None and bool(f.status & Status.SRC_NAT) != flt.snat:
        return False
    if flt.dnat is not None and bool(f.status & Status.DST_NAT) != flt.dnat:
        return False
    if flt.labels is not None:
        want = int.from_bytes(flt.labels, "little")
        if not {n for n in range(128) if want >> n & 1} <= f.labels:
            return False
    return True


@SETTINGS
@given(table=tables(), flt=filters())
def test_filter_same_answer_in_kernel_in_c_and_in_python(shared_netns, table, flt):
    with conntrack.Conntrack(shared_netns.name) as fast, \
            conntrack.Conntrack(shared_netns.name, features=KernelFeatures.none()) as slow:
        fast.flush()
        fast.create_many(table)
        everything = list(fast.dump())
        expected = {f.key for f in everything if reference_match(flt, f)}
        assert {f.key for f in fast.dump(flt)} == expected
        assert {f.key for f in slow.dump(flt)} == expected
        assert fast.count(flt) == slow.count(flt) == len(expected)


@SETTINGS
@given(table=tables(), flt=filters())
def test_bulk_delete_removes_exactly_the_matches(shared_netns, table, flt):
    with conntrack.Conntrack(shared_netns.name) as fast, \
            conntrack.Conntrack(shared_netns.name, features=KernelFeatures.none()) as slow:
        for handle in (fast, slow):
            handle.flush()
            handle.create_many(table)
            before = list(handle.dump())
            survivors = {f.key for f in before if not reference_match(flt, f)}
            dry = handle.delete(flt, dry_run=True)
            assert dry.dry_run and len(dry.matched) == len(before) - len(survivors)
            assert handle.count() == len(before)
            result = handle.delete(flt, all=flt.matches_everything)
            assert {f.key for f in handle.dump()} == survivors
            assert result.deleted == len(before) - len(survivors)
            if handle is slow and flt != Filter():  # an unfiltered flush needs no feature
                assert result.method == "batch" and result.exact


def test_unreplied_bulk_delete_takes_the_path_this_kernel_supports(ns_ct):
    """One filtered flush where the kernel filters flushes by status (5.15+), else dump and batched
    deletes; the same survivors either way."""
    expected = "flush" if ns_ct.features.flush_status else "batch"
    ns_ct.create_many([Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=p, dport=53, timeout=60,
                            status=(Status.SEEN_REPLY if p % 2 else 0)) for p in range(1000, 1100)])
    result = ns_ct.delete(Filter(unreplied=True))
    assert result.method == expected and result.deleted == 50
    assert all(not f.unreplied for f in ns_ct.dump()) and ns_ct.count() == 50


# -- delete never removes more than the filter says ------------------------------------------------

STATUS_BITS = ["SEEN_REPLY", "ASSURED", "SRC_NAT", "DST_NAT"]


@st.composite
def delete_filters(draw):
    """Keywords for a Filter, including ones that restrict nothing and ones that contradict
    themselves (both must be refused, never widened)."""
    kw = {}
    if draw(st.integers(0, 4)) == 3:  # parts that restrict nothing, in every spelling
        for name, values in (("mark", [(0, 0), "0/0"]), ("status", [0, [], ()]), ("labels", [[], 0]),
                             ("proto", [None]), ("zone", [None]), ("unreplied", [None])):
            if draw(st.booleans()):
                kw[name] = draw(st.sampled_from(values))
        return kw
    for name, values in (
        ("proto", [None, "tcp", "udp"]),
        ("unreplied", [None, True, False]),
        ("assured", [None, True, False]),
        ("snat", [None, False, True]),
        ("dnat", [None, False]),
        ("zone", [None, 0, 3]),
        ("labels", [None, [], 0, [1], 1 << 100]),
        ("family", [None, "ipv4", "ipv6"]),
    ):
        value = draw(st.sampled_from(values))
        if value is not None or draw(st.booleans()):  # sometimes an explicit None
            kw[name] = value
    if draw(st.booleans()):
        kw["status"] = draw(st.one_of(st.just(0), st.just([]), st.lists(st.sampled_from(STATUS_BITS), max_size=2)))
    if draw(st.booleans()):
        mask = draw(st.sampled_from([0, 0x1, 0xF, 0xF0, 0xFFFFFFFF]))
        kw["mark"] = (draw(st.sampled_from([0, 1, 2, 0x10, 0x11])), mask)
    if draw(st.integers(0, 3)) == 0:
        kw["dport"] = draw(st.sampled_from([53, (50, 90)]))
    return kw


def contradictory(kw) -> bool:
    """A plain reading of the keywords: parts that can never hold together."""
    from conntrack.enums import parse_status
    status = int(parse_status(kw["status"])) if kw.get("status") is not None else 0
    if kw.get("unreplied") is True and status & Status.SEEN_REPLY:
        return True
    for name, bit in (("assured", Status.ASSURED), ("snat", Status.SRC_NAT), ("dnat", Status.DST_NAT)):
        if kw.get(name) is False and status & bit:
            return True
    mark = kw.get("mark")
    if isinstance(mark, tuple) and mark[0] & ~mark[1]:
        return True
    return False


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(table=tables(), kw=delete_filters())
def test_delete_never_removes_an_entry_the_filter_does_not_match(shared_netns, table, kw):
    if contradictory(kw):
        event("contradictory")
        with pytest.raises(ValueError):
            Filter(**kw)
        return
    event("matches everything" if Filter(**kw).matches_everything else "restricting")
    flt = Filter(**kw)
    with conntrack.Conntrack(shared_netns.name) as fast, \
            conntrack.Conntrack(shared_netns.name, features=KernelFeatures.none()) as slow:
        for handle in (fast, slow):  # the flush path where the kernel can filter, and the batch path
            handle.flush()
            handle.create_many(table)
            before = list(handle.dump())
            keep = {f.key for f in before if not reference_match(flt, f)}
            if flt.matches_everything:
                assert not keep  # restricting nothing, it matches every entry
                with pytest.raises(conntrack.MatchesEverything):
                    handle.delete(flt)
                assert handle.count() == len(before)
                continue
            result = handle.delete(flt)
            after = {f.key for f in handle.dump()}
            assert keep <= after, "deleted entries the filter does not match"
            assert after == keep
            assert result.deleted == len(before) - len(keep)
