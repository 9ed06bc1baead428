"""The command line (``python -m conntrack``), run as a subprocess against throwaway namespaces.

Entries are made with the library or with conntrack(8), and what the
command line prints or leaves behind is checked with conntrack(8) inside
the namespace.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from helpers import CLI_CREATES, Netns

import conntrack
from conntrack import Filter, Flow

ROOT = Path(__file__).resolve().parent.parent
HOST_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
UNREPLIED = 30
REPLIED = 10



def pyct(*args: str, netns: Netns = None) -> subprocess.CompletedProcess:
    """Run ``python -m conntrack ARGS [--netns NAME]``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "conntrack", *args]
    if netns is not None:
        cmd += ["--netns", netns.name]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def _norm(line: str) -> str:
    """Drop what ticks between two reads: the timeout (third field) and use= (as in test_reference)."""
    parts = line.split()
    parts[2] = "T"
    return re.sub(r" use=\d+", "", " ".join(parts))


def _table(ns: Netns) -> List[str]:
    """The namespace's table as conntrack(8) lists it, normalised and sorted."""
    return sorted(_norm(line) for line in ns.cli_lines("-L"))


def populate(ns: Netns) -> None:
    """UNREPLIED UDP entries to port 53 and REPLIED ESTABLISHED TCP entries, made by the library."""
    flows = [Flow(proto="udp", src="10.0.0.%d" % (i + 1), dst="10.9.0.1", sport=1024 + i, dport=53, timeout=600)
             for i in range(UNREPLIED)]
    flows += [Flow(proto="tcp", src="10.1.0.1", dst="10.9.0.2", sport=20000 + i, dport=443, timeout=600,
                   state="ESTABLISHED", status="SEEN_REPLY|ASSURED")
              for i in range(REPLIED)]
    with conntrack.Conntrack(ns.name) as ct:
        assert ct.create_many(flows) == UNREPLIED + REPLIED


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, proc.stderr
    return err


# -- reading ------------------------------------------------------------------------------------


@pytest.mark.tool
def test_list_prints_what_conntrack_L_prints(netns):
    for args in CLI_CREATES:
        netns.cli("-I", *args)
    populate(netns)
    proc = pyct("list", netns=netns)
    assert proc.returncode == 0, proc.stderr
    ours = sorted(_norm(line) for line in proc.stdout.splitlines())
    assert len(ours) == len(CLI_CREATES) + UNREPLIED + REPLIED
    assert ours == _table(netns)


@pytest.mark.tool
def test_list_with_filters_matches_the_reference(netns):
    for args in CLI_CREATES:
        netns.cli("-I", *args)
    proc = pyct("list", "-p", "udp", "--family", "ipv4", netns=netns)
    assert proc.returncode == 0, proc.stderr
    ours = sorted(_norm(line) for line in proc.stdout.splitlines())
    theirs = sorted(_norm(line) for line in netns.cli_lines("-L", "-p", "udp", "-f", "ipv4"))
    assert ours == theirs and len(ours) == 1
    proc = pyct("list", "--state", "SYN_SENT,ESTABLISHED", "--dport", "1-100", netns=netns)
    assert len(proc.stdout.splitlines()) == 2
    proc = pyct("list", "--state", "SYN_SENT", "--state", "ESTABLISHED", "-s", "10.0.0.3/32", netns=netns)
    assert [line.split()[3] for line in proc.stdout.splitlines()] == ["SYN_SENT"]


def test_list_json_parses(netns):
    populate(netns)
    proc = pyct("list", "--json", "--unreplied", netns=netns)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == UNREPLIED
    assert all(r["proto"] == "udp" and r["orig"]["dport"] == 53 and "SEEN_REPLY" not in r["status"] for r in rows)
    with conntrack.Conntrack(netns.name) as ct:
        assert sorted(r["id"] for r in rows) == sorted(f.id for f in ct.dump(Filter(unreplied=True)))


def test_count_agrees_with_the_library(netns):
    populate(netns)
    with conntrack.Conntrack(netns.name) as ct:
        for args, flt in ((["--unreplied"], Filter(unreplied=True)), (["--replied"], Filter(unreplied=False)),
                          (["-p", "tcp", "--state", "ESTABLISHED"], Filter(proto="tcp", state="ESTABLISHED")),
                          ([], None)):
            proc = pyct("count", *args, netns=netns)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout == "%d\n" % ct.count(flt)
    assert pyct("count", "--unreplied", netns=netns).stdout == "%d\n" % UNREPLIED


