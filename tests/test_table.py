"""Table operations against the real kernel, each test in its own namespace."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import conntrack
from conntrack import Filter, Flow, Proto, Status, TCPState

CASES = [
    dict(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1234, dport=80,
         state="ESTABLISHED", status="SEEN_REPLY|ASSURED"),
    dict(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=5353, dport=53),
    dict(proto="icmp", src="10.0.0.1", dst="10.0.0.2", icmp_type=8, icmp_code=0, icmp_id=77),
    dict(proto="icmpv6", src="2001:db8::1", dst="2001:db8::2", icmp_type=128, icmp_id=9),
    dict(proto="sctp", src="10.0.0.1", dst="10.0.0.2", sport=3868, dport=3868, state="ESTABLISHED"),
    dict(proto="udp", src="2001:db8::1", dst="2001:db8::2", sport=1, dport=2),
    dict(proto="tcp", src="2001:db8::1", dst="2001:db8::2", sport=40000, dport=443, state="SYN_SENT"),
]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: "%s-%s" % (s["proto"], s["src"]))
def test_create_get_update_delete(ns_ct, spec):
    flow = Flow(timeout=120, mark=3, zone=5, **spec)
    ns_ct.create(flow)
    assert ns_ct.count() == 1

    got = ns_ct.get(Flow(zone=5, **spec))
    assert got.key == flow.key
    assert got.orig == flow.orig and got.reply == flow.reply
    assert got.mark == 3 and got.zone == 5
    assert 110 <= got.timeout <= 120
    assert got.status & Status.CONFIRMED
    if "state" in spec:
        assert got.state is not None and got.state.name == spec["state"]
    [dumped] = list(ns_ct.dump())
    assert dumped.id == got.id and dumped.orig == flow.orig

    ns_ct.update(got, mark=0xABCD, timeout=500)
    again = ns_ct.get(got)
    assert again.mark == 0xABCD and 490 <= again.timeout <= 500

    ns_ct.delete(again)
    assert ns_ct.count() == 0
    with pytest.raises(conntrack.NotFound):
        ns_ct.get(got)
    with pytest.raises(FileNotFoundError):  # NotFound is also the built-in class
        ns_ct.delete(got)


def test_duplicate_create_raises_exists(ns_ct):
    f = Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60)
    ns_ct.create(f)
    with pytest.raises(conntrack.Exists):
        ns_ct.create(f)
    with pytest.raises(FileExistsError):
        ns_ct.create(f)
    assert ns_ct.count() == 1


def test_zones_keep_same_tuple_apart(ns_ct):
    spec = dict(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2)
    for zone in (0, 1, 2):
        ns_ct.create(Flow(timeout=60, zone=zone, mark=zone, **spec))
    assert ns_ct.count() == 3
    assert ns_ct.get(Flow(zone=2, **spec)).mark == 2
    ns_ct.delete(Flow(zone=2, **spec))
    assert sorted(f.zone for f in ns_ct.dump()) == [0, 1]
    assert ns_ct.count(Filter(zone=1)) == 1


def test_key_tells_live_entries_apart_where_only_the_zone_differs(ns_ct):
    """Flow.key (the original direction's zone, protocol, original tuple) is unique among live entries:
    the kernel refuses a second entry with the same, and accepts these three side by side."""
    spec = dict(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60)
    for zones in (dict(zone=5), dict(orig_zone=7), dict(reply_zone=7)):
        ns_ct.create(Flow(**zones, **spec))
    with pytest.raises(conntrack.Exists):  # orig tuple in zone 0, as the reply_zone=7 entry's
        ns_ct.create(Flow(**spec))
    flows = list(ns_ct.dump())
    orig = flows[0].orig
    assert sorted(f.key[0] for f in flows) == [0, 5, 7] and {f.key[1:] for f in flows} == {(Proto.udp, orig)}
    assert len({f.key for f in flows}) == 3


def test_delete_of_a_read_flow_never_hits_its_successor(ns_ct):
    spec = dict(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, state="SYN_SENT")
    ns_ct.create(Flow(timeout=60, **spec))
    old = ns_ct.get(Flow(**spec))
    ns_ct.delete(old)
    # The kernel's id hashes the entry's address with its tuple, so a
    # successor that reuses the freed slab slot would get the same id: take
    # that slot with other entries first, as any busy table would.
    for port in range(100, 110):
        ns_ct.create(Flow(proto="udp", src="10.0.0.9", dst="10.0.0.8", sport=port, dport=1, timeout=60))
        ns_ct.create(Flow(timeout=60, mark=42, **spec))  # same tuple, new entry
        new = ns_ct.get(Flow(**spec))
        if new.id != old.id:
            break
        ns_ct.delete(new)
    assert new.id != old.id
    with pytest.raises(conntrack.NotFound):
        ns_ct.delete(old)  # pinned to the old id: the successor survives
    assert ns_ct.get(Flow(**spec)).mark == 42


def test_flush_per_family_spares_the_other(ns_ct):
    ns_ct.create(Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60))
    ns_ct.create(Flow(proto="udp", src="::1", dst="::2", sport=1, dport=2, timeout=60))
    ns_ct.flush(family="ipv4")
    assert [f.family for f in ns_ct.dump()] == [conntrack.Family.ipv6]
    ns_ct.flush()
    assert ns_ct.count() == 0


def test_dump_is_streamed_in_batches_and_can_be_abandoned(ns_ct):
    flows = [Flow(proto="udp", src="10.0.%d.%d" % (i // 250, i % 250 + 1), dst="10.9.9.9",
                  sport=1000, dport=53, timeout=300, mark=i % 4) for i in range(5000)]
    assert ns_ct.create_many(flows) == 5000
    assert ns_ct.count() == 5000
    it = ns_ct.dump()
    first = [next(it) for _ in range(10)]
    it.close()  # abandoned half-way: the handle stays usable
    assert len({f.id for f in first}) == 10
    assert sum(1 for _ in ns_ct.dump(prefetch=False)) == 5000
    assert sum(1 for _ in ns_ct.dump(Filter(mark=2))) == 1250
    assert ns_ct.count(Filter(mark=2)) == 1250
    assert sum(1 for _ in ns_ct.dump(where=lambda f: f.mark == 3)) == 1250


def test_count_matches_kernel_counter_and_procfs(ns_ct):
    ns_ct.create_many(Flow(proto="udp", src="10.0.0.%d" % i, dst="10.0.1.1", sport=1, dport=2, timeout=60)
                      for i in range(1, 101))
    count = ns_ct.ns.exec("cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout.strip()
    assert ns_ct.count() == int(count) == 100
    assert ns_ct.limit() == int(open("/proc/sys/net/netfilter/nf_conntrack_max").read())


def test_bad_input_changes_nothing(ns_ct):
    ns_ct.create(Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60))
    with pytest.raises(ValueError):
        ns_ct.create(Flow(proto="udp", src="10.0.0.1", dst="10.0.0.3", sport=1, dport=2))  # no timeout
    with pytest.raises(ValueError):
        ns_ct.update(ns_ct.get(Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2)),
                     mark=-1)
    with pytest.raises(ValueError):
        ns_ct.delete(Filter(src="10.0.0.0/33"))
    with pytest.raises(ValueError):
        ns_ct.delete(Filter(state="NOT_A_STATE"))
    assert [f.mark for f in ns_ct.dump()] == [0]


def test_create_many_stops_at_first_refusal(ns_ct):
    f = Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60)
    ns_ct.create(f)
    others = [Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=p, timeout=60) for p in (3, 4)]
    with pytest.raises(conntrack.Exists):
        ns_ct.create_many([others[0], f, others[1]])
    assert ns_ct.count() >= 2


def test_netns_spellings_and_errors(netns):
    own = os.readlink("/proc/thread-self/ns/net")
    with conntrack.Conntrack(netns.path) as by_path:
        by_path.create(Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60))
    fd = os.open(netns.path, os.O_RDONLY)
    try:
        with conntrack.Conntrack(fd) as by_fd:
            assert by_fd.count() == 1
    finally:
        os.close(fd)
    with pytest.raises(conntrack.NotFound, match="not found"):
        conntrack.Conntrack("ctpy-no-such-namespace")
    ct = conntrack.Conntrack(netns.name)
    ct.close()
    ct.close()
    with pytest.raises(ValueError, match="closed"):
        ct.count()
    # the calling thread is back in its own namespace
    assert os.readlink("/proc/thread-self/ns/net") == own


def test_missing_privilege_is_a_clear_permission_error(netns):
    # The child imports conntrack as root (the checkout may sit under /root, mode 0700, which
    # nobody cannot read), then becomes nobody: setuid from root clears every capability.
    code = (
        "import os, conntrack\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff:')]\n"
        "print('uid', os.getuid(), 'CapEff', caps[0])\n"
        "try:\n"
        "    conntrack.Conntrack().count()\n"
        "except PermissionError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(conntrack.__file__))))
    out = subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-c", code],
                         capture_output=True, text=True, env=env, check=True)
    who, err = out.stdout.splitlines()
    assert who == "uid 65534 CapEff 0000000000000000"
    assert err.startswith("NoPermission")
    assert "CAP_NET_ADMIN" in err


def test_states_and_statuses_are_typed(ns_ct):
    ns_ct.create(Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60,
                      state=TCPState.TIME_WAIT, status=Status.SEEN_REPLY))
    [f] = list(ns_ct.dump())
    assert f.state is TCPState.TIME_WAIT
    assert isinstance(f.status, Status) and f.status & Status.SEEN_REPLY
    assert f.proto is Proto.tcp and not f.unreplied


def test_summary_counts_in_c_match_a_python_count(ns_ct):
    flows = []
    for i in range(300):
        if i % 3 == 0:
            flows.append(Flow(proto="udp", src="10.0.0.1", dst="10.0.1.1", sport=i, dport=53, timeout=60))
        elif i % 3 == 1:
            flows.append(Flow(proto="tcp", src="10.0.0.1", dst="10.0.1.1", sport=i, dport=80, timeout=60,
                              state="ESTABLISHED" if i % 2 else "SYN_SENT",
                              status="SEEN_REPLY|ASSURED" if i % 2 else 0))
        else:
            flows.append(Flow(proto="icmp", src="10.0.0.1", dst="10.0.1.1", icmp_id=i, timeout=60))
    ns_ct.create_many(flows)
    s = ns_ct.summary()
    dumped = list(ns_ct.dump())
    assert s.total == len(dumped) == 300
    assert s.unreplied == sum(f.unreplied for f in dumped)
    assert s.assured == sum(f.assured for f in dumped)
    assert s.by_proto == {Proto.udp: 100, Proto.tcp: 100, Proto.icmp: 100}
    assert s.tcp_states == {TCPState.ESTABLISHED: 50, TCPState.SYN_SENT: 50}
    assert ns_ct.summary(Filter(proto="tcp")).total == 100


def test_labels_round_trip_and_filter_when_the_namespace_keeps_them(ns_ct):
    ns_ct.ns.keep_labels()
    ns_ct.create(Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60,
                      labels={1, 5, 127}))
    [f] = list(ns_ct.dump())
    assert f.labels == frozenset({1, 5, 127})
    ns_ct.update(f, labels={9})
    assert ns_ct.get(f).labels == frozenset({9})
    assert ns_ct.count(Filter(labels={9})) == 1 and ns_ct.count(Filter(labels={1})) == 0


def test_labels_without_storage_give_a_clear_error(ns_ct):
    ns_ct.create(Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60))
    [f] = list(ns_ct.dump())
    with pytest.raises(conntrack.ConntrackOSError, match="ct label"):
        ns_ct.update(f, labels={9})
    assert ns_ct.get(f).labels == frozenset()


def test_batches_fit_a_small_receive_buffer(ns_ct, monkeypatch):
    # What a caller without CAP_NET_ADMIN in the initial namespace gets (rmem_max):
    # the batches must shrink so that every acknowledgement fits.
    monkeypatch.setattr(conntrack._binding, "RCVBUF", 65536)
    with conntrack.Conntrack(ns_ct.ns.name) as small:
        flows = [Flow(proto="udp", src="10.0.%d.%d" % (i // 250, i % 250 + 1), dst="10.9.0.1",
                      sport=1000 + i, dport=53, timeout=300) for i in range(6000)]
        assert small.create_many(flows) == 6000
        result = small.delete(Filter(proto="udp", dport=(53, 54)))  # a range: dump + batched deletes
        assert (result.method, result.deleted) == ("batch", 6000)
        assert small.count() == 0  # and the handle still answers


def test_a_flush_never_goes_out_without_the_filter_it_relies_on(ns_ct):
    # flush features without the matching dump features: the zone part would
    # not be sent, so a flush would empty the table; it must take the batch way
    odd = conntrack.KernelFeatures(flush_zone=True, flush_mark=True, flush_status=True, flush_tuple=True)
    for zone in (0, 5):
        ns_ct.create(Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60, zone=zone))
    with conntrack.Conntrack(ns_ct.ns.name, features=odd) as ct:
        for flt in (Filter(zone=5), Filter(mark=1), Filter(unreplied=False), Filter(family="ipv4", proto="tcp")):
            assert not flt.compile(odd).flush_ok
        result = ct.delete(Filter(zone=5))
    assert result.method == "batch" and result.deleted == 1
    assert [f.zone for f in ns_ct.dump()] == [0]


def test_update_of_an_entry_with_a_reply_only_zone(ns_ct):
    ns_ct.ns.cli("-I", "-p", "udp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--sport", "1", "--dport", "2",
                 "-t", "60", "--reply-zone", "5")
    [f] = list(ns_ct.dump())
    assert f.zone == 5 and f.orig
    ns_ct.update(f, mark=7)
    assert ns_ct.get(f).mark == 7


def test_abandoned_dumps_release_their_thread_and_socket(ns_ct):
    import gc
    import threading
    import time

    ns_ct.create_many(Flow(proto="udp", src="10.0.%d.%d" % (i // 250, i % 250 + 1), dst="10.9.0.1",
                           sport=1, dport=53, timeout=300) for i in range(5000))
    before = threading.active_count()
    for _ in range(5):
        it = ns_ct.dump()
        next(it)
        del it  # not closed: left to the garbage collector
    gc.collect()
    deadline = time.monotonic() + 60
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
    assert ns_ct.count() == 5000


NO_NET_ADMIN = """
import sys
from conntrack import Conntrack, Flow, KernelFeatures
flows = [Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=p, dport=53, timeout=60) for p in range(1, 300)]
with Conntrack(sys.argv[1], features=KernelFeatures.none()) as ct:
    try:
        ct.create_many(flows, chunk=100)
    except PermissionError as exc:
        print("refused", exc.errno, exc.created)
"""


def test_batch_without_cap_net_admin_is_refused_not_hung(ns_ct):
    """nfnetlink checks CAP_NET_ADMIN once per sendmsg and acks only the first request: the
    batch must not wait for the other acknowledgements (it did: a hang)."""
    proc = subprocess.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", sys.executable,
                           "-c", NO_NET_ADMIN, ns_ct.ns.name],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["refused", "1", "0"]
    assert ns_ct.count() == 0
