"""Enums: members spelled in upper case (Family/Proto/Verdict keep lower-case members), and they
print as names on every Python (3.11 made IntEnum's str() and format() the number)."""

from __future__ import annotations

import pytest

import conntrack
from conntrack import DCCPState, Family, Flow, Proto, SCTPState, Status, TCPState
from conntrack.events import EventType
from conntrack.health import Verdict


def test_str_and_format_give_the_name():
    for member in [*TCPState, *SCTPState, *DCCPState, *Family, *Proto]:
        assert str(member) == member.name
        assert f"{member}" == member.name
        assert "%s" % member == member.name
        assert format(member, ">20") == member.name.rjust(20)
    assert str(Proto(99)) == "proto_99"


def test_numeric_formats_still_give_the_number():
    assert f"{TCPState.ESTABLISHED:d}" == "3" == "%d" % TCPState.ESTABLISHED
    assert f"{Proto.udp:x}" == "11"
    assert int(Proto.tcp) == 6 and Proto.tcp == 6
    assert repr(TCPState.ESTABLISHED) == "<TCPState.ESTABLISHED: 3>"


def test_flags_print_as_bit_names():
    assert str(Status.SEEN_REPLY | Status.ASSURED) == "SEEN_REPLY|ASSURED"
    assert f"{Status.ASSURED}" == "ASSURED"
    assert str(Status(0)) == "0"
    assert str(Status(1 << 30)) == "0x40000000"  # a bit this build has no name for
    assert str(EventType.NEW | EventType.DESTROY) == "NEW|DESTROY"
    assert f"{Status.ASSURED:d}" == str(int(Status.ASSURED))


def test_a_flows_fields_print_as_names():
    f = Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, state="ESTABLISHED",
             status="SEEN_REPLY", timeout=60)
    assert str(f.state) == "ESTABLISHED" and f"{f.proto} {f.family}" == "tcp ipv4"
    assert str(f.status) == "SEEN_REPLY"


def test_enums_spell_upper_case_and_print_conntrack8_words():
    assert Proto.TCP is Proto.tcp and Family.IPV6 is Family.ipv6 and Verdict.CRITICAL is Verdict.critical
    assert (str(Proto.TCP), str(Family.IPV4), str(Verdict.OK)) == ("tcp", "ipv4", "ok")
    assert Proto.TCP.name == "tcp" and TCPState.ESTABLISHED.name == str(TCPState.ESTABLISHED) == "ESTABLISHED"
    assert str(Status.ASSURED | Status.SEEN_REPLY) == "SEEN_REPLY|ASSURED"
    assert list(Proto)[:3] == [Proto.ICMP, Proto.TCP, Proto.UDP]  # aliases are not extra members
    assert len(Family) == 2 and len(Verdict) == 3
    assert conntrack.Filter(proto="TCP", family="IPV4") == conntrack.Filter(proto=Proto.TCP, family=Family.IPV4)
    with pytest.raises(ValueError, match=r"expected one of: ipv4, ipv6\)"):  # each name once, not also IPV4
        conntrack.Filter(family="ipv5")
