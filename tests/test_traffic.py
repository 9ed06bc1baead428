"""Real traffic in a namespace shows up as typed flows."""

from __future__ import annotations

import ipaddress
import time

from helpers import TCP_PAIR, UDP_UNREPLIED

from conntrack import Filter, Proto, Status, TCPState


def _wait_for(ct, flt, n=1, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flows = list(ct.dump(flt))
        if len(flows) >= n:
            return flows
        time.sleep(0.05)
    return list(ct.dump(flt))


def test_tcp_connection_is_established_and_assured(ns_ct):
    ns_ct.ns.track()
    proc = ns_ct.ns.python(TCP_PAIR)
    try:
        cport, sport = map(int, proc.stdout.readline().split())
        [flow] = _wait_for(ns_ct, Filter(proto="tcp", sport=cport, dport=sport))
        lo = ipaddress.ip_address("127.0.0.1")
        assert flow.proto is Proto.tcp
        assert (flow.orig.src, flow.orig.dst, flow.orig.sport, flow.orig.dport) == (lo, lo, cport, sport)
        assert (flow.reply.sport, flow.reply.dport) == (sport, cport)
        assert flow.state is TCPState.ESTABLISHED
        assert flow.status & Status.ASSURED and flow.status & Status.SEEN_REPLY
        assert not flow.unreplied
        assert ns_ct.count(Filter(state="ESTABLISHED")) == 1
        # the reference tool sees the same entry
        lines = ns_ct.ns.cli_lines("-L", "-p", "tcp", "--sport", str(cport))
        assert len(lines) == 1 and "ESTABLISHED" in lines[0] and "[ASSURED]" in lines[0]
    finally:
        proc.stdin.close()
        proc.wait(5)


def test_udp_without_answer_is_unreplied(ns_ct):
    ns_ct.ns.track()
    proc = ns_ct.ns.python(UDP_UNREPLIED, "9")  # the discard port: nobody listens
    try:
        src_port = int(proc.stdout.readline())
        [flow] = _wait_for(ns_ct, Filter(proto="udp", sport=src_port))
        assert flow.unreplied and flow.orig.dport == 9
        assert "[UNREPLIED]" in str(flow)
        assert ns_ct.count(Filter(unreplied=True, proto="udp")) >= 1
        cli = ns_ct.ns.cli_lines("-L", "-p", "udp", "--sport", str(src_port))
        assert len(cli) == 1 and "[UNREPLIED]" in cli[0]
    finally:
        proc.stdin.close()
        proc.wait(5)


def test_counters_and_timestamps_when_accounting_is_on(ns_ct):
    # both switches are per network namespace: the host is not touched
    ns_ct.ns.exec("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1")
    ns_ct.ns.track()
    before = time.time()
    proc = ns_ct.ns.python(TCP_PAIR)
    try:
        cport, sport = map(int, proc.stdout.readline().split())
        [flow] = _wait_for(ns_ct, Filter(proto="tcp", sport=cport, dport=sport))
        c = flow.counters
        assert c is not None
        assert c.orig_packets >= 3 and c.reply_packets >= 2  # handshake + data each way
        assert c.orig_bytes > 60 * c.orig_packets // 2 and c.reply_bytes > 0
        assert flow.start is not None and before - 5 <= flow.start.timestamp() <= time.time() + 5
        assert flow.stop is None
        assert "packets=%d bytes=%d" % (c.orig_packets, c.orig_bytes) in str(flow)
    finally:
        proc.stdin.close()
        proc.wait(5)


def test_counters_are_none_when_accounting_is_off(ns_ct):
    ns_ct.ns.exec("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=0")
    ns_ct.ns.track()
    proc = ns_ct.ns.python(TCP_PAIR)
    try:
        cport, sport = map(int, proc.stdout.readline().split())
        [flow] = _wait_for(ns_ct, Filter(proto="tcp", sport=cport, dport=sport))
        assert flow.counters is None and flow.start is None
    finally:
        proc.stdin.close()
        proc.wait(5)
