"""conntrack(8) parity on what a library user does (issue 12, section 4).

Each case does the same thing with conntrack(8) 1.4.7, the C reference tool,
and with the library on the same throwaway namespace, and compares what the
kernel then holds, read by both tools.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from typing import List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conntrack import Conntrack, Filter, Flow, Status
from conntrack.enums import TCPState, parse_proto


def _norm(line: str) -> str:
    """Drop what ticks between two reads: the timeout (third field) and use=."""
    parts = line.split()
    parts[2] = "T"
    return re.sub(r" use=\d+", "", " ".join(parts))


def _cli_entries(ct, *args: str) -> List[str]:
    return sorted(_norm(line) for line in ct.ns.cli_lines("-L", *args))


def _ours(ct, flt=None) -> List[str]:
    return sorted(_norm(str(f)) for f in ct.dump(flt))


def _same_as_cli(ct, cli_args: List[str], flow: Flow) -> Flow:
    """conntrack -I cli_args, read back; flush; ct.create(flow), read back: the same entry."""
    ct.ns.cli("-I", *cli_args)
    by_cli = _cli_entries(ct)
    (made_by_cli,) = list(ct.dump())
    cli_view = made_by_cli.to_dict()
    ct.flush()
    ct.create(flow)
    (made_by_lib,) = list(ct.dump())
    lib_view = made_by_lib.to_dict()
    for d in (cli_view, lib_view):
        d.pop("timeout"), d.pop("id"), d.pop("use")
    assert lib_view == cli_view
    assert _cli_entries(ct) == by_cli and len(by_cli) == 1
    return made_by_lib


# -- 1. update(status=...) adds bits ----------------------------------------------------------


def test_update_status_ors_the_bits_in_like_conntrack_U(ns_ct):
    base = dict(proto="tcp", src="10.0.0.1", dst="10.0.0.2", dport=80, timeout=300,
                state="ESTABLISHED", status="SEEN_REPLY|ASSURED")
    ns_ct.create(Flow(sport=1, **base))
    ns_ct.create(Flow(sport=2, **base))
    ns_ct.ns.cli("-U", "-p", "tcp", "-s", "10.0.0.1", "--sport", "1", "-u", "FIXED_TIMEOUT")
    mine = ns_ct.get(Flow(sport=2, **base))
    ns_ct.update(mine, status="FIXED_TIMEOUT")  # EBUSY before: it sent FIXED_TIMEOUT alone
    by_cli = ns_ct.get(Flow(sport=1, **base)).status
    by_lib = ns_ct.get(Flow(sport=2, **base)).status
    assert by_lib == by_cli == Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED | Status.FIXED_TIMEOUT
    # both tools print the two entries the same way (but for the port)
    lines = _cli_entries(ns_ct)
    assert lines[0].replace("sport=1 ", "sport=2 ").replace("dport=1 ", "dport=2 ") == lines[1]


def test_update_refuses_bits_the_kernel_would_ignore(ns_ct):
    flow = Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=300)
    ns_ct.create(flow)
    before = _cli_entries(ns_ct)
    for bits in ("SRC_NAT", "DST_NAT_DONE", "OFFLOAD", "EXPECTED", "DYING"):
        with pytest.raises(ValueError, match="update can add only"):
            ns_ct.update(flow, status=bits)
    assert ns_ct.get(flow).status == Status.CONFIRMED
    assert _cli_entries(ns_ct) == before
    ns_ct.update(flow, status="CONFIRMED|ASSURED")  # a bit it has already is fine
    assert ns_ct.get(flow).status == Status.CONFIRMED | Status.ASSURED


# -- 2. NAT entries ----------------------------------------------------------------------------


NAT_CASES = [
    # conntrack -I options, the same flow for the library
    (["-p", "tcp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--sport", "1000", "--dport", "80", "-t", "300",
      "--state", "ESTABLISHED", "-u", "SEEN_REPLY", "--dst-nat", "10.0.0.9:8080"],
     dict(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1000, dport=80, timeout=300, state="ESTABLISHED",
          status="SEEN_REPLY", reply_src="10.0.0.9", reply_sport=8080), Status.DST_NAT),
    (["-p", "udp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--sport", "1001", "--dport", "53", "-t", "300",
      "--src-nat", "192.168.1.1:4000"],
     dict(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1001, dport=53, timeout=300,
          reply_dst="192.168.1.1", reply_dport=4000), Status.SRC_NAT),
    (["-p", "udp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--sport", "1002", "--dport", "53", "-t", "300",
      "--src-nat", "192.168.1.1"],
     dict(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1002, dport=53, timeout=300,
          reply_dst="192.168.1.1"), Status.SRC_NAT),
    (["-p", "udp", "-s", "2001:db8::1", "-d", "2001:db8::2", "--sport", "1001", "--dport", "53", "-t", "300",
      "--src-nat", "[2001:db8::9]:4000"],
     dict(proto="udp", src="2001:db8::1", dst="2001:db8::2", sport=1001, dport=53, timeout=300,
          reply_dst="2001:db8::9", reply_dport=4000), Status.SRC_NAT),
    (["-p", "tcp", "-s", "2001:db8::1", "-d", "2001:db8::2", "--sport", "1002", "--dport", "443", "-t", "300",
      "--state", "SYN_SENT", "--dst-nat", "2001:db8::7"],
     dict(proto="tcp", src="2001:db8::1", dst="2001:db8::2", sport=1002, dport=443, timeout=300,
          state="SYN_SENT", reply_src="2001:db8::7"), Status.DST_NAT),
    (["-p", "udp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--sport", "7", "--dport", "8", "-t", "300",
      "--src-nat", "10.9.9.9:70", "--dst-nat", "10.8.8.8:80"],
     dict(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=7, dport=8, timeout=300,
          reply_src="10.8.8.8", reply_sport=80, reply_dst="10.9.9.9", reply_dport=70),
     Status.SRC_NAT | Status.DST_NAT),
    (["-p", "icmp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--icmp-type", "8", "--icmp-code", "0", "--icmp-id", "77",
      "-t", "300", "--src-nat", "10.9.9.9"],
     dict(proto="icmp", src="10.0.0.1", dst="10.0.0.2", icmp_id=77, timeout=300, reply_dst="10.9.9.9"),
     Status.SRC_NAT),
    (["-p", "icmpv6", "-s", "2001:db8::1", "-d", "2001:db8::2", "--icmpv6-type", "128", "--icmpv6-code", "0",
      "--icmpv6-id", "5", "-t", "300", "--dst-nat", "2001:db8::99"],
     dict(proto="icmpv6", src="2001:db8::1", dst="2001:db8::2", icmp_id=5, timeout=300, reply_src="2001:db8::99"),
     Status.DST_NAT),
]


@pytest.mark.parametrize("cli_args,kw,nat", NAT_CASES, ids=lambda v: None)
def test_nat_entries_are_created_as_conntrack_I_creates_them(ns_ct, cli_args, kw, nat):
    made = _same_as_cli(ns_ct, cli_args, Flow(**kw))
    assert made.status & nat == nat
    assert made.snat == bool(nat & Status.SRC_NAT) and made.dnat == bool(nat & Status.DST_NAT)
    option = "--src-nat" if nat & Status.SRC_NAT else "--dst-nat"
    assert len(ns_ct.ns.cli_lines("-L", option)) == 1


def test_a_dumped_nat_entry_recreates_identically(ns_ct):
    ns_ct.ns.cli("-I", *NAT_CASES[5][0])
    (flow,) = list(ns_ct.dump())
    before = _cli_entries(ns_ct)
    ns_ct.flush()
    ns_ct.create(flow)  # its status carries CONFIRMED and the NAT bits: the kernel's own
    assert _cli_entries(ns_ct) == before


def _nat_table(ct) -> None:
    for args, _kw, _nat in NAT_CASES[:6]:  # libnetfilter_conntrack 1.0.9 takes ICMP ids for ports
        ct.ns.cli("-I", *args)
    ct.ns.cli("-I", "-p", "udp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--sport", "9", "--dport", "9",
              "-t", "300")  # no NAT
    ct.ns.cli("-I", "-p", "udp", "-s", "10.0.0.5", "-d", "10.0.0.2", "--sport", "9", "--dport", "9",
              "-t", "300", "--dst-nat", "10.0.0.2:99")  # port only


NAT_FILTERS = [
    (["--src-nat"], dict(src_nat=True)),
    (["--dst-nat"], dict(dst_nat=True)),
    (["--any-nat"], dict(any_nat=True)),
    (["--src-nat", "192.168.1.1"], dict(src_nat="192.168.1.1")),
    (["--src-nat", "192.168.1.1:4000"], dict(src_nat="192.168.1.1:4000")),
    (["--src-nat", "192.168.1.1:4001"], dict(src_nat=("192.168.1.1", 4001))),
    (["--dst-nat", "10.0.0.9"], dict(dst_nat="10.0.0.9")),
    (["--dst-nat", "10.0.0.9:8080"], dict(dst_nat="10.0.0.9:8080")),
    (["--dst-nat", "10.8.8.8:80"], dict(dst_nat="10.8.8.8:80")),
    (["--dst-nat", "10.0.0.2:99"], dict(dst_nat="10.0.0.2:99")),  # the address did not change: no match
    (["--src-nat", "--dst-nat"], dict(src_nat=True, dst_nat=True)),
    (["--src-nat", "10.9.9.9", "--dst-nat", "10.8.8.8"], dict(src_nat="10.9.9.9", dst_nat="10.8.8.8")),
]


@pytest.mark.parametrize("cli_args,kw", NAT_FILTERS, ids=lambda v: None)
def test_nat_filters_list_what_conntrack_L_lists(ns_ct, cli_args, kw):
    _nat_table(ns_ct)
    theirs = _cli_entries(ns_ct, *cli_args)
    assert _ours(ns_ct, Filter(**kw)) == theirs
    assert ns_ct.count(Filter(**kw)) == len(theirs)


def test_nat_filters_by_ipv6_address(ns_ct):
    """conntrack 1.4.7 compares only IPv4 NAT addresses (an IPv6 one matches any SNAT);
    the library compares both families, so this is checked against the entries."""
    _nat_table(ns_ct)
    got = list(ns_ct.dump(Filter(src_nat="[2001:db8::9]:4000")))
    assert [str(f.reply.dst) for f in got] == ["2001:db8::9"]
    assert list(ns_ct.dump(Filter(src_nat="2001:db8::8"))) == []
    assert [str(f.reply.src) for f in ns_ct.dump(Filter(dst_nat="2001:db8::7"))] == ["2001:db8::7"]
    assert len(ns_ct.ns.cli_lines("-L", "-f", "ipv6", "--src-nat")) == 1


def test_any_nat_with_an_address_matches_either_direction(ns_ct):
    """conntrack 1.4.7's --any-nat ADDR tests ADDR on the SNAT side only and lets any
    DNAT entry through; the library tests ADDR on both sides."""
    _nat_table(ns_ct)
    assert _ours(ns_ct, Filter(any_nat="192.168.1.1")) == _cli_entries(ns_ct, "--src-nat", "192.168.1.1")
    assert _ours(ns_ct, Filter(any_nat="10.0.0.9:8080")) == _cli_entries(ns_ct, "--dst-nat", "10.0.0.9:8080")


@pytest.mark.parametrize("cli_args,kw", [NAT_FILTERS[0], NAT_FILTERS[1], NAT_FILTERS[3], NAT_FILTERS[7], NAT_FILTERS[10]],
                         ids=lambda v: None)
def test_nat_filters_delete_what_conntrack_D_deletes(ns_ct, cli_args, kw):
    _nat_table(ns_ct)
    ns_ct.ns.cli("-D", *cli_args)
    left_by_cli = _cli_entries(ns_ct)
    ns_ct.flush()
    _nat_table(ns_ct)
    result = ns_ct.delete(Filter(**kw))
    assert result.method == "batch" and result.deleted > 0
    assert _cli_entries(ns_ct) == left_by_cli


@pytest.mark.parametrize("value", ["1.2.3.4:99999", "1.2.3.4:abc", "1.2.3.4:-1", "1.2.3:80", "300.1.1.1",
                                   "[2001:db8::1", "", "1.2.3.4:"])
def test_malformed_nat_addresses_and_ports_are_refused(netns, value):
    with pytest.raises(ValueError, match="dst_nat"):
        Filter(dst_nat=value)
    if value not in ("1.2.3:80",):  # inet_aton reads 1.2.3 as 1.2.0.3; we refuse it
        assert netns.cli("-L", "--dst-nat", value, check=False).returncode != 0


def test_nat_filters_refuse_mixed_families():
    with pytest.raises(ValueError, match="src_nat: .* not in family ipv6"):
        Filter(family="ipv6", src_nat="10.0.0.1")
    with pytest.raises(ValueError, match="not in family"):
        Filter(dst_nat="10.0.0.1", src="2001:db8::1")


# -- 3. zones of one direction -------------------------------------------------------------------


ZONE_CASES = [
    (["--orig-zone", "3"], dict(orig_zone=3), (3, None, 3)),
    (["--reply-zone", "4"], dict(reply_zone=4), (None, 4, 4)),
    (["-w", "8"], dict(zone=8), (None, None, 8)),
]


@pytest.mark.parametrize("cli_zone,kw,expect", ZONE_CASES, ids=lambda v: None)
def test_zones_of_one_direction_are_created_like_conntrack_I(ns_ct, cli_zone, kw, expect):
    made = _same_as_cli(ns_ct, ["-p", "udp", "-s", "10.1.0.1", "-d", "10.1.0.2", "--sport", "1", "--dport", "2",
                                "-t", "300", *cli_zone],
                        Flow(proto="udp", src="10.1.0.1", dst="10.1.0.2", sport=1, dport=2, timeout=300, **kw))
    assert (made.orig_zone, made.reply_zone, made.zone) == expect


def _zone_table(ct) -> None:
    for dport, zone in enumerate((["--orig-zone", "3"], ["--reply-zone", "3"], ["-w", "3"], ["--orig-zone", "4"],
                                  ["--reply-zone", "4"], [])):
        ct.ns.cli("-I", "-p", "udp", "-s", "10.1.0.1", "-d", "10.1.0.2", "--sport", "1", "--dport", str(dport + 1),
                  "-t", "300", *zone)


@pytest.mark.parametrize("cli_args,kw", [(["--orig-zone", "3"], dict(orig_zone=3)),
                                         (["--reply-zone", "3"], dict(reply_zone=3)),
                                         (["--reply-zone", "4"], dict(reply_zone=4)),
                                         (["--orig-zone", "5"], dict(orig_zone=5))], ids=lambda v: None)
def test_zone_filters_list_and_delete_like_conntrack(ns_ct, cli_args, kw):
    _zone_table(ns_ct)
    theirs = _cli_entries(ns_ct, *cli_args)
    assert _ours(ns_ct, Filter(**kw)) == theirs
    ns_ct.ns.cli("-D", *cli_args, check=bool(theirs))
    left_by_cli = _cli_entries(ns_ct)
    ns_ct.flush()
    _zone_table(ns_ct)
    ns_ct.delete(Filter(**kw))
    assert _cli_entries(ns_ct) == left_by_cli


def test_two_zones_for_one_entry_are_refused_like_the_kernel_does(netns):
    args = ["-I", "-p", "udp", "-s", "10.1.0.1", "-d", "10.1.0.2", "--sport", "1", "--dport", "2", "-t", "300"]
    for extra in (["--orig-zone", "5", "--reply-zone", "6"], ["-w", "8", "--orig-zone", "9"]):
        assert netns.cli(*args, *extra, check=False).returncode != 0  # the kernel says EINVAL
    for kw in (dict(orig_zone=5, reply_zone=6), dict(zone=8, orig_zone=9), dict(zone=1, reply_zone=1)):
        with pytest.raises(ValueError, match="an entry has one zone"):
            Flow(proto="udp", src="10.1.0.1", dst="10.1.0.2", sport=1, dport=2, timeout=300, **kw)
    with pytest.raises(ValueError, match="orig_zone"):
        Filter(orig_zone=0)


def test_one_direction_zone_entries_get_update_and_delete(ns_ct):
    flow = Flow(proto="udp", src="10.1.0.1", dst="10.1.0.2", sport=1, dport=2, timeout=300, orig_zone=3)
    ns_ct.create(flow)
    ns_ct.update(ns_ct.get(flow), mark=7)
    assert ns_ct.ns.cli_lines("-L", "--orig-zone", "3", "-m", "7")
    ns_ct.delete(flow)
    assert _cli_entries(ns_ct) == []


# -- 4. names conntrack(8) accepts ----------------------------------------------------------------


def test_tcp_state_listen_is_conntracks_name_for_state_9(ns_ct):
    made = _same_as_cli(ns_ct, ["-p", "tcp", "-s", "10.2.0.1", "-d", "10.2.0.2", "--sport", "1", "--dport", "2",
                                "-t", "300", "--state", "LISTEN"],
                        Flow(proto="tcp", src="10.2.0.1", dst="10.2.0.2", sport=1, dport=2, timeout=300,
                             state="LISTEN"))
    assert made.state == TCPState.LISTEN == TCPState.SYN_SENT2 == 9
    assert _ours(ns_ct, Filter(state="LISTEN")) == _cli_entries(ns_ct, "-p", "tcp", "--state", "LISTEN")


def test_protocol_names_from_etc_protocols(ns_ct):
    made = _same_as_cli(ns_ct, ["-p", "igmp", "-s", "10.3.0.1", "-d", "10.3.0.2", "-t", "300"],
                        Flow(proto="igmp", src="10.3.0.1", dst="10.3.0.2", timeout=300))
    assert made.proto == 2 and made.proto.name == "proto_2"
    ns_ct.create(Flow(proto="udp", src="10.3.0.1", dst="10.3.0.2", sport=1, dport=2, timeout=300))
    theirs = _cli_entries(ns_ct, "-p", "igmp")
    assert len(theirs) == 1
    for name in ("igmp", "IGMP", "proto_2", 2):
        assert _ours(ns_ct, Filter(proto=name)) == theirs


def test_every_name_the_library_prints_is_accepted_back(ns_ct):
    for proto in ("tcp", "udp", "igmp", "ipv6-icmp", "sctp", "gre", "udplite", "ospf", "dccp"):
        p = parse_proto(proto)
        assert parse_proto(p.name) == p
        assert Filter(proto=p.name).proto == p
    for state in TCPState.__members__:
        assert Filter(proto="tcp", state=state).state is not None
    for bit in Status:
        assert Filter(status=bit.name).status == bit
    with pytest.raises(ValueError, match="/etc/protocols"):
        parse_proto("no-such-protocol")
    with pytest.raises(ValueError):
        parse_proto("proto_256")


@pytest.mark.root
@pytest.mark.unshare  # a private mount namespace
def test_without_etc_protocols_the_librarys_names_still_work():
    """Debian without netbase has no /etc/protocols: hide it in a private mount namespace."""
    code = ("from conntrack.enums import parse_proto\n"
            "print(parse_proto('udp').name, parse_proto('proto_2').name, parse_proto('icmpv6').name)\n"
            "try:\n    parse_proto('igmp')\nexcept ValueError as e:\n    print('refused', e)\n")
    out = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind /dev/null /etc/protocols && exec "$@"',
                          "sh", sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "udp proto_2 icmpv6"
    assert out.splitlines()[1].startswith("refused proto: unknown protocol 'igmp'")


def test_status_unset_means_no_bits(ns_ct):
    made = _same_as_cli(ns_ct, ["-p", "udp", "-s", "10.4.0.1", "-d", "10.4.0.2", "--sport", "1", "--dport", "2",
                                "-t", "300", "-u", "UNSET"],
                        Flow(proto="udp", src="10.4.0.1", dst="10.4.0.2", sport=1, dport=2, timeout=300,
                             status="UNSET"))
    assert made.status == Status.CONFIRMED
    assert Filter(status="UNSET").status == Status(0)
    assert Filter(status="ASSURED|unset").status == Status.ASSURED


# -- 5. what the kernel would drop without a word -----------------------------------------------


def test_nat_status_without_a_translated_tuple_is_refused_not_dropped(ns_ct):
    args = ["-p", "udp", "-s", "10.5.0.1", "-d", "10.5.0.2", "--sport", "1", "--dport", "2", "-t", "300"]
    ns_ct.ns.cli("-I", *args, "-u", "DST_NAT")  # conntrack(8) creates it, without DST_NAT
    (by_cli,) = list(ns_ct.dump())
    assert not by_cli.dnat
    ns_ct.flush()
    for bits in ("DST_NAT", "SRC_NAT|SEEN_REPLY", "SRC_NAT_DONE", "OFFLOAD", "EXPECTED", "TEMPLATE"):
        with pytest.raises(ValueError, match="does not let a create set"):
            ns_ct.create(Flow(proto="udp", src="10.5.0.1", dst="10.5.0.2", sport=1, dport=2, timeout=300,
                              status=bits))
        with pytest.raises(ValueError, match="does not let a create set"):
            ns_ct.create_many([Flow(proto="udp", src="10.5.0.1", dst="10.5.0.2", sport=1, dport=2, timeout=300,
                                    status=bits)])
    assert _cli_entries(ns_ct) == []


def test_labels_without_storage_raise_and_leave_no_entry(ns_ct):
    flow = Flow(proto="udp", src="10.6.0.1", dst="10.6.0.2", sport=1, dport=2, timeout=300, labels={1, 70})
    with pytest.raises(OSError) as info:
        ns_ct.create(flow)
    assert info.value.errno == errno.ENOSPC and "connlabels" in str(info.value)
    assert _cli_entries(ns_ct) == [] and ns_ct.count() == 0
    ns_ct.ns.keep_labels()
    ns_ct.create(flow)
    assert ns_ct.get(flow).labels == {1, 70}
    assert len(ns_ct.ns.cli_lines("-L", "-o", "labels")) == 1


def test_a_nat_clash_is_refused_by_both_tools(ns_ct):
    """Two SNATs to the same address and port towards the same destination: the kernel
    refuses the second (its reply tuple is taken), for conntrack(8) and the library alike."""
    snat = dict(proto="udp", dst="10.7.0.2", dport=53, timeout=300, reply_dst="192.168.9.9", reply_dport=4000)
    ns_ct.create(Flow(src="10.7.0.1", sport=1, **snat))
    assert ns_ct.ns.cli("-I", "-p", "udp", "-s", "10.7.0.3", "-d", "10.7.0.2", "--sport", "1", "--dport", "53",
                        "-t", "300", "--src-nat", "192.168.9.9:4000", check=False).returncode != 0
    with pytest.raises(OSError):
        ns_ct.create(Flow(src="10.7.0.3", sport=1, **snat))
    assert len(_cli_entries(ns_ct)) == 1


# -- the same options on pyconntrack --------------------------------------------------------------


def _pyct(ns, *args: str) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-m", "conntrack", *args, "--netns", ns.name], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=root), timeout=120)


@pytest.mark.parametrize("args", [["--src-nat", "192.168.1.1:4000"], ["--dst-nat"], ["--any-nat"],
                                  ["--dst-nat", "10.0.0.9"]], ids=lambda v: None)
def test_pyconntrack_list_and_delete_take_the_nat_options(ns_ct, args):
    _nat_table(ns_ct)
    listed = _pyct(ns_ct.ns, "list", *args)
    assert listed.returncode == 0, listed.stderr
    assert sorted(_norm(line) for line in listed.stdout.splitlines()) == _cli_entries(ns_ct, *args)
    if args[0] == "--any-nat":
        return  # conntrack -D takes no --any-nat
    ns_ct.ns.cli("-D", *args)
    left_by_cli = _cli_entries(ns_ct)
    ns_ct.flush()
    _nat_table(ns_ct)
    deleted = _pyct(ns_ct.ns, "delete", *args)
    assert deleted.returncode == 0, deleted.stderr
    assert _cli_entries(ns_ct) == left_by_cli


def test_pyconntrack_zone_options_and_bad_nat_values(ns_ct):
    _zone_table(ns_ct)
    listed = _pyct(ns_ct.ns, "list", "--reply-zone", "3")
    assert sorted(_norm(line) for line in listed.stdout.splitlines()) == _cli_entries(ns_ct, "--reply-zone", "3")
    before = _cli_entries(ns_ct)
    for args in (["--src-nat", "1.2.3.4:99999"], ["--dst-nat", "1.2.3"], ["--orig-zone", "70000"]):
        bad = _pyct(ns_ct.ns, "delete", *args)
        assert bad.returncode == 2 and args[0] in bad.stderr, bad.stderr
    assert _cli_entries(ns_ct) == before


# -- the C NAT matcher against a plain-Python reading of conntrack's test -------------------------

POOL4 = ["10.0.0.1", "10.0.0.2", "10.0.0.9"]
POOL6 = ["2001:db8::1", "2001:db8::2", "2001:db8::9"]


def _ref_side(flow: Flow, src: bool, addr, port) -> bool:
    """conntrack 1.4.7's filter_nat for one side, with libnetfilter_conntrack's is_[sd]nat/[sd]pat."""
    o, r = flow.orig, flow.reply
    if not flow.status & (Status.SRC_NAT_DONE if src else Status.DST_NAT_DONE):
        return False
    now, was = (r.dst, o.src) if src else (r.src, o.dst)
    pnow, pwas = (r.dport, o.sport) if src else (r.sport, o.dport)
    addr_nat = now != was
    port_nat = o.sport is not None and pnow != pwas
    if addr is None and port is None:
        return addr_nat or port_nat
    if addr is not None and not (addr_nat and str(now) == addr):
        return False
    return port is None or (port_nat and pnow == port)


@st.composite
def nat_tables(draw):
    flows = []
    for i in range(draw(st.integers(1, 12))):
        six = draw(st.booleans())
        pool = POOL6 if six else POOL4
        kw = dict(proto=draw(st.sampled_from(["tcp", "udp", "icmp"])), src=pool[0], dst=pool[1], timeout=300)
        if kw["proto"] == "icmp":
            kw.update(proto="icmpv6" if six else "icmp", icmp_id=i)
        else:
            kw.update(sport=1000 + i, dport=80)
        if draw(st.booleans()):
            kw["reply_src"] = draw(st.sampled_from(pool[1:]))
            if kw["proto"] in ("tcp", "udp"):
                kw["reply_sport"] = draw(st.sampled_from([80, 8080]))
        if draw(st.booleans()):
            kw["reply_dst"] = draw(st.sampled_from([pool[0], pool[2]]))
            if kw["proto"] in ("tcp", "udp"):
                kw["reply_dport"] = draw(st.sampled_from([1000 + i, 4000]))
        flows.append(Flow(**kw))
    return flows


nat_specs = st.tuples(st.one_of(st.none(), st.sampled_from(POOL4 + POOL6)),
                      st.one_of(st.none(), st.sampled_from([80, 8080, 4000, 1001])))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(table=nat_tables(), kind=st.sampled_from(["src_nat", "dst_nat", "any_nat"]), spec=nat_specs)
def test_nat_filter_in_c_agrees_with_the_reference(shared_netns, table, kind, spec):
    with Conntrack(shared_netns.name) as ct:
        ct.flush()
        for flow in table:
            try:
                ct.create(flow)
            except FileExistsError:  # two draws NATed onto the same reply tuple
                pass
        flt = Filter(**{kind: spec if spec != (None, None) else True})
        got = sorted(str(f.key) for f in ct.dump(flt))
        addr, port = spec
        sides = {"src_nat": (True,), "dst_nat": (False,), "any_nat": (True, False)}[kind]
        want = sorted(str(f.key) for f in ct.dump() if any(_ref_side(f, side, addr, port) for side in sides))
        assert got == want
