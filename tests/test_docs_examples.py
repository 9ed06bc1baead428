"""The documentation's examples, run against throwaway network namespaces.

docs/*.rst show the files under docs/examples/ with ``literalinclude``, so
the code tested here is the code the pages show.  Each file defines one
function taking a handle (or a namespace); the tests import the files and
call those functions, and also run every file as a script inside a
namespace, the way a reader would.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import List

import pytest
from helpers import TCP_PAIR, UDP_UNREPLIED, Netns

from conntrack import Conntrack, Filter, Flow, KernelFeatures

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
UNREPLIED = 300  # UDP to port 53, never answered
REPLIED = 100  # TCP to port 443, ESTABLISHED and ASSURED


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


def need_cli() -> None:
    if shutil.which("conntrack") is None:
        pytest.skip("needs conntrack(8) (apt-get install conntrack)")


def without_timeouts(lines: List[str]) -> List[str]:
    """conntrack -L lines with the timeout column blanked (it ticks between reads)."""
    return sorted(re.sub(r"^(\S+\s+\d+) \d+ ", r"\1 - ", line) for line in lines)


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
    need_cli()
    populate(ns_ct)
    assert load("list_all").list_all(ns_ct) == UNREPLIED + REPLIED
    ours = capsys.readouterr().out.splitlines()
    theirs = ns_ct.ns.cli_lines("-L")
    assert len(ours) == UNREPLIED + REPLIED
    assert without_timeouts(ours) == without_timeouts(theirs)


@pytest.mark.tool
def test_find_unreplied_agrees_with_grep(ns_ct, capsys):
    need_cli()
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


# -- every example as a script, the way a reader runs it ------------------------


def run_in(ns: Netns, script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, str(EXAMPLES / script), *args],
        capture_output=True, text=True, env=env, timeout=60,
    )
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
    "flow_lifecycle.py", "raw_cffi.py",
])
def test_example_runs_as_a_script(netns, script):
    with Conntrack(netns.name) as ct:
        populate(ct)
    assert run_in(netns, script)


def test_netns_example_runs_as_a_script(netns):
    with Conntrack(netns.name) as ct:
        populate(ct)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(EXAMPLES / "netns.py"), netns.name],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "%s: %d entries, %d UNREPLIED\n" % (netns.name, UNREPLIED + REPLIED, UNREPLIED)
