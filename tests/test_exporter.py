"""conntrack.exporter: scraped over HTTP on 127.0.0.1, from real namespaces."""

from __future__ import annotations

import inspect
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Dict, Iterator, List, Tuple

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import conntrack
from conntrack import _binding
from conntrack.errors import MissingDependency
from conntrack.exporter import NODE_STATS, ConntrackCollector

Series = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(port: int) -> Tuple[Series, Dict[str, str]]:
    """Every sample as {(name, sorted labels): value}, and each family's type."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=30) as r:
        text = r.read().decode()
    series: Series = {}
    types: Dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            series[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return series, types


def serve(collector: ConntrackCollector) -> Iterator[int]:
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def populate(ct: conntrack.Conntrack) -> None:
    flows = [conntrack.Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=3000 + i, dport=53, timeout=600)
             for i in range(30)]
    flows += [conntrack.Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.3", sport=4000 + i, dport=443, timeout=600,
                             state="ESTABLISHED", status="SEEN_REPLY|ASSURED") for i in range(20)]
    flows += [conntrack.Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.3", sport=5000 + i, dport=443, timeout=600,
                             state="SYN_SENT") for i in range(5)]
    assert ct.create_many(flows) == 55


@pytest.fixture
def port(ns_ct: conntrack.Conntrack) -> Iterator[int]:
    yield from serve(ConntrackCollector([ns_ct.ns.name]))


def wait_for(port: int, name: str, labels: Tuple[Tuple[str, str], ...], want: float, timeout: float = 60) -> Series:
    """Scrape until a series has the value wanted (the breakdown thread refreshes on its own)."""
    deadline = time.monotonic() + timeout
    while True:
        series, _ = scrape(port)
        if series.get((name, labels)) == want:
            return series
        assert time.monotonic() < deadline, "%s%r never became %r: %r" % (name, labels, want, series.get((name, labels)))
        time.sleep(0.05)


def test_a_scrape_reports_the_namespace(ns_ct):
    populate(ns_ct)
    ns = (("netns", ns_ct.ns.name),)
    collector = ConntrackCollector([ns_ct.ns.name], breakdown=True, breakdown_interval=0.2, top=2)
    try:
        for port in serve(collector):
            series = wait_for(port, "conntrack_nf_conntrack_unreplied_entries", ns, 35)
            _, types = scrape(port)
    finally:
        collector.close()

    def value(name: str, *labels: Tuple[str, str]) -> float:
        return series[(name, tuple(sorted(ns + labels)))]

    assert value("conntrack_up") == 1
    assert value("conntrack_nf_conntrack_entries") == 55 == ns_ct.count()
    assert value("conntrack_nf_conntrack_entries_limit") == ns_ct.limit()
    assert value("conntrack_nf_conntrack_fill_ratio") == pytest.approx(55 / ns_ct.limit())
    assert ns_ct.count(conntrack.Filter(unreplied=True)) == 35
    assert value("conntrack_nf_conntrack_entries_by_protocol", ("protocol", "udp")) == 30
    assert value("conntrack_nf_conntrack_entries_by_protocol", ("protocol", "tcp")) == 25
    assert value("conntrack_nf_conntrack_tcp_entries_by_state", ("state", "ESTABLISHED")) == 20
    assert value("conntrack_nf_conntrack_tcp_entries_by_state", ("state", "SYN_SENT")) == 5
    assert value("conntrack_nf_conntrack_tcp_entries_by_state", ("state", "TIME_WAIT")) == 0
    assert value("conntrack_nf_conntrack_top_source_entries", ("src", "10.0.0.1")) == 55
    assert value("conntrack_breakdown_age_seconds") >= 0
    stats = {k: sum(row[k] for row in ns_ct.stats()) for k in ("drop", "early_drop", "insert_failed")}
    for k, v in stats.items():
        assert value("conntrack_nf_conntrack_stat_%s_total" % k) == v
        assert types["conntrack_nf_conntrack_stat_%s" % k] == "counter"
    assert types["conntrack_nf_conntrack_entries"] == "gauge"


@pytest.fixture
def dumps(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """The name of the thread of every dump started (Socket._start_dump is the one place that
    sends a dump request: every dump, count, summary and top goes through it)."""
    started: List[str] = []
    real = _binding.Socket._start_dump

    def counting(self: _binding.Socket, *request: object) -> _binding.Socket:
        started.append(threading.current_thread().name)
        return real(self, *request)

    monkeypatch.setattr(_binding.Socket, "_start_dump", counting)
    return started


def test_dump_requests_are_sent_in_one_place():
    """What makes the `dumps` fixture a proof: the binding sends a dump request nowhere else."""
    src = inspect.getsource(_binding)
    assert src.count("lib.ctpy_dump_start(") == 1
    assert "lib.ctpy_dump_start(" in inspect.getsource(_binding.Socket._start_dump)


def test_a_default_scrape_dumps_nothing(ns_ct, dumps):
    populate(ns_ct)
    ns_ct.summary()
    assert dumps == ["MainThread"]  # the fixture sees dumps
    dumps.clear()
    collector = ConntrackCollector([ns_ct.ns.name])
    for port in serve(collector):
        for _ in range(3):
            series, types = scrape(port)
    assert dumps == []
    assert series[("conntrack_nf_conntrack_entries", (("netns", ns_ct.ns.name),))] == 55
    assert "conntrack_nf_conntrack_unreplied_entries" not in types  # needs a dump: breakdown only
    assert "conntrack_nf_conntrack_entries_by_protocol" not in types


def test_the_breakdown_refreshes_on_its_interval_and_scrapes_never_dump(ns_ct, dumps):
    ns = (("netns", ns_ct.ns.name),)
    collector = ConntrackCollector([ns_ct.ns.name], breakdown=True, breakdown_interval=0.3)
    try:
        for port in serve(collector):
            wait_for(port, "conntrack_nf_conntrack_unreplied_entries", ns, 0)
            populate(ns_ct)  # the next refresh sees them
            wait_for(port, "conntrack_nf_conntrack_unreplied_entries", ns, 35)
            before = collector.breakdown_refreshes
            deadline = time.monotonic() + 60
            while collector.breakdown_refreshes < before + 2:
                assert time.monotonic() < deadline, "no refresh in 60 s"
                time.sleep(0.05)
            series, _ = scrape(port)
            assert 0 <= series[("conntrack_breakdown_age_seconds", ns)] < 60
    finally:
        collector.close()
    assert dumps and set(dumps) == {"conntrack-breakdown"}  # never in a scrape's thread


def test_node_exporter_names(ns_ct):
    populate(ns_ct)
    for port in serve(ConntrackCollector([ns_ct.ns.name], names="node")):
        series, types = scrape(port)
    assert series[("node_nf_conntrack_entries", ())] == 55
    assert series[("node_nf_conntrack_entries_limit", ())] == ns_ct.limit()
    totals = {k: sum(row.get(k, 0) for row in ns_ct.stats()) for k in NODE_STATS}
    for name in ("found", "invalid", "ignore", "insert", "insert_failed", "drop", "early_drop", "search_restart"):
        assert types["node_nf_conntrack_stat_" + name] == "gauge"
        assert series[("node_nf_conntrack_stat_" + name, ())] == totals[name]
    assert types["node_nf_conntrack_entries"] == "gauge"
    assert series[("conntrack_up", (("netns", ns_ct.ns.name),))] == 1


def test_bad_collector_arguments():
    for kw in ({"names": "other"}, {"breakdown_interval": 0}, {"breakdown_interval": float("nan")}, {"top": -1}):
        with pytest.raises(ValueError):
            ConntrackCollector(**kw)


def test_a_scrape_never_changes_the_table(ns_ct, port):
    populate(ns_ct)
    before = sorted((f.id, f.timeout is not None, f.status) for f in ns_ct.dump())
    for _ in range(3):
        scrape(port)
    after = sorted((f.id, f.timeout is not None, f.status) for f in ns_ct.dump())
    assert after == before and ns_ct.count() == 55


def test_several_namespaces_get_their_own_labels(netns, shared_netns):
    with conntrack.Conntrack(netns.name) as a:
        a.create(conntrack.Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60))
    collector = ConntrackCollector([netns.name, shared_netns.path, None], breakdown=False,
                                   labels=["a", "b", "host"])
    for port in serve(collector):
        series, types = scrape(port)
        assert series[("conntrack_nf_conntrack_entries", (("netns", "a"),))] == 1
        assert series[("conntrack_up", (("netns", "b"),))] == 1
        assert series[("conntrack_up", (("netns", "host"),))] == 1
        assert "conntrack_nf_conntrack_entries_by_protocol" not in types  # breakdown off
        netns.delete()  # a namespace that goes away is reported down, not an error
        series, _ = scrape(port)
        assert series[("conntrack_up", (("netns", "a"),))] == 0
        assert series[("conntrack_up", (("netns", "b"),))] == 1


def test_registering_reads_nothing():
    collector = ConntrackCollector(["ctpy-does-not-exist"])
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)  # describe() only: no namespace is opened here
    names = {m.name for m in collector.describe()}
    assert "conntrack_nf_conntrack_entries" in names


def test_missing_prometheus_client_is_a_clear_error(monkeypatch):
    """prometheus_client made unimportable for one test (sys.modules entry None)."""
    for name in ("prometheus_client", "prometheus_client.core"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependency, match=r"pyconntrack\[exporter\]") as info:
        ConntrackCollector()
    assert isinstance(info.value, ImportError)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_command_serves_metrics(ns_ct):
    populate(ns_ct)
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "conntrack.exporter", "--port", str(port),
                          "--address", "127.0.0.1", "--netns", ns_ct.ns.name, "--breakdown",
                          "--breakdown-interval", "0.2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                series, _ = scrape(port)
                break
            except OSError:
                if p.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("exporter did not start: %s" % p.communicate()[1]) from None
                time.sleep(0.1)
        assert series[("conntrack_nf_conntrack_entries", (("netns", ns_ct.ns.name),))] == 55
        wait_for(port, "conntrack_nf_conntrack_unreplied_entries", (("netns", ns_ct.ns.name),), 35)
    finally:
        p.terminate()
        p.wait(10)


def test_the_command_refuses_a_missing_namespace():
    r = subprocess.run([sys.executable, "-m", "conntrack.exporter", "--port", str(free_port()),
                        "--address", "127.0.0.1", "--netns", "ctpy-does-not-exist"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "not found" in r.stderr
