"""The documentation's examples, run against throwaway network namespaces.

docs/*.rst show the files under docs/examples/ with ``literalinclude``, so
the code tested here is the code the pages show.  Each file defines one
function taking a handle (or a namespace); the tests import the files and
call those functions, and also run every file as a script inside a
namespace, the way a reader would.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, List

import pytest
from helpers import TCP_PAIR, UDP_UNREPLIED, Netns

from conntrack import Conntrack, Filter, Flow, KernelFeatures, Proto, TCPState, sysctl
from conntrack.errors import ReadOnlyInNamespace
from conntrack.netns import run_in as run_in_netns

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
UNREPLIED = 300  # UDP to port 53, never answered
REPLIED = 100  # TCP to port 443, ESTABLISHED and ASSURED
HOST_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
HOST_DROPIN = Path("/etc/sysctl.d") / sysctl.DEFAULT_DROPIN


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_example_" + name, EXAMPLES / (name + ".py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def populate(ct: Conntrack) -> None:
    flows = [
        Flow(proto="udp", src="10.0.%d.%d" % (i // 250, i % 250 + 1), dst="10.9.0.1",
             sport=1024 + i, dport=53, timeout=600)
        for i in range(UNREPLIED)
    ]
    flows += [
        Flow(proto="tcp", src="10.1.0.1", dst="10.9.0.2", sport=20000 + i, dport=443, timeout=600,
             state="ESTABLISHED", status="SEEN_REPLY|ASSURED")
        for i in range(REPLIED)
    ]
    assert ct.create_many(flows) == UNREPLIED + REPLIED


def without_timeouts(lines: List[str]) -> List[str]:
    """conntrack -L lines with the timeout column blanked (it ticks between reads) and use= dropped:
    the reference count is the kernel's, never promised stable (5.10's dump holds a reference on
    the entry each batch resumes at, so use=2 shows at places that differ between two dumps)."""
    return sorted(re.sub(r" use=\d+", "", re.sub(r"^(\S+\s+\d+) \d+ ", r"\1 - ", line)) for line in lines)


# -- recipes.rst --------------------------------------------------------------


def test_table_usage(ns_ct, capsys):
    populate(ns_ct)
    usage = load("table_usage").table_usage(ns_ct)
    limit = ns_ct.limit()
    assert limit > 0 and usage == (UNREPLIED + REPLIED) / limit
    assert capsys.readouterr().out.startswith("%d of %d entries in use (" % (UNREPLIED + REPLIED, limit))


def test_drops(ns_ct, capsys):
    totals = load("drops").drops(ns_ct)
    assert set(totals) == {"drop", "early_drop", "insert_failed"}
    assert all(isinstance(v, int) and v >= 0 for v in totals.values())
    assert capsys.readouterr().out.startswith("drop=")


@pytest.mark.tool
def test_list_all_prints_what_conntrack_L_prints(ns_ct, capsys):
    populate(ns_ct)
    assert load("list_all").list_all(ns_ct) == UNREPLIED + REPLIED
    ours = capsys.readouterr().out.splitlines()
    theirs = ns_ct.ns.cli_lines("-L")
    assert len(ours) == UNREPLIED + REPLIED
    assert without_timeouts(ours) == without_timeouts(theirs)


@pytest.mark.tool
def test_find_unreplied_agrees_with_grep(ns_ct, capsys):
    populate(ns_ct)
    assert load("find_unreplied").find_unreplied(ns_ct) == UNREPLIED
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "%d UNREPLIED entries" % UNREPLIED
    assert out[1].split() == [str(UNREPLIED), "udp", "to", "10.9.0.1", "port", "53"]
    grep = [line for line in ns_ct.ns.cli_lines("-L") if "UNREPLIED" in line]
    assert len(grep) == UNREPLIED


def test_find_unreplied_on_real_traffic(ns_ct, capsys):
    ns = ns_ct.ns
    ns.track()
    udp = ns.python(UDP_UNREPLIED, "9")  # nothing listens on port 9: no reply
    tcp = ns.python(TCP_PAIR)
    try:
        udp.stdout.readline()
        tcp.stdout.readline()
        assert load("find_unreplied").find_unreplied(ns_ct) == 1
        assert ns_ct.count() == 2
    finally:
        for proc in (udp, tcp):
            proc.stdin.close()
            proc.wait()
    assert "udp to 127.0.0.1 port 9" in capsys.readouterr().out


@pytest.mark.parametrize("portable", [False, True], ids=["detected", "portable"])
def test_delete_unreplied(ns_ct, capsys, portable):
    populate(ns_ct)
    features = KernelFeatures.none() if portable else None
    with Conntrack(ns_ct.ns.name, features=features) as ct:
        expected = "flush" if Filter(unreplied=True).compile(ct.features).flush_ok else "batch"
        result = load("delete_unreplied").delete_unreplied(ct)
    assert result.method == expected
    assert result.deleted == UNREPLIED and result.vanished == 0
    assert result.exact == (expected == "batch")
    assert ns_ct.count(Filter(unreplied=True)) == 0
    assert ns_ct.count() == REPLIED
    out = capsys.readouterr().out
    assert out.startswith("would delete %d entries by %s\n" % (UNREPLIED, expected))


def test_netns(netns, capsys):
    with Conntrack(netns.name) as ct:
        populate(ct)
    assert load("netns").in_namespace(netns.name) == UNREPLIED + REPLIED
    assert capsys.readouterr().out == "%s: %d entries, %d UNREPLIED\n" % (
        netns.name, UNREPLIED + REPLIED, UNREPLIED)


# -- recipes.rst: conntrack.sysctl -------------------------------------------------


@pytest.fixture
def host_limit_untouched() -> Iterator[int]:
    """The host's nf_conntrack_max (and sysctl.d) before a test; checked after.

    The examples that write are pointed at a temporary tree or run where the
    kernel refuses the write, so nothing should change; if something did,
    the test fails.  Nothing is written back: a change may be another process's raise, and
    writing the old value over it could lower the host's limit under running tables.
    """
    before = int(HOST_MAX.read_text())
    dropin_existed = HOST_DROPIN.exists()
    yield before
    after = int(HOST_MAX.read_text())
    assert after == before, "the host's nf_conntrack_max changed: %d -> %d" % (before, after)
    assert HOST_DROPIN.exists() == dropin_existed, "%s was created" % HOST_DROPIN


def fake_root(root: Path, limit: int = 262144, count: int = 3) -> Path:
    """A stand-in for / with the files set_max and persist=True touch."""
    d = root / "proc/sys/net/netfilter"
    d.mkdir(parents=True)
    for name, value in {"max": limit, "count": count, "buckets": 262144, "expect_max": 4096}.items():
        (d / ("nf_conntrack_" + name)).write_text("%d\n" % value)
    return root


def test_sysctl_read_in_a_namespace(netns, capsys):
    with Conntrack(netns.name) as ct:
        populate(ct)
    settings = load("sysctl_read").read_limits(netns.name)
    assert settings.count == UNREPLIED + REPLIED  # this namespace's entries, not the host's
    assert settings.max == int(HOST_MAX.read_text())  # the global limit
    assert settings.timeouts["tcp_timeout_established"] > 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("%d of %d entries (" % (UNREPLIED + REPLIED, settings.max))
    assert out[1].startswith("ESTABLISHED TCP entries expire after ")
    assert out[2] == "%d entries free" % (settings.max - UNREPLIED - REPLIED)


def test_raise_limit_and_persist_in_a_scratch_root(tmp_path, host_limit_untouched, capsys):
    root = fake_root(tmp_path)
    previous = load("raise_limit").raise_limit(524288, root=str(root))
    assert previous == 262144
    assert (root / "proc/sys/net/netfilter/nf_conntrack_max").read_text() == "524288\n"
    dropin = root / "etc/sysctl.d/90-conntrack.conf"
    assert "net.netfilter.nf_conntrack_max = 524288" in dropin.read_text().splitlines()
    assert capsys.readouterr().out == "nf_conntrack_max: 262144 -> 524288, kept in %s\n" % dropin


def test_raise_limit_never_lowers_it(tmp_path, host_limit_untouched, capsys):
    root = fake_root(tmp_path, limit=1048576)
    assert load("raise_limit").raise_limit(524288, root=str(root)) == 1048576
    assert (root / "proc/sys/net/netfilter/nf_conntrack_max").read_text() == "1048576\n"
    assert not (root / "etc/sysctl.d").exists()
    assert capsys.readouterr().out == "nf_conntrack_max is already 1048576\n"


def test_raise_limit_warns_on_proxmox(tmp_path, host_limit_untouched, capsys):
    root = fake_root(tmp_path)
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("pve1\n")
    host_fw = root / "etc/pve/nodes/pve1/host.fw"
    host_fw.parent.mkdir(parents=True)
    host_fw.write_text("[OPTIONS]\nnf_conntrack_max: 262144\n")
    load("raise_limit").raise_limit(524288, root=str(root))
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("warning: this is a Proxmox VE host: pve-firewall restores nf_conntrack_max")
    assert "`nf_conntrack_max: 524288` in the [OPTIONS] section of /etc/pve/nodes/pve1/host.fw" in out[1]
    assert host_fw.read_text() == "[OPTIONS]\nnf_conntrack_max: 262144\n"  # Proxmox's file is not ours


def test_raise_limit_warns_when_a_later_file_wins_at_boot(tmp_path, host_limit_untouched, capsys):
    root = fake_root(tmp_path)
    (root / "etc").mkdir()
    (root / "etc/sysctl.conf").write_text("net.netfilter.nf_conntrack_max = 65536\n")
    load("raise_limit").raise_limit(524288, root=str(root))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("warning: %s also sets net.netfilter.nf_conntrack_max"
                                               % (root / "etc/sysctl.conf"))


def test_raise_limit_is_refused_outside_the_host_namespace(netns, host_limit_untouched):
    assert not sysctl.is_init_netns(netns.name)  # else the kernel would take the write
    new_max = host_limit_untouched + 1024  # always a raise, so the example tries to write
    with pytest.raises(ReadOnlyInNamespace):
        run_in_netns(netns.name, lambda: load("raise_limit").raise_limit(new_max))


def test_raise_limit_script_outside_the_host_namespace(netns, host_limit_untouched):
    proc = run_in(netns, "raise_limit.py", str(host_limit_untouched + 1024), check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("cannot: ") and "read-only in this network namespace" in proc.stderr


# -- recipes.rst: monitoring ---------------------------------------------------------


def test_health_check(ns_ct, capsys):
    populate(ns_ct)
    h = load("health_check").check(ns_ct, 0.2)
    assert str(h.verdict) == "ok" and h.count == UNREPLIED + REPLIED and h.max == ns_ct.limit()
    assert h.deltas == {"drop": 0, "early_drop": 0, "insert_failed": 0}
    assert capsys.readouterr().out.startswith(
        "ok: %.1f%% full (%d of %d entries); no drops in " % (100 * h.fill, UNREPLIED + REPLIED, h.max))


def test_summary(ns_ct, capsys):
    populate(ns_ct)
    s = load("summary").summarize(ns_ct)
    assert (s.total, s.unreplied, s.assured) == (UNREPLIED + REPLIED, UNREPLIED, REPLIED)
    assert s.by_proto == {Proto.udp: UNREPLIED, Proto.tcp: REPLIED}
    assert s.tcp_states == {TCPState.ESTABLISHED: REPLIED}
    assert capsys.readouterr().out.splitlines() == [
        "%d entries, %d UNREPLIED, %d ASSURED" % (UNREPLIED + REPLIED, UNREPLIED, REPLIED),
        "%8d  udp" % UNREPLIED,
        "%8d  tcp" % REPLIED,
        "%8d  tcp ESTABLISHED" % REPLIED,
        "%d to port 53, of which %d UNREPLIED" % (UNREPLIED, UNREPLIED),
    ]


@pytest.mark.tool
def test_summary_agrees_with_conntrack_L(ns_ct):
    populate(ns_ct)
    ns_ct.create(Flow(proto="tcp", src="10.1.0.2", dst="10.9.0.2", sport=1, dport=443, timeout=600,
                      state="SYN_SENT"))
    s = ns_ct.summary()
    by_proto: Dict[str, int] = {}
    by_state: Dict[str, int] = {}
    for line in ns_ct.ns.cli_lines("-L"):
        fields = line.split()
        by_proto[fields[0]] = by_proto.get(fields[0], 0) + 1
        if fields[0] == "tcp":
            by_state[fields[3]] = by_state.get(fields[3], 0) + 1
    assert {p.name: n for p, n in s.by_proto.items()} == by_proto
    assert {t.name: n for t, n in s.tcp_states.items()} == by_state


def test_exporter_embedded(netns, capsys):
    with Conntrack(netns.name) as ct:
        populate(ct)
        limit = ct.limit()
    from prometheus_client.parser import text_string_to_metric_families

    text = load("exporter_embed").metrics([netns.name])
    label = '{netns="%s"}' % netns.name
    # parsed, not compared as text: prometheus_client writes 2000000.0 as 2e+06
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("conntrack_nf_conntrack_entries_limit", (("netns", netns.name),))] == limit
    assert "conntrack_nf_conntrack_tcp_entries_by_state" not in text  # the breakdown is opt-in
    assert capsys.readouterr().out.splitlines() == [
        "conntrack_up%s 1.0" % label,
        "conntrack_nf_conntrack_entries%s %r" % (label, float(UNREPLIED + REPLIED)),
        "conntrack_nf_conntrack_stat_drop_total%s 0.0" % label,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_exporter_command(netns):
    with Conntrack(netns.name) as ct:
        populate(ct)
    port = free_port()  # the page says --port 9466; any free one here
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "conntrack.exporter", "--port", str(port),
                             "--address", "127.0.0.1", "--netns", netns.name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=30) as r:
                    text = r.read().decode()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("exporter did not start: %s" % proc.communicate()[1]) from None
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    assert 'conntrack_nf_conntrack_entries{netns="%s"} %r' % (netns.name, float(UNREPLIED + REPLIED)) in text


# -- flows.rst, cffi.rst ------------------------------------------------------


def test_flow_lifecycle(ns_ct, capsys):
    entry = load("flow_lifecycle").flow_lifecycle(ns_ct)
    assert entry.mark == 2 and entry.timeout <= 30
    assert ns_ct.count() == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "already there"
    assert out[1].startswith("udp      17 ") and "[UNREPLIED]" in out[1] and "mark=1" in out[1]
    assert out[2].startswith("1 ") and out[2].endswith(" True <Status.CONFIRMED: 8>")
    assert out[3:] == ["mark is now 2", "gone"]


def test_raw_cffi(netns, capsys):
    with Conntrack(netns.name) as ct:
        populate(ct)
    ports = load("raw_cffi").raw_udp_ports(netns.path)
    assert ports == {53: UNREPLIED}
    assert capsys.readouterr().out == "[(53, %d)]\n" % UNREPLIED


# -- filters.rst ----------------------------------------------------------------


@pytest.mark.parametrize("keywords, features", [
    (dict(unreplied=True), KernelFeatures.detect("6.18")),
    (dict(proto="udp", dport=53), KernelFeatures.detect("6.18")),
    (dict(family="ipv4", proto="udp", dport=53), KernelFeatures.detect("6.18")),
    (dict(family="ipv4", proto="udp", dport=53), KernelFeatures.detect("6.1.0")),
    (dict(mark="0x10/0xff", zone=3), KernelFeatures.none()),
])
def test_explain_output_shown_in_filters_page(keywords, features):
    page = (ROOT / "docs" / "filters.rst").read_text(encoding="utf-8")
    assert repr(Filter(**keywords).explain(features)) in page


@pytest.mark.tool
def test_delete_nat_deletes_what_conntrack_D_src_nat_deletes(ns_ct, capsys):

    def nat_table() -> None:
        ns_ct.create_many([Flow(proto="udp", src="10.0.0.%d" % i, dst="198.51.100.1", sport=1000, dport=53,
                                timeout=600, reply_dst="192.0.2.%d" % (1 + i % 2), reply_dport=2000 + i)
                           for i in range(1, 41)])
        populate(ns_ct)

    nat_table()
    ns_ct.ns.cli("-D", "--src-nat", "192.0.2.1")
    left_by_cli = without_timeouts(ns_ct.ns.cli_lines("-L"))
    ns_ct.flush()
    nat_table()
    assert load("delete_nat").delete_nat(ns_ct, "192.0.2.1") == 20
    assert capsys.readouterr().out.splitlines() == ["20 entries NATed to 192.0.2.1", "deleted 20 by batch"]
    assert without_timeouts(ns_ct.ns.cli_lines("-L")) == left_by_cli
    assert len(left_by_cli) == 20 + UNREPLIED + REPLIED


# -- every example as a script, the way a reader runs it ------------------------


def run_in(ns: Netns, script: str, *args: str, check: bool = True):
    """Run an example inside *ns*; its stdout (or, with check=False, the finished process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, str(EXAMPLES / script), *args],
        capture_output=True, text=True, env=env, timeout=60,
    )
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quickstart_runs_and_matches_the_readme(netns):
    with Conntrack(netns.name) as ct:
        populate(ct)
        limit = ct.limit()
    out = run_in(netns, "quickstart.py").splitlines()
    assert out[0] == "%d of %d entries in use" % (UNREPLIED + REPLIED, limit)
    assert len(out) == 1 + REPLIED + 2
    assert out[1].startswith("10.1.0.1 20") and " -> 10.9.0.2 443 " in out[1]
    assert out[-2] == "%d entries never saw a reply" % UNREPLIED
    assert out[-1].startswith("a delete would remove %d entries by " % UNREPLIED)
    with Conntrack(netns.name) as ct:
        assert ct.count() == UNREPLIED + REPLIED  # the dry run deleted nothing

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert (EXAMPLES / "quickstart.py").read_text(encoding="utf-8") in readme


