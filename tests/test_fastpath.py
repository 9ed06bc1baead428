"""The read path users loop over: tuples and states decoded per batch, shared
address objects, and Conntrack.dump_tuples.  Checked on live tables against
the per-record decoding, the object API and conntrack(8)."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, List, Set, Tuple

import pytest

import conntrack
from conntrack import Filter, Flow
from conntrack import flow as flowmod
from conntrack.flow import ROW_FIELDS

# Entries the column decoding cannot describe, spread among the IPv4 ones.
ODD = [
    dict(proto="icmp", src="10.9.0.1", dst="10.9.0.2", icmp_type=8, icmp_id=7),
    dict(proto="icmpv6", src="2001:db8::1", dst="2001:db8::2", icmp_type=128, icmp_id=9),
    dict(proto="udp", src="2001:db8::3", dst="2001:db8::4", sport=1000, dport=53),
    dict(proto="tcp", src="2001:db8::5", dst="2001:db8::6", sport=40000, dport=443, state="SYN_SENT"),
    dict(proto="sctp", src="10.9.0.3", dst="10.9.0.4", sport=3868, dport=3868, state="ESTABLISHED"),
    dict(proto="gre", src="10.9.0.5", dst="10.9.0.6"),
]
TCP_STATES = ["SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "TIME_WAIT"]
N_V4 = 5000  # a few dump batches
# Every entry ASSURED: the kernel's garbage collector evicts non-assured entries early
# when the host's global nf_conntrack_max is near (another test on the host may lower
# it for a moment), and these tests compare two dumps of the same table.


def _v4(k: int) -> Flow:
    src = "10.%d.0.%d" % (k % 7, k % 50)  # 350 distinct: repeated, so shared
    dst = "10.200.%d.%d" % (k // 250 % 250, 1 + k % 250)
    if k % 3:
        return Flow(proto="tcp", src=src, dst=dst, sport=1024 + k, dport=(22, 80, 443)[k % 3], timeout=600,
                    mark=k % 5, state=TCP_STATES[k % len(TCP_STATES)],
                    status="SEEN_REPLY|ASSURED" if k % 2 else "ASSURED", zone=k % 4 if k % 11 == 0 else None)
    return Flow(proto="udp", src=src, dst=dst, sport=1024 + k, dport=53, timeout=600, mark=k % 5,
                status="ASSURED")


@pytest.fixture(scope="module")
def table(shared_netns: Any) -> Any:
    with conntrack.Conntrack(shared_netns.name) as ct:
        flows = [_v4(k) for k in range(N_V4)]
        for i, spec in enumerate(ODD):
            flows.insert(700 * i + 3, Flow(timeout=600, mark=1, status="ASSURED", **spec))  # type: ignore[arg-type]
        assert ct.create_many(flows) == len(flows)
        yield ct, shared_netns


def _slow(f: Flow, which: str) -> Any:
    """The per-record decoding (what Flow.orig did before the batch columns)."""
    return flowmod._tuple_from(f._b.tuple(f._i, which))


def _slow_state(f: Flow) -> Any:
    if not f._has("state"):
        return None
    cls = flowmod.STATE_ENUMS.get(f.proto)
    if cls is None:
        return None
    try:
        return cls(f._b.scalar(f._i, "state"))
    except ValueError:
        return None


def test_batch_decoding_equals_the_per_record_decoding(table):
    ct, _ns = table
    seen = 0
    for f in ct.dump():
        assert f.orig == _slow(f, "orig") and type(f.orig) is flowmod.FlowTuple
        assert f.reply == _slow(f, "reply")
        assert f.state == _slow_state(f) and type(f.state) is type(_slow_state(f))
        assert f.orig.src.packed == ipaddress.ip_address(str(f.orig.src)).packed
        seen += 1
    assert seen == N_V4 + len(ODD)


def test_address_objects_are_shared_and_the_cache_is_bounded(table, monkeypatch):
    ct, _ns = table
    flows = list(ct.dump(Filter(proto="udp", family="ipv4")))
    by_src = {}
    for f in flows:
        by_src.setdefault(f.orig.src, []).append(f)
    pairs = [fs for fs in by_src.values() if len(fs) > 1]
    assert pairs, "the table repeats source addresses"
    for fs in pairs:
        assert all(f.orig.src is fs[0].orig.src for f in fs)
        assert all(type(f.orig.src) is ipaddress.IPv4Address for f in fs)

    monkeypatch.setattr(flowmod, "ADDRESS_CACHE_SIZE", 3000)
    flowmod._A4.clear()
    rows = []
    for f in ct.dump():
        rows.append((str(f.orig.src), str(f.orig.dst), str(f.reply.src)))
        assert len(flowmod._A4) <= 3000
    theirs = [(str(_slow(f, "orig").src), str(_slow(f, "orig").dst), str(_slow(f, "reply").src)) for f in ct.dump()]
    assert sorted(rows) == sorted(theirs)


def _object_row(f: Flow, fields: Tuple[str, ...], ints: bool = False) -> Tuple[Any, ...]:
    out: List[Any] = []
    for name in fields:
        value = {
            "family": f.family, "proto": f.proto, "src": f.orig.src, "dst": f.orig.dst,
            "sport": f.orig.sport, "dport": f.orig.dport, "reply_src": f.reply.src, "reply_dst": f.reply.dst,
            "reply_sport": f.reply.sport, "reply_dport": f.reply.dport, "state": f.state, "status": f.status,
            "mark": f.mark, "timeout": f.timeout, "zone": f.zone, "id": f.id,
        }[name]
        out.append(int(value) if ints and name in ("src", "dst", "reply_src", "reply_dst") else value)
    return tuple(out)


@pytest.mark.parametrize("ints", [False, True], ids=["address-objects", "address-ints"])
@pytest.mark.parametrize("fields", [
    ("src", "dst", "sport", "dport", "state"),
    tuple(name for name in ROW_FIELDS if name != "timeout"),  # the timeout ticks between two dumps
    ("id", "reply_dport"),
    ("state",),
])
def test_dump_tuples_equals_the_object_api(table, fields, ints):
    ct, _ns = table
    key = fields.index("id") if "id" in fields else None
    rows = list(ct.dump_tuples(fields=fields, addresses="int" if ints else "object"))
    objs = [_object_row(f, fields, ints) for f in ct.dump()]
    assert len(rows) == N_V4 + len(ODD)
    assert all(type(r) is tuple and len(r) == len(fields) for r in rows)
    if key is not None:
        rows.sort(key=lambda r: r[key])
        objs.sort(key=lambda r: r[key])
        assert rows == objs
    else:
        assert sorted(map(repr, rows)) == sorted(map(repr, objs))


def test_dump_tuples_with_a_filter(table):
    ct, _ns = table
    for flt in (Filter(proto="tcp", dport=443), Filter(src="10.3.0.0/16", state="ESTABLISHED"), Filter(dst="10.200.1.0/24"),
                Filter(family="ipv6"), Filter(mark=1)):
        rows = sorted(ct.dump_tuples(flt, fields=("id", "src", "state", "mark")), key=lambda r: r[0])
        objs = sorted(((f.id, f.orig.src, f.state, f.mark) for f in ct.dump(flt)), key=lambda r: r[0])
        assert rows == objs and rows, flt


_CLI = re.compile(r"^(tcp|udp)\s+\d+\s+\d+\s+(?:([A-Z_]+)\s+)?src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def test_dump_tuples_equals_conntrack_list(table):
    ct, ns = table
    theirs: Set[Tuple[Any, ...]] = set()
    for line in ns.cli_lines("-L"):
        m = _CLI.match(line)
        if m:
            theirs.add((m.group(1), m.group(3), m.group(4), int(m.group(5)), int(m.group(6)), m.group(2)))
    ours = {(p.name, str(s), str(d), sp, dp, st.name if st is not None else None)
            for p, s, d, sp, dp, st in ct.dump_tuples(fields=("proto", "src", "dst", "sport", "dport", "state"))
            if p.name in ("tcp", "udp")}
    assert len(theirs) == N_V4 + 2  # the IPv4 entries and the two IPv6 tcp/udp ones
    assert ours == theirs


@pytest.mark.parametrize("bad", [dict(fields=()), dict(fields="src"), dict(fields=("src", "nope")),
                                 dict(addresses="str")])
def test_dump_tuples_refuses_bad_arguments(ns_ct, bad):
    with pytest.raises(ValueError):
        next(ns_ct.dump_tuples(**bad))
    assert ns_ct.count() == 0 and not ns_ct.closed


def test_import_leaves_health_and_sysctl_for_later():
    code = ("import sys, conntrack; a = 'conntrack.sysctl' in sys.modules or 'conntrack.health' in sys.modules; "
            "print(a, conntrack.sysctl.__name__, conntrack.health.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "conntrack.sysctl", "conntrack.health"]
    with pytest.raises(AttributeError):
        conntrack.no_such_name  # noqa: B018


def test_read_tuples_example(table, capsys):
    """docs/examples/read_tuples.py (shown in docs/flows.rst), as imported and as a script."""
    ct, ns = table
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("docs_example_read_tuples", root / "docs/examples/read_tuples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    talkers = module.top_talkers(ct)
    assert sum(talkers.values()) == N_V4 + len(ODD)
    assert talkers == Counter((f.orig.src, f.orig.dport) for f in ct.dump())
    rows = module.established_rows(ct)
    want = sorted((int(f.orig.src), int(f.orig.dst), f.orig.sport, f.orig.dport)
                  for f in ct.dump(Filter(proto="tcp", state="ESTABLISHED")))
    assert sorted(rows) == want and rows
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "%d established TCP flows" % len(want)
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, str(root / "docs/examples/read_tuples.py")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == out[-1]
