"""ct.top() and ``pyconntrack top``: counted in C, checked against dump() and conntrack(8)."""

from __future__ import annotations

import collections
import ipaddress
import json
import re
import subprocess
import sys
from typing import Any, Callable, Dict, List

import pytest

import conntrack
from conntrack import Filter, Flow, Proto, TCPState


def _flows() -> List[Flow]:
    flows = []
    # skewed sources: 10.0.0.1 opens most, then 10.0.1.x, then a long tail
    for i in range(300):
        flows.append(Flow(proto="udp", src="10.0.0.1", dst="10.9.0.%d" % (i % 7 + 1), sport=1000 + i, dport=53,
                          timeout=600, mark=i % 3))
    for i in range(200):
        flows.append(Flow(proto="tcp", src="10.0.1.%d" % (i % 5 + 1), dst="10.9.1.1", sport=2000 + i,
                          dport=443 if i % 4 else 80, timeout=600, state="ESTABLISHED" if i % 2 else "SYN_SENT",
                          status="SEEN_REPLY" if i % 2 else 0, zone=i % 2))
    for i in range(50):
        flows.append(Flow(proto="udp", src="2001:db8:0:%x::%x" % (i % 3, i + 1), dst="2001:db8:ff::1",
                          sport=3000 + i, dport=123, timeout=600))
    for i in range(20):
        flows.append(Flow(proto="icmp", src="10.0.2.%d" % (i + 1), dst="10.9.0.1", icmp_type=8, icmp_code=0,
                          icmp_id=i, timeout=600))
    return flows


@pytest.fixture(scope="module")
def table(shared_netns: Any) -> Any:
    with conntrack.Conntrack(shared_netns.name) as ct:
        assert ct.create_many(_flows()) == 570
        ct.ns = shared_netns  # type: ignore[attr-defined]
        yield ct


def _expected(ct: conntrack.Conntrack, key: Callable[[Flow], Any], flt: Any = None) -> List[Any]:
    counts = collections.Counter(key(f) for f in ct.dump(flt))
    return sorted(counts.items(), key=lambda kv: -kv[1])


def _net(addr: Any, v4: int, v6: int) -> Any:
    a = ipaddress.ip_address(addr)
    plen = v4 if a.version == 4 else v6
    full = 32 if a.version == 4 else 128
    return a if plen == full else ipaddress.ip_network((a, plen), strict=False)


KEYS: Dict[Any, Callable[[Flow], Any]] = {
    "src": lambda f: f.orig.src,
    "dst": lambda f: f.orig.dst,
    "sport": lambda f: f.orig.sport,
    "dport": lambda f: f.orig.dport,
    "proto": lambda f: f.proto,
    "state": lambda f: f.state,
    "zone": lambda f: f.zone,
    "mark": lambda f: f.mark or 0,
    "family": lambda f: f.family,
    "src/24": lambda f: _net(f.orig.src, 24, 128),
    "src/48": lambda f: _net(f.orig.src, 32, 48),
    "dst/16/64": lambda f: _net(f.orig.dst, 16, 64),
    ("src", "dport"): lambda f: (f.orig.src, f.orig.dport),
    ("proto", "state", "zone"): lambda f: (f.proto, f.state, f.zone),
}


@pytest.mark.parametrize("by", list(KEYS), ids=str)
def test_top_matches_a_count_from_dump(table: conntrack.Conntrack, by: Any) -> None:
    got = table.top(by, n=None)
    want = _expected(table, KEYS[by])
    assert got.total == 570
    assert got.distinct == len(want)
    assert sorted(got, key=repr) == sorted(want, key=repr)  # the same (key, count) pairs
    counts = [n for _, n in got]
    assert counts == sorted(counts, reverse=True)  # most frequent first


def test_top_types_and_limit(table: conntrack.Conntrack) -> None:
    t = table.top("src", n=3)
    assert len(t) == 3 and t.by == ("src",)
    assert t[0] == (ipaddress.IPv4Address("10.0.0.1"), 300)
    assert all(isinstance(k, (ipaddress.IPv4Address, ipaddress.IPv6Address)) for k, _ in t)
    assert table.top("proto", n=1)[0] == (Proto.udp, 350)
    state = dict(table.top("state", n=None))
    assert state[TCPState.ESTABLISHED] == 100 and state[None] == 370
    assert dict(table.top("dport", n=None))[None] == 20  # ICMP has no ports


def test_top_with_filter(table: conntrack.Conntrack) -> None:
    flt = Filter(unreplied=True, proto="tcp")
    got = table.top(("src", "dport"), n=None, filter=flt)
    assert sorted(got, key=repr) == sorted(_expected(table, KEYS[("src", "dport")], flt), key=repr)
    assert got.total == 100


@pytest.mark.parametrize("bad", ["", "bogus", "src/33/129", ("src",) * 5, (), "src/200"])
def test_top_bad_key(table: conntrack.Conntrack, bad: Any) -> None:
    with pytest.raises(ValueError, match="by"):
        table.top(bad)


def test_top_bad_n(table: conntrack.Conntrack) -> None:
    for n in (0, -1, True):
        with pytest.raises(ValueError, match="n:"):
            table.top("src", n=n)


def test_top_against_conntrack_tool(table: conntrack.Conntrack) -> None:
    """The count conntrack -L | awk | sort | uniq -c gives, per source."""
    counts: collections.Counter = collections.Counter()
    for line in table.ns.cli_lines("-L"):  # type: ignore[attr-defined]
        m = re.search(r"\bsrc=(\S+)", line)
        assert m, line
        counts[ipaddress.ip_address(m.group(1))] += 1
    got = table.top("src", n=None)
    assert dict(got) == dict(counts)
    assert got[0] == counts.most_common(1)[0]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conntrack", *args], capture_output=True, text=True)


def test_cli_top(table: conntrack.Conntrack) -> None:
    ns = table.ns.name  # type: ignore[attr-defined]
    r = _cli("top", "--netns", ns, "--by", "src", "--limit", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["300", "10.0.0.1"]
    assert lines[-1] == "570 entries matched, 76 distinct src"
    assert len(lines) == 3
    r = _cli("top", "--netns", ns, "--by", "src,dport", "--unreplied", "-p", "tcp", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["total"] == 100 and d["by"] == ["src", "dport"]
    assert sum(row["count"] for row in d["top"]) == 100
    assert all(row["key"][0].startswith("10.0.1.") and row["key"][1] in (80, 443) for row in d["top"])
    r = _cli("top", "--netns", ns, "--by", "state")
    assert "ESTABLISHED" in r.stdout and r.returncode == 0
    r = _cli("top", "--netns", ns, "--by", "nope")
    assert r.returncode == 2 and "--by: unknown field 'nope'" in r.stderr
