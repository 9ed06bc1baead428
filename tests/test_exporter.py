"""conntrack.exporter: scraped over HTTP on 127.0.0.1, from real namespaces."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from typing import Dict, Iterator, Tuple

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import conntrack
from conntrack.errors import MissingDependency
from conntrack.exporter import ConntrackCollector

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


def test_a_scrape_reports_the_namespace(ns_ct, port):
    populate(ns_ct)
    series, types = scrape(port)
    ns = (("netns", ns_ct.ns.name),)

    def value(name: str, *labels: Tuple[str, str]) -> float:
        return series[(name, tuple(sorted(ns + labels)))]

    assert value("conntrack_up") == 1
    assert value("conntrack_nf_conntrack_entries") == 55 == ns_ct.count()
    assert value("conntrack_nf_conntrack_entries_limit") == ns_ct.limit()
    assert value("conntrack_nf_conntrack_fill_ratio") == pytest.approx(55 / ns_ct.limit())
    unreplied = ns_ct.count(conntrack.Filter(unreplied=True))
    assert value("conntrack_nf_conntrack_unreplied_entries") == unreplied == 35
    assert value("conntrack_nf_conntrack_entries_by_protocol", ("protocol", "udp")) == 30
    assert value("conntrack_nf_conntrack_entries_by_protocol", ("protocol", "tcp")) == 25
    assert value("conntrack_nf_conntrack_tcp_entries_by_state", ("state", "ESTABLISHED")) == 20
    assert value("conntrack_nf_conntrack_tcp_entries_by_state", ("state", "SYN_SENT")) == 5
    assert value("conntrack_nf_conntrack_tcp_entries_by_state", ("state", "TIME_WAIT")) == 0
    stats = {k: sum(row[k] for row in ns_ct.stats()) for k in ("drop", "early_drop", "insert_failed")}
    for k, v in stats.items():
        assert value("conntrack_nf_conntrack_stat_%s_total" % k) == v
        assert types["conntrack_nf_conntrack_stat_%s" % k] == "counter"
    assert types["conntrack_nf_conntrack_entries"] == "gauge"


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
                          "--address", "127.0.0.1", "--netns", ns_ct.ns.name],
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
        assert series[("conntrack_nf_conntrack_unreplied_entries", (("netns", ns_ct.ns.name),))] == 35
    finally:
        p.terminate()
        p.wait(10)


def test_the_command_refuses_a_missing_namespace():
    r = subprocess.run([sys.executable, "-m", "conntrack.exporter", "--port", str(free_port()),
                        "--address", "127.0.0.1", "--netns", "ctpy-does-not-exist"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "not found" in r.stderr