@pytest.mark.parametrize("script", [
    "table_usage.py", "drops.py", "list_all.py", "find_unreplied.py", "delete_unreplied.py",
    "flow_lifecycle.py", "raw_cffi.py", "sysctl_read.py", "summary.py", "exporter_embed.py", "delete_nat.py",
])
def test_example_runs_as_a_script(netns, script):
    with Conntrack(netns.name) as ct:
        populate(ct)
    assert run_in(netns, script)


def test_follow_events(ns_ct, capsys):
    result = {}

    def listen() -> None:  # a handle belongs to the thread that opens it
        with Conntrack(ns_ct.ns.name) as listener:
            result.update(seen=load("follow_events").follow(listener, idle=4.0))

    t = threading.Thread(target=listen)
    t.start()
    ns_ct.ns.wait_for_event_subscriber()  # subscribed: from now on nothing is missed
    ns_ct.create_many(Flow(proto="udp", src="10.1.0.%d" % i, dst="10.2.0.1", sport=1000, dport=53, timeout=60)
                      for i in range(1, 21))
    ns_ct.create(Flow(proto="udp", src="10.1.0.1", dst="10.2.0.1", sport=1000, dport=123, timeout=60))
    ns_ct.delete(Filter(dport=53, src="10.1.0.0/29"))
    t.join(120)
    assert result["seen"] == {"NEW": 20, "DESTROY": 7}
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("NEW udp ") and out[-1].startswith("DESTROY udp ")


