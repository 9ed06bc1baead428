"""The flow model without the kernel: construction, validation, rendering."""

from __future__ import annotations

import ipaddress
import json

import pytest

import conntrack
from conntrack import Flow, Proto, Status, TCPState


def test_udp_flow_fills_reply_as_inverse():
    f = Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=5353, dport=53, timeout=30)
    assert f.family == conntrack.Family.ipv4
    assert f.proto is Proto.udp
    assert f.orig == conntrack.FlowTuple(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2"), 5353, 53)
    assert f.reply.src == ipaddress.ip_address("10.0.0.2")
    assert (f.reply.sport, f.reply.dport) == (53, 5353)
    assert f.timeout == 30
    assert f.mark is None and f.zone == 0 and f.state is None
    assert f.unreplied


def test_ipv6_tcp_with_state_and_status():
    f = Flow(proto="tcp", src="2001:db8::1", dst="2001:db8::2", sport=1, dport=2,
             state="established", status="SEEN_REPLY|ASSURED", mark=7, zone=3, timeout=60)
    assert f.family == conntrack.Family.ipv6
    assert f.state is TCPState.ESTABLISHED
    assert f.status == Status.SEEN_REPLY | Status.ASSURED
    assert f.assured and not f.unreplied
    assert (f.mark, f.zone) == (7, 3)


def test_icmp_defaults_and_reply_type():
    f = Flow(proto="icmp", src="10.0.0.1", dst="10.0.0.2", icmp_id=77, timeout=30)
    assert (f.orig.icmp_type, f.orig.icmp_code, f.orig.icmp_id) == (8, 0, 77)
    assert f.reply.icmp_type == 0  # echo reply answers echo request
    assert f.orig.sport is None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(sport=70000), "sport"),
        (dict(dport=-1), "dport"),
        (dict(dst="2001:db8::1"), "dst"),
        (dict(src="10.0.0.300"), "src"),
        (dict(state="BOGUS"), "state"),
        (dict(mark=1 << 32), "mark"),
        (dict(zone=65536), "zone"),
        (dict(timeout=-5), "timeout"),
        (dict(proto="nosuchproto"), "proto"),
        (dict(status="ASSURED|NOPE"), "status"),
        (dict(labels=[128]), "labels"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    base = dict(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=5)
    base.update(kwargs)
    with pytest.raises(ValueError) as info:
        Flow(**base)
    assert str(info.value).startswith(field)


def test_ports_required_and_refused_where_they_do_not_belong():
    with pytest.raises(ValueError, match="sport/dport"):
        Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2")
    with pytest.raises(ValueError, match="no ports"):
        Flow(proto="icmp", src="10.0.0.1", dst="10.0.0.2", sport=1)
    with pytest.raises(ValueError, match="icmpv6"):
        Flow(proto="icmp", src="::1", dst="::2")


def test_type_errors_for_wrong_types():
    with pytest.raises(TypeError):
        Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1.5, dport=2)
    with pytest.raises(TypeError):
        Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=True, dport=2)


def test_flows_are_immutable_and_hashable():
    a = Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=9)
    b = Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=9)
    c = Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=8)
    assert a == b and hash(a) == hash(b)
    assert a != c and a.key == c.key
    assert len({a, b, c}) == 2
    with pytest.raises(AttributeError):
        a.mark = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        a.extra = 1  # type: ignore[attr-defined]


def test_str_matches_conntrack_list_format():
    f = Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=5353, dport=53, timeout=29, mark=5)
    assert str(f) == (
        "udp      17 29 src=10.0.0.1 dst=10.0.0.2 sport=5353 dport=53 [UNREPLIED] "
        "src=10.0.0.2 dst=10.0.0.1 sport=53 dport=5353 mark=5"
    )


def test_to_dict_is_json_ready():
    f = Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, state="SYN_SENT",
             labels={1, 70}, helper="ftp", timeout=3)
    d = json.loads(json.dumps(f.to_dict()))
    assert d["proto"] == "tcp" and d["state"] == "SYN_SENT"
    assert d["orig"] == {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1, "dport": 2}
    assert d["labels"] == [1, 70] and d["helper"] == "ftp"


def test_unknown_protocol_numbers_get_pseudo_members():
    p = Proto(50)
    assert int(p) == 50 and p.name == "proto_50"
    assert conntrack.enums.parse_proto("UDP") is Proto.udp
