"""The benchmark's correctness at small scale (bench/ctbench.py): no timing here.

The table builder makes exactly the intended mix, our counts agree with
conntrack(8), and each bulk delete the benchmark times removes exactly the
selection the reference tool would (survivors checked with `conntrack -L`).
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import ctbench  # noqa: E402

import conntrack  # noqa: E402
from conntrack import Filter, Status, TCPState  # noqa: E402

N = 4096  # the CIDR+port selection hits 1/32 of the table when N is a multiple of 1024

pytestmark = pytest.mark.tool


@pytest.fixture
def table(netns):
    """A benchmark table of N entries in a fresh namespace."""
    with conntrack.Conntrack(netns.name) as ct:
        assert ctbench.build(ct, N) == N
        ct.ns = netns  # type: ignore[attr-defined]
        yield ct


def test_entries_are_unique_and_spread():
    keys = [ctbench.key(k) for k in range(1 << 16)]
    assert len(set(keys)) == len(keys)
    srcs = {k[1] for k in keys}
    assert len({s.split(".")[1] for s in srcs}) == 256  # second octet covers 10.0.0.0/8
    assert all(s.startswith("10.") for s in srcs)


def test_builder_makes_the_intended_mix(table):
    flows = list(table.dump())
    assert len(flows) == N
    by_proto = Counter(f.proto.name for f in flows)
    assert by_proto == {"udp": N // 2, "tcp": N // 2}
    for f in flows:
        assert f.timeout is not None and 3000 < f.timeout <= ctbench.TIMEOUT
        assert f.mark is not None and 0 <= f.mark < 16
        if f.proto.name == "udp":
            assert f.unreplied and not f.assured and f.state is None
        else:
            assert f.status & (Status.SEEN_REPLY | Status.ASSURED) == Status.SEEN_REPLY | Status.ASSURED
            assert f.state == TCPState.ESTABLISHED
    assert Counter(f.mark for f in flows) == {m: N // 16 for m in range(16)}
    want = {ctbench.key(k) for k in range(N)}
    got = {(f.proto.name, str(f.orig.src), str(f.orig.dst), f.orig.sport, f.orig.dport) for f in flows}
    assert got == want
    assert ctbench.parse_cli_keys(table.ns.cli("-L").stdout) == want


def test_unreplied_count_matches_the_cli(table):
    lines = table.ns.cli_lines("-L")
    cli = sum(1 for line in lines if "[UNREPLIED]" in line)
    ours = table.count(Filter(unreplied=True))
    assert ours == cli == ctbench.expected_count(N, ctbench.is_unreplied) == N // 2
    assert table.count() == N


def test_cidr_selection_same_as_the_cli(table):
    shown = ctbench.parse_cli_keys(table.ns.cli("-L", *ctbench.CIDR_CLI).stdout)
    want = {ctbench.key(k) for k in range(N) if ctbench.in_cidr_selection(k)}
    assert len(want) == N // 32
    assert shown == want
    assert table.count(Filter(**ctbench.CIDR_FILTER_KW)) == len(want)


def test_cidr_port_delete_leaves_exactly_the_non_matching(table):
    expected = ctbench.expected_count(N, ctbench.in_cidr_selection)
    res = table.delete(Filter(**ctbench.CIDR_FILTER_KW))
    assert res.deleted == expected and res.vanished == 0
    survivors = ctbench.parse_cli_keys(table.ns.cli("-L").stdout)
    assert survivors == {ctbench.key(k) for k in range(N) if not ctbench.in_cidr_selection(k)}
    # and the benchmark's refill restores the table exactly
    assert ctbench.build(table, N, ctbench.in_cidr_selection) == expected
    assert ctbench.parse_cli_keys(table.ns.cli("-L").stdout) == {ctbench.key(k) for k in range(N)}


def test_cli_cidr_port_delete_removes_the_same_set(table):
    out = table.ns.cli("-D", *ctbench.CIDR_CLI)
    assert ctbench.cli_reported(out.stderr) == ctbench.expected_count(N, ctbench.in_cidr_selection)
    survivors = {(f.proto.name, str(f.orig.src), str(f.orig.dst), f.orig.sport, f.orig.dport)
                 for f in table.dump()}
    assert survivors == {ctbench.key(k) for k in range(N) if not ctbench.in_cidr_selection(k)}


def test_unreplied_delete_same_as_cli_udp_delete(table):
    before = table.count()
    res = table.delete(Filter(unreplied=True))
    assert before - table.count() == N // 2
    assert res.deleted == N // 2
    survivors = table.ns.cli_lines("-L")
    assert len(survivors) == N // 2
    assert not any("[UNREPLIED]" in line for line in survivors)
    assert ctbench.parse_cli_keys("\n".join(survivors)) == {ctbench.key(k) for k in range(N) if k & 1}
    # the reference deletes the same set on a rebuilt table
    assert ctbench.build(table, N, ctbench.is_unreplied) == N // 2
    out = table.ns.cli("-D", "-p", "udp")
    assert ctbench.cli_reported(out.stderr) == N // 2
    assert table.count() == N // 2 and table.count(Filter(unreplied=True)) == 0