def test_summary_text_and_json(netns):
    populate(netns)
    proc = pyct("summary", "--json", netns=netns)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "total": UNREPLIED + REPLIED, "unreplied": UNREPLIED, "assured": REPLIED,
        "by_proto": {"udp": UNREPLIED, "tcp": REPLIED}, "tcp_states": {"ESTABLISHED": REPLIED},
    }
    text = pyct("summary", "--dport", "53", netns=netns).stdout.splitlines()
    assert text[0] == "%d entries, %d UNREPLIED, 0 ASSURED" % (UNREPLIED, UNREPLIED)
    assert text[1].split() == [str(UNREPLIED), "udp"]


def test_explain(netns):
    proc = pyct("explain", "--unreplied", "-p", "udp", "--dport", "53", netns=netns)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == Filter(unreplied=True, proto="udp", dport=53).explain() + "\n"


@pytest.mark.tool
def test_reading_commands_change_nothing(netns):
    populate(netns)
    before = _table(netns)
    ids = netns.cli_lines("-L", "-o", "id")
    for args in (["list"], ["list", "--json"], ["count"], ["count", "--unreplied"], ["summary"],
                 ["explain", "--unreplied"], ["limits"], ["limits", "--json"], ["health", "--interval", "0"],
                 ["delete", "--unreplied", "--dry-run"], ["delete", "--all", "--dry-run"]):
        assert pyct(*args, netns=netns).returncode == 0, args
    assert _table(netns) == before
    assert [re.sub(r"^(\S+\s+\d+) \d+ ", r"\1 ", x) for x in netns.cli_lines("-L", "-o", "id")] == \
        [re.sub(r"^(\S+\s+\d+) \d+ ", r"\1 ", x) for x in ids]


# -- deleting -----------------------------------------------------------------------------------


@pytest.mark.tool
def test_delete_without_a_filter_refuses(netns):
    populate(netns)
    before = _table(netns)
    proc = pyct("delete", netns=netns)
    assert proc.returncode == 2
    assert "--all" in one_line_error(proc)
    assert proc.stdout == ""
    proc = pyct("delete", "--all", "--unreplied", netns=netns)  # --all with a filter is ambiguous
    assert proc.returncode == 2 and "--all" in one_line_error(proc)
    assert _table(netns) == before


@pytest.mark.tool
@pytest.mark.parametrize("options, says", [(["--status", ""], "--status: empty"), (["--mark", "0/0"], "--all"),
                                           (["--mark", "5/0"], "outside the mask"), (["--status", "0"], "--all")])
def test_delete_with_a_filter_that_matches_everything_refuses(netns, options, says):
    populate(netns)
    before = _table(netns)
    proc = pyct("delete", *options, netns=netns)
    assert proc.returncode == 2 and says in one_line_error(proc)
    assert _table(netns) == before


@pytest.mark.tool
def test_delete_dry_run_deletes_nothing(netns):
    populate(netns)
    before = _table(netns)
    proc = pyct("delete", "--unreplied", "--dry-run", netns=netns)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == UNREPLIED + 1
    assert all("[UNREPLIED]" in line for line in lines[:-1])
    assert lines[-1].startswith("dry run: %d entries would be deleted by " % UNREPLIED)
    proc = pyct("delete", "--unreplied", "--dry-run", "--json", netns=netns)
    d = json.loads(proc.stdout)
    assert d["dry_run"] is True and d["deleted"] == 0 and len(d["matched"]) == UNREPLIED
    assert _table(netns) == before


@pytest.mark.tool
def test_delete_unreplied_deletes_exactly_those(netns):
    for args in CLI_CREATES:
        netns.cli("-I", *args)
    populate(netns)
    survivors = sorted(line for line in _table(netns) if "[UNREPLIED]" not in line)
    n_unreplied = len(_table(netns)) - len(survivors)
    assert n_unreplied == UNREPLIED + 4  # the reference tool's udp, icmp, udp6 and SYN_SENT entries
    proc = pyct("delete", "--unreplied", netns=netns)
    assert proc.returncode == 0, proc.stderr
    m = re.fullmatch(r"deleted (\d+) entries by (flush|batch), (\d+) vanished.*\n", proc.stdout)
    assert m, proc.stdout
    assert int(m.group(1)) == n_unreplied and m.group(3) == "0"
    assert _table(netns) == survivors
    assert len(survivors) == REPLIED + 1


