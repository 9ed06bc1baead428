"""The one JSON convention: every public result's ``to_dict()``, and the CLI's ``--json`` built from them.

The first half needs no kernel (results built by hand or from a Flow); the
second runs the command line against a throwaway namespace and pins the keys
of each command's JSON, in order, to what they were before ``to_dict()``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

from helpers import Netns

import conntrack
from conntrack import (
    DeleteResult,
    Event,
    EventType,
    Flow,
    Proto,
    Summary,
    TCPState,
    Top,
    health,
    sysctl,
)
from conntrack.health import Sample

ROOT = Path(__file__).resolve().parent.parent

FLOW_KEYS = ["family", "proto", "orig", "reply", "status", "state", "timeout", "mark", "zone", "orig_zone",
             "reply_zone", "id", "use", "counters", "start", "stop", "labels", "secctx", "helper", "master"]
SUMMARY_KEYS = ["total", "unreplied", "assured", "by_proto", "tcp_states"]
DELETE_KEYS = ["deleted", "vanished", "method", "exact", "dry_run", "interrupted"]
LIMITS_KEYS = ["max", "count", "fill", "free", "buckets", "hashsize", "expect_max", "memory_full_bytes", "timeouts",
               "acct", "timestamp", "events", "checksum", "tcp_loose", "tcp_be_liberal"]
RECOMMEND_KEYS = ["max", "buckets", "memory_bytes", "mem_total", "explanation"]
HEALTH_KEYS = ["verdict", "reasons", "count", "max", "fill", "interval", "deltas", "rates", "table_full", "source",
               "top_sources"]
TOP_KEYS = ["by", "total", "distinct", "top"]


def roundtrip(d: Any) -> Any:
    """*d* through strict JSON and back; equal to *d* only when every value was plain."""
    assert isinstance(d, dict)
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back == d
    return back


def _flows() -> List[Flow]:
    return [
        Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=443, timeout=60, state="ESTABLISHED",
             status="SEEN_REPLY|ASSURED", mark=7, labels=[0, 127]),
        Flow(proto="udp", src="fd00::1", dst="fd00::2", sport=5353, dport=53, reply_zone=3),
        Flow(proto="icmp", src="192.0.2.1", dst="192.0.2.2", icmp_id=9, helper="ftp"),
        Flow(proto=47, src="198.51.100.1", dst="198.51.100.2"),
    ]


# -- no kernel ----------------------------------------------------------------------------------


def test_flow_to_dict_round_trips_with_the_documented_values():
    tcp = roundtrip(_flows()[0].to_dict())
    assert list(tcp) == FLOW_KEYS
    assert tcp["family"] == "ipv4" and tcp["proto"] == "tcp" and tcp["state"] == "ESTABLISHED"
    assert tcp["orig"] == {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1, "dport": 443}
    assert tcp["status"] == ["SEEN_REPLY", "ASSURED"] and tcp["labels"] == [0, 127]
    for f in _flows()[1:]:
        d = roundtrip(f.to_dict())
        assert list(d) == FLOW_KEYS
    assert _flows()[3].to_dict()["proto"] == "gre" and _flows()[3].to_dict()["orig"] == {
        "src": "198.51.100.1", "dst": "198.51.100.2"}
    assert roundtrip(_flows()[2].orig.to_dict()) == {"src": "192.0.2.1", "dst": "192.0.2.2", "icmp_type": 8,
                                                      "icmp_code": 0, "icmp_id": 9}


def test_summary_and_delete_result_to_dict_round_trip():
    s = Summary(total=5, unreplied=2, assured=1, by_proto={Proto.UDP: 2, Proto.TCP: 3},
                tcp_states={TCPState.SYN_SENT: 1, TCPState.ESTABLISHED: 2})
    d = roundtrip(s.to_dict())
    assert list(d) == SUMMARY_KEYS
    assert list(d["by_proto"].items()) == [("tcp", 3), ("udp", 2)]  # most frequent first
    assert list(d["tcp_states"]) == ["ESTABLISHED", "SYN_SENT"]
    done = roundtrip(DeleteResult(deleted=3, method="flush", exact=False).to_dict())
    assert list(done) == DELETE_KEYS and done["method"] == "flush" and done["exact"] is False
    dry = roundtrip(DeleteResult(dry_run=True, matched=_flows()).to_dict())
    assert list(dry) == DELETE_KEYS + ["matched"] and [m["proto"] for m in dry["matched"]] == ["tcp", "udp", "icmp",
                                                                                             "gre"]


def test_top_event_health_and_recommendation_to_dict_round_trip():
    t = Top([((ipaddress.ip_network("10.0.0.0/24"), Proto.TCP, TCPState.ESTABLISHED, None), 4),
             ((ipaddress.ip_address("fd00::1"), Proto.UDP, None, 53), 1)])
    t.by, t.total, t.distinct = ("src/24", "proto", "state", "dport"), 5, 2
    d = roundtrip(t.to_dict())
    assert list(d) == TOP_KEYS
    assert d["top"] == [{"key": ["10.0.0.0/24", "tcp", "ESTABLISHED", None], "count": 4},
                        {"key": ["fd00::1", "udp", None, 53], "count": 1}]

    new = roundtrip(Event(EventType.NEW, _flows()[0]).to_dict())
    assert list(new) == ["type"] + FLOW_KEYS and new["type"] == "NEW"
    assert roundtrip(Event(EventType.OVERFLOW, None, 12).to_dict()) == {"type": "OVERFLOW", "lost": 12}

    base = {"drop": 0, "early_drop": 0, "insert_failed": 0, "found": 3}
    before = Sample(time.monotonic(), time.time(), 10, 1000, base, "netlink", 1, True)
    after = Sample(before.monotonic + 2.0, before.wall + 2.0, 960, 1000, dict(base, drop=4), "procfs", 1, True)
    h = health.judge(after, before)
    d = roundtrip(h.to_dict())
    assert list(d) == HEALTH_KEYS and d["verdict"] == "critical" and d["source"] == "procfs"
    assert d["deltas"] == {"drop": 4, "early_drop": 0, "insert_failed": 0}
    with_top = roundtrip(dataclasses.replace(h, top_sources=((ipaddress.ip_address("10.0.0.9"), 900),))
                         .to_dict())
    assert with_top["top_sources"] == [["10.0.0.9", 900]]
    first = roundtrip(health.judge(before).to_dict())
    assert first["verdict"] == "ok" and first["deltas"] is None and first["rates"] is None

    rec = roundtrip(sysctl.Recommendation(value=262144, buckets=262144, memory_bytes=262144 * 320,
                                          mem_total=8 << 30, explanation="one\ntwo").to_dict())
    assert list(rec) == RECOMMEND_KEYS and rec["max"] == 262144 and rec["explanation"] == ["one", "two"]


# -- the command line against a real table ------------------------------------------------------


def pyct(netns: Netns, *args: str) -> Any:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "conntrack", *args, "--netns", netns.name],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode in (0, 1, 2) and proc.stderr == "", proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_cli_json_keys_are_the_to_dict_keys(netns):
    with conntrack.Conntrack(netns.name) as ct:
        assert ct.create_many([Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=443, timeout=600,
                                    state="ESTABLISHED", status="SEEN_REPLY|ASSURED"),
                               Flow(proto="udp", src="fd00::1", dst="fd00::2", sport=5353, dport=53, timeout=600)]) == 2
        summary, top = ct.summary(), ct.top("src")
    listed = pyct(netns, "list", "--json")
    assert len(listed) == 2 and all(list(d) == FLOW_KEYS for d in listed)
    assert sorted(d["proto"] for d in listed) == ["tcp", "udp"]
    [s] = pyct(netns, "summary", "--json")
    assert s == summary.to_dict() and list(s) == SUMMARY_KEYS and s["by_proto"] == {"tcp": 1, "udp": 1}
    [t] = pyct(netns, "top", "--json")
    assert t == top.to_dict() and list(t) == TOP_KEYS and {e["key"] for e in t["top"]} == {"10.0.0.1", "fd00::1"}
    [dry] = pyct(netns, "delete", "--proto", "udp", "--dry-run", "--json")
    assert list(dry) == DELETE_KEYS + ["matched"] and [m["proto"] for m in dry["matched"]] == ["udp"]
    [lim] = pyct(netns, "limits", "--json")
    assert list(lim) == LIMITS_KEYS and lim["count"] == 2
    assert lim == sysctl.read(netns=netns.name).to_dict() | {"count": 2, "fill": lim["fill"], "free": lim["free"]}
    [rec] = pyct(netns, "limits", "--recommend", "--json")
    assert list(rec) == RECOMMEND_KEYS
    [h] = pyct(netns, "health", "--interval", "0", "--json")
    assert list(h) == HEALTH_KEYS and h["verdict"] == "ok" and h["count"] == 2


def test_settings_and_usage_to_dict_round_trip(netns):
    s = sysctl.read(netns=netns.name)
    d = roundtrip(s.to_dict())
    assert list(d) == LIMITS_KEYS and d["timeouts"] == dict(s.timeouts) and d["free"] == s.max - s.count
    u = roundtrip(sysctl.usage(netns=netns.name).to_dict())
    assert u == {"count": 0, "max": s.max, "fill": 0.0, "free": s.max}
