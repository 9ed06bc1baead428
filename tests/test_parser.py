"""The dump path's own ctnetlink parser agrees with libnetfilter_conntrack's.

The fast parser (csrc/ctpy.c, parse_fast) reads attributes straight into
records; ctpy_dump_crosscheck parses every entry of a live table with both
it and nfct_nlmsg_parse and compares the records field by field.
"""

from __future__ import annotations

from helpers import TCP_PAIR, UDP_UNREPLIED

from conntrack import Flow


def _check(ct):
    checked, mismatched, first = ct._sock.crosscheck()
    detail = ""
    if first is not None:
        from conntrack.flow import Flow as F
        fast, ref = (F._from_batch(b, 0) for b in first)
        detail = "\nfast: %r\n ref: %r" % (fast.to_dict(), ref.to_dict())
    assert mismatched == 0, "%d of %d entries differ%s" % (mismatched, checked, detail)
    return checked


def test_fast_parser_matches_libnetfilter_conntrack_on_a_mixed_table(ns_ct):
    ns_ct.ns.exec("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1")
    flows = [
        Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=300, state="ESTABLISHED",
             status="SEEN_REPLY|ASSURED", mark=0xFFFFFFFF, zone=7),
        Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=65535, dport=0, timeout=300),
        Flow(proto="icmp", src="10.0.0.1", dst="10.0.0.2", icmp_type=13, icmp_code=0, icmp_id=65535, timeout=300),
        Flow(proto="icmpv6", src="2001:db8::1", dst="2001:db8::2", icmp_type=128, icmp_id=1, timeout=300),
        Flow(proto="sctp", src="2001:db8::1", dst="2001:db8::2", sport=9, dport=9, timeout=300,
             state="COOKIE_WAIT"),
        Flow(proto="udplite", src="10.9.9.9", dst="10.8.8.8", sport=7, dport=8, timeout=300, zone=65535),
        Flow(proto="gre", src="10.0.0.5", dst="10.0.0.6", timeout=300),
        Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=5, dport=6, reply_src="192.0.2.1",
             reply_dst="10.0.0.1", reply_sport=6, reply_dport=5, timeout=300),
    ]
    ns_ct.create_many(flows)
    ns_ct.ns.track()
    procs = [ns_ct.ns.python(TCP_PAIR), ns_ct.ns.python(UDP_UNREPLIED, "9")]
    try:
        for p in procs:
            p.stdout.readline()
        assert _check(ns_ct) == len(flows) + 2
        icmp = [f for f in ns_ct.dump() if f.proto.name == "icmp"][0]
        assert (icmp.orig.icmp_type, icmp.reply.icmp_type) == (13, 14)  # timestamp request/reply
        assert icmp.reply == flows[2].reply
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(5)


def test_fast_parser_matches_on_many_entries(ns_ct):
    ns_ct.create_many(Flow(proto="tcp" if i % 2 else "udp", src="10.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255),
                           dst="10.255.0.1", sport=i % 65536, dport=443, timeout=300, mark=i)
                      for i in range(20000))
    assert _check(ns_ct) == 20000