def test_health_check_runs_as_a_script(netns):
    with Conntrack(netns.name) as ct:
        populate(ct)
    assert run_in(netns, "health_check.py", "0.2").startswith("ok: ")


def test_sysctl_read_runs_as_a_script_on_a_named_namespace(netns):
    with Conntrack(netns.name) as ct:
        populate(ct)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(EXAMPLES / "sysctl_read.py"), netns.name],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("%d of " % (UNREPLIED + REPLIED))


def test_every_example_is_shown_and_nothing_is_in_progress():
    pages = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.rst"))
    for example in sorted(EXAMPLES.glob("*.py")):
        assert ".. literalinclude:: examples/%s" % example.name in pages, example.name
    assert "In progress" not in pages


def test_netns_example_runs_as_a_script(netns):
    with Conntrack(netns.name) as ct:
        populate(ct)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(EXAMPLES / "netns.py"), netns.name],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "%s: %d entries, %d UNREPLIED\n" % (netns.name, UNREPLIED + REPLIED, UNREPLIED)


# -- events.rst -----------------------------------------------------------------


def _service_burst(n: int) -> List[Flow]:
    """n connections to the example's service (10.9.0.2:443) and as many to elsewhere."""
    return [Flow(proto=proto, src="10.%d.%d.%d" % (4 + k, i // 250, i % 250 + 1), dst=dst,
                 sport=1000 + k, dport=dport, timeout=600)
            for i in range(n)
            for k, (proto, dst, dport) in enumerate((("tcp", "10.9.0.2", 443), ("udp", "10.9.0.3", 53)))]


def test_service_agent_stays_whole_across_an_overflow(ns_ct):
    from prometheus_client import CollectorRegistry

    example = load("service_agent")
    registry = CollectorRegistry()
    value = registry.get_sample_value

    async def main():
        agent = example.ServiceAgent(registry)
        with Conntrack(ns_ct.ns.name) as listener:
            task = asyncio.ensure_future(agent.run(listener, rcvbuf=64 * 1024))
            await agent.subscribed.wait()
            # made while the agent cannot read (this blocks the loop): its buffer overflows
            ns_ct.create_many(_service_burst(6000))
            ns_ct.delete(Filter(proto="tcp", src="10.4.0.0/24"))  # 250 DESTROY
            want = {f.key for f in ns_ct.dump(example.SERVICE)}
            deadline = time.monotonic() + 120
            while set(agent.flows) != want and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return agent, want

    agent, want = asyncio.run(main())
    assert len(want) == 6000 - 250 and set(agent.flows) == want
    assert value("service_connections_active") == len(want)
    assert value("service_resyncs_total") >= 2 and value("service_events_lost_total") > 0  # start + overflow
    told = value("service_connections_opened_total") + value("service_connections_closed_total")
    if ns_ct.features.events_bpf:
        # the kernel passes only the service's connections (its protocol and address):
        # what the agent was told about, plus what it lost, is every NEW and DESTROY of the service
        assert told + value("service_events_lost_total") == 6000 + 250
    else:  # the other half is lost too, or dropped in C
        assert told + value("service_events_lost_total") <= 2 * 6000 + 250


def test_service_agent_runs_as_a_script(netns):
    with Conntrack(netns.name) as ct:
        ct.create_many(_service_burst(10))
    out = run_in(netns, "service_agent.py", "0", "0.5")
    assert out == "active 10, opened 0, lost 0, resyncs 1\n"  # the entries that were there


@pytest.mark.parametrize("keywords", [
    dict(proto="tcp", dst="10.9.0.2", dport=443),
    dict(proto="tcp", state=["SYN_SENT", "ESTABLISHED"], mark="0x10/0xff"),
])
def test_events_explain_output_shown_in_events_page(keywords):
    page = (ROOT / "docs" / "events.rst").read_text(encoding="utf-8")
    assert repr(Filter(**keywords).explain(KernelFeatures.detect("6.18"), events=True)) in page