def test_delete_all(netns):
    populate(netns)
    proc = pyct("delete", "--all", "--json", netns=netns)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deleted"] == UNREPLIED + REPLIED
    with conntrack.Conntrack(netns.name) as ct:
        assert ct.count() == 0


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.tool
@pytest.mark.parametrize("command", ["delete", "list", "count"])
def test_bad_port_is_a_usage_error_naming_the_option(netns, command):
    populate(netns)
    before = _table(netns)
    proc = pyct(command, "--dport", "70000", netns=netns)
    assert proc.returncode == 2
    err = one_line_error(proc)
    assert "--dport" in err and "70000" in err
    assert proc.stdout == ""
    assert _table(netns) == before


@pytest.mark.parametrize("args, option", [
    (["--src", "10.0.0.0/8", "--family", "ipv6"], "--src"),
    (["--state", "NOPE"], "--state"),
    (["--reply-dst", "not-an-address"], "--reply-dst"),
    (["--mark", "0x10/0x1ffffffff"], "--mark"),
    (["--zone", "x"], "--zone"),
    (["--sport", "9-1"], "--sport"),
])
def test_bad_values_name_their_option(netns, args, option):
    proc = pyct("count", *args, netns=netns)
    assert proc.returncode == 2
    assert option in one_line_error(proc)


@pytest.mark.root
def test_missing_namespace_is_a_one_line_error():
    proc = pyct("count", "--netns", "ctpy-does-not-exist")
    assert proc.returncode == 1
    assert "ctpy-does-not-exist" in one_line_error(proc)


@pytest.mark.setpriv
def test_no_permission_exits_1_naming_cap_net_admin(netns):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # root without CAP_NET_ADMIN (kept: CAP_SYS_ADMIN, to enter the namespace)
    proc = subprocess.run(
        ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
         sys.executable, "-m", "conntrack", "count", "--unreplied", "--netns", netns.name],
        capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "CAP_NET_ADMIN" in one_line_error(proc)


# -- limits, set-max, health ---------------------------------------------------------------------


def test_limits_json(netns):
    populate(netns)
    proc = pyct("limits", "--json", netns=netns)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["max"] == int(HOST_MAX.read_text())
    assert d["count"] == UNREPLIED + REPLIED
    assert d["fill"] == pytest.approx(d["count"] / d["max"])
    assert d["buckets"] > 0 and d["timeouts"]["tcp_timeout_established"] > 0
    text = pyct("limits", netns=netns).stdout
    assert re.search(r"^nf_conntrack_max\s+%d " % d["max"], text, re.M)
    assert re.search(r"^nf_conntrack_count\s+%d " % d["count"], text, re.M)


def test_set_max_in_a_namespace_fails_clearly(netns):
    before = HOST_MAX.read_text()
    proc = pyct("set-max", str(int(before) + 1), netns=netns)
    assert proc.returncode == 1
    assert "read-only" in one_line_error(proc)
    assert proc.stdout == ""
    assert HOST_MAX.read_text() == before


@pytest.mark.parametrize("value", ["0", "-5", "abc", str(2**31)])
def test_set_max_bad_values(netns, value):
    before = HOST_MAX.read_text()
    proc = pyct("set-max", value, netns=netns)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert HOST_MAX.read_text() == before


def test_set_max_below_the_count_needs_force(netns):
    populate(netns)
    proc = pyct("set-max", "5", netns=netns)
    assert proc.returncode == 2 and "--force" in one_line_error(proc)
    proc = pyct("set-max", "5", "--force", netns=netns)  # gets past the check; the kernel refuses here
    assert proc.returncode == 1 and "read-only" in one_line_error(proc)


def test_health_ok_on_an_empty_namespace(netns):
    proc = pyct("health", "--interval", "0.2", netns=netns)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: 0.0% full (0 of ")
    d = json.loads(pyct("health", "--json", "--interval", "0", netns=netns).stdout)
    assert d["verdict"] == "ok" and d["count"] == 0


def test_health_errors_exit_3(netns):
    proc = pyct("health", "--interval", "-1", netns=netns)
    assert proc.returncode == 3 and "--interval" in one_line_error(proc)
    proc = pyct("health", "--netns", "ctpy-does-not-exist")
    assert proc.returncode == 3
    assert pyct("health", "--bogus").returncode == 3
    for bad in ("inf", "nan"):  # time.sleep() cannot take these: a usage error, not a traceback
        proc = pyct("health", "--interval", bad, netns=netns)
        assert proc.returncode == 3 and "--interval" in one_line_error(proc)


def test_help_and_version():
    proc = pyct("--help")
    assert proc.returncode == 0 and "delete" in proc.stdout and "health" in proc.stdout
    proc = pyct("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("pyconntrack %s" % conntrack.__version__)
    assert pyct().returncode == 2
    proc = pyct("delete", "--help")
    assert proc.returncode == 0 and "--dry-run" in proc.stdout and "--reply-src" in proc.stdout
