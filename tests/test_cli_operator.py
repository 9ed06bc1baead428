"""The command line as an operator types it: global options anywhere, conntrack(8)'s spellings
(checked against conntrack(8) on the same namespace), stats, events, limits --recommend,
set-hashsize, set-timeout, progress on a terminal, clear --netns errors, a full table."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator, List

import pytest
from helpers import Netns

import conntrack
from conntrack import Filter, Flow, health, sysctl
from conntrack.table import insert_refused_text

CLI = [sys.executable, "-m", "conntrack"]


def run(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, **kw)


def _flows() -> List[Flow]:
    out = [Flow(proto="udp", src="10.0.0.%d" % (i + 1), dst="10.9.0.1", sport=1024 + i, dport=53, timeout=600,
                mark=i % 3) for i in range(12)]
    out += [Flow(proto="tcp", src="10.1.0.1", dst="10.9.0.2", sport=20000 + i, dport=443 if i % 2 else 80,
                 timeout=600, state="ESTABLISHED", status="SEEN_REPLY|ASSURED", zone=i % 2, mark=7)
            for i in range(8)]
    out += [Flow(proto="udp", src="2001:db8::%x" % (i + 1), dst="2001:db8::53", sport=5000 + i, dport=53,
                 timeout=600) for i in range(5)]
    return out


@pytest.fixture(scope="module")
def ns(shared_netns: Netns) -> Iterator[Netns]:
    with conntrack.Conntrack(shared_netns.name) as ct:
        assert ct.create_many(_flows()) == 25
    yield shared_netns


def _strip(lines: List[str]) -> List[str]:
    """conntrack -L lines without the timeout (it ticks between two listings)."""
    return sorted(re.sub(r"^((?:ipv[46]\s+\d+\s+)?\S+\s+\d+)\s+\d+ ", r"\1 ", line) for line in lines)


# -- global options anywhere -------------------------------------------------------------------


def test_netns_and_quiet_before_or_after_the_command(ns):
    for argv in (["--netns", ns.name, "count"], ["count", "--netns", ns.name],
                 ["--quiet", "count", "--netns", ns.name], ["--netns", ns.name, "count", "--quiet"],
                 ["--netns", "ctpy-elsewhere", "count", "--netns", ns.name]):  # the last one given wins
        r = run(*argv)
        assert (r.returncode, r.stdout) == (0, "25\n"), (argv, r.stderr)
    r = run("--netns", ns.name, "summary", "--json")
    assert json.loads(r.stdout)["total"] == 25


# -- conntrack(8)'s spellings, against conntrack(8) ---------------------------------------------


SELECTIONS = [
    [],
    ["-p", "udp"],
    ["-p", "tcp", "--dport", "443"],
    ["-s", "10.0.0.3"],
    ["-d", "10.9.0.2"],
    ["-p", "udp", "--sport", "1030"],
    ["-m", "7"],
    ["-u", "ASSURED"],
    ["-w", "1"],
    ["-f", "ipv6"],
    ["-f", "ipv4", "-p", "udp", "-m", "1"],
]


@pytest.mark.parametrize("sel", SELECTIONS, ids=lambda s: " ".join(s) or "all")
def test_list_selection_matches_conntrack8(ns, sel):
    ours = run("-L", "--netns", ns.name, *sel)
    assert ours.returncode == 0, ours.stderr
    theirs = ns.cli_lines("-L", *sel)
    assert _strip(ours.stdout.splitlines()) == _strip(theirs)
    assert theirs or sel == ["-w", "1"] or ours.stdout  # the selections are not all empty


def test_output_extended_matches_conntrack8(ns):
    ours = run("--netns", ns.name, "-L", "-o", "extended")
    assert _strip(ours.stdout.splitlines()) == _strip(ns.cli_lines("-L", "-o", "extended"))
    lines = [json.loads(line) for line in run("--netns", ns.name, "-L", "-o", "json", "-p", "tcp").stdout.splitlines()]
    assert len(lines) == 8 and all(d["proto"] == "tcp" for d in lines)


def test_count_and_stats_match_conntrack8(ns):
    assert run("-C", "--netns", ns.name).stdout.strip() == ns.cli("-C").stdout.strip() == "25"
    ours = run("-S", "--netns", ns.name)
    assert ours.returncode == 0, ours.stderr
    theirs = ns.cli("-S").stdout
    parse = lambda text: [dict(kv.split("=") for kv in line.split()) for line in text.splitlines()]  # noqa: E731
    assert parse(ours.stdout) == parse(theirs)  # an idle namespace: the counters stand still
    rows = json.loads(run("stats", "--json", "--netns", ns.name).stdout)
    assert [r["cpu"] for r in rows] == [int(r["cpu"]) for r in parse(theirs)]


def test_the_seed_recipes_run_with_pyconntrack(ns):
    """`conntrack -L` and `conntrack -L | grep UNREPLIED` from the operator's note."""
    ours = run("--netns", ns.name, "-L").stdout.splitlines()
    theirs = ns.cli_lines("-L")
    assert _strip(ours) == _strip(theirs)
    assert len([x for x in ours if "UNREPLIED" in x]) == len([x for x in theirs if "UNREPLIED" in x]) == 17


def test_delete_alias_deletes_what_conntrack8_would(netns):
    with conntrack.Conntrack(netns.name) as ct:
        assert ct.create_many(_flows()) == 25
    want = netns.cli_lines("-L", "-p", "udp", "-m", "1")
    dry = run("-D", "--netns", netns.name, "-p", "udp", "-m", "1", "--dry-run")
    assert _strip(dry.stdout.splitlines()[:-1]) == _strip(want) and len(want) == 4
    r = run("--netns", netns.name, "-D", "-p", "udp", "-m", "1")
    assert r.returncode == 0, r.stderr
    assert netns.cli_lines("-L", "-p", "udp", "-m", "1") == []
    assert netns.cli("-C").stdout.strip() == "21"
    r = run("--netns", netns.name, "-D")  # conntrack -D without a selection deletes all; we refuse
    assert r.returncode == 2 and "refusing" in r.stderr


# -- events -------------------------------------------------------------------------------------


def _lines_until(p: subprocess.Popen, want: int, make: Any, timeout: float = 60) -> List[str]:
    """Read p's stdout lines, calling make(i) until *want* lines came (the subscription starts late)."""
    assert p.stdout is not None
    fd = p.stdout.fileno()
    buf, i = b"", 0
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < want:
        assert time.monotonic() < deadline, "events seen: %r" % buf
        assert p.poll() is None, "events ended: %s" % (p.stderr.read() if p.stderr else "")
        make(i)
        i += 1
        if select.select([fd], [], [], 0.2)[0]:
            buf += os.read(fd, 65536)
    return buf.decode().splitlines()


def test_events_new_and_destroy(netns):
    ct = conntrack.Conntrack(netns.name)
    p = subprocess.Popen([*CLI, "events", "--netns", netns.name, "-e", "NEW", "-p", "udp", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def make(i: int) -> None:
            ct.create(Flow(proto="tcp", src="10.5.0.1", dst="10.5.0.2", sport=100 + i, dport=1, timeout=60))
            ct.create(Flow(proto="udp", src="10.5.0.1", dst="10.5.0.2", sport=100 + i, dport=53, timeout=60))
        lines = _lines_until(p, 1, make)
        events = [json.loads(line) for line in lines]
        assert all(e["type"] == "NEW" and e["proto"] == "udp" and e["orig"]["dport"] == 53 for e in events)
    finally:
        p.terminate()
        p.wait(10)
    p = subprocess.Popen([*CLI, "-E", "--netns", netns.name, "-e", "DESTROY"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def gone(i: int) -> None:
            f = Flow(proto="udp", src="10.6.0.1", dst="10.6.0.2", sport=1000 + i, dport=7, timeout=60)
            ct.create(f)
            ct.delete(f)
        lines = _lines_until(p, 1, gone)
        assert re.match(r"^\[DESTROY\] udp +17 .*src=10\.6\.0\.1 dst=10\.6\.0\.2 sport=\d+ dport=7 ", lines[0]), lines
    finally:
        p.terminate()
        p.wait(10)
        ct.close()
    r = run("events", "-e", "BOGUS")
    assert r.returncode == 2 and "-e: 'BOGUS'" in r.stderr


# -- limits --recommend, set-hashsize, set-timeout -------------------------------------------------


def test_limits_recommend():
    rec = sysctl.recommend_max()
    r = run("limits", "--recommend")
    assert r.returncode == 0, r.stderr
    assert "Recommended nf_conntrack_max: %d" % rec.value in r.stdout
    assert "set-max %d --persist" % rec.value in r.stdout and "set-hashsize %d --persist" % rec.buckets in r.stdout
    d = json.loads(run("limits", "--recommend", "--json").stdout)
    assert d["max"] == rec.value and d["buckets"] == rec.buckets


def test_set_timeout_in_a_namespace(netns):
    host = sysctl.read().timeouts["udp_timeout"]
    r = run("set-timeout", "udp_timeout", str(host + 11), "--netns", netns.name)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "nf_conntrack_udp_timeout: %d -> %d s\n" % (host, host + 11)
    assert sysctl.read(netns=netns.name).timeouts["udp_timeout"] == host + 11
    assert sysctl.read().timeouts["udp_timeout"] == host  # the host's is its own
    r = run("set-timeout", "bogus", "5", "--netns", netns.name)
    assert r.returncode == 2 and "not an nf_conntrack timeout" in r.stderr
    r = run("set-timeout", "udp_timeout", "0", "--netns", netns.name)
    assert r.returncode == 2 and "SECONDS" in r.stderr


def test_set_hashsize_raises_and_restores(netns):
    """Raise the host's hash size a little and put it back (never below what it was)."""
    before = sysctl.read().buckets
    try:
        r = run("set-hashsize", str(before + 1024))
        assert r.returncode == 0, r.stderr
        assert r.stdout == "nf_conntrack_buckets: %d -> %d\n" % (before, before + 1024)
        assert sysctl.read().buckets == before + 1024
    finally:
        sysctl.set_hashsize(before)
    r = run("set-hashsize", str(before + 1024), "--netns", netns.name)
    assert r.returncode == 1 and "read-only in this network namespace" in r.stderr
    assert sysctl.read().buckets == before


def test_persist_loads_a_modular_nf_conntrack_early(tmp_path):
    """sysctl.d applies net.netfilter.* only once nf_conntrack is loaded: with a loadable module,
    persisting also lists it in modules-load.d.  A fake root (this kernel has nf_conntrack built
    in, so a module's /sys/module/nf_conntrack/initstate cannot exist here)."""
    d = tmp_path / "proc/sys/net/netfilter"
    d.mkdir(parents=True)
    for name in ("nf_conntrack_max", "nf_conntrack_buckets", "nf_conntrack_udp_timeout"):
        (d / name).write_text("1000\n")
    params = tmp_path / "sys/module/nf_conntrack/parameters"
    params.mkdir(parents=True)
    (params / "hashsize").write_text("1000\n")
    root = str(tmp_path)
    assert sysctl.module_is_builtin(root)
    sysctl.set_max(2000, persist=True, root=root)
    assert not (tmp_path / sysctl.MODULES_LOAD).exists()  # built in: nothing to load
    (tmp_path / "sys/module/nf_conntrack/initstate").write_text("live\n")
    assert not sysctl.module_is_builtin(root)
    sysctl.set_timeout("udp_timeout", 60, persist=True, root=root)
    sysctl.set_hashsize(4096, persist=True, root=root)
    lines = (tmp_path / sysctl.MODULES_LOAD).read_text().splitlines()
    assert [x for x in lines if not x.startswith("#")] == ["nf_conntrack"]  # once, however often
    dropin = (tmp_path / "etc/sysctl.d" / sysctl.DEFAULT_DROPIN).read_text()
    assert "net.netfilter.nf_conntrack_buckets = 4096" in dropin and "nf_conntrack_udp_timeout = 60" in dropin


def test_persist_text_names_what_was_written():
    r = run("set-max", "--help")
    assert "--persist" in r.stdout
    r = run("set-hashsize", "--help")
    assert "modules" in r.stdout or "load nf_conntrack" in r.stdout


# -- progress on a terminal ---------------------------------------------------------------------


def _with_tty_stderr(*args: str) -> tuple:
    """Run the CLI with stdout to a file and stderr on a pseudo-terminal; (stdout, terminal text)."""
    master, slave = pty.openpty()
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen([*CLI, *args], stdout=out, stderr=slave, text=True)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError as exc:  # EIO: the child closed the terminal
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            seen += chunk
        p.wait(120)
        os.close(master)
        out.seek(0)
        return out.read(), seen.decode(errors="replace"), p.returncode


def test_progress_on_a_terminal_only(ns):
    text, tty, rc = _with_tty_stderr("list", "--netns", ns.name)
    assert rc == 0 and len(text.splitlines()) == 25
    assert "wrote 25 entries in" in tty
    text, tty, rc = _with_tty_stderr("list", "--netns", ns.name, "--quiet")
    assert rc == 0 and len(text.splitlines()) == 25 and tty == ""
    r = run("list", "--netns", ns.name)  # stderr is a pipe
    assert r.returncode == 0 and r.stderr == ""


def test_delete_progress_line(netns):
    with conntrack.Conntrack(netns.name) as ct:
        assert ct.create_many(Flow(proto="udp", src="10.%d.%d.1" % (i // 250, i % 250), dst="10.200.0.1",
                                   sport=1, dport=53, timeout=600) for i in range(20000)) == 20000
        text, tty, rc = _with_tty_stderr("delete", "--netns", netns.name, "-p", "udp", "--sport", "1")
        assert rc == 0 and text.startswith("deleted "), (text, tty)
        assert "\r\x1b[K" in tty  # the line was drawn (at least erased) on the terminal, and nothing else left
        assert ct.count() == 0


# -- --netns that is not a network namespace -------------------------------------------------------


def test_netns_errors_say_what_is_wrong(tmp_path):
    r = run("count", "--netns", "ctpy-no-such-ns")
    assert r.returncode == 1 and "no such network namespace" in r.stderr and "ip netns list" in r.stderr
    r = run("count", "--netns", str(tmp_path / "missing"))
    assert r.returncode == 1 and "no such network namespace" in r.stderr
    plain = tmp_path / "plain"
    plain.write_text("x")
    r = run("count", "--netns", str(plain))
    assert r.returncode == 1 and "not a network namespace" in r.stderr and "CAP_NET_ADMIN" not in r.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = run("count", "--netns", str(fifo))  # never opened: opening a FIFO would block
    assert r.returncode == 1 and "not a network namespace" in r.stderr
    r = run("count", "--netns", "/proc/self/ns/mnt")
    assert r.returncode == 1 and "a mount namespace, not a network namespace" in r.stderr
    r = run("list", "--netns", str(tmp_path))
    assert r.returncode == 1 and "a directory, not a network namespace" in r.stderr


# -- a full table ---------------------------------------------------------------------------------


def test_a_full_table_says_so_with_numbers(netns):
    """Fill one namespace up to the global nf_conntrack_max (never lowered) with ASSURED entries,
    which the kernel's early drop does not evict, then create one more."""
    limit = sysctl.read().max
    assured = dict(proto="tcp", dst="10.250.0.1", dport=443, timeout=600, state="ESTABLISHED",
                   status="SEEN_REPLY|ASSURED")
    with conntrack.Conntrack(netns.name) as ct:
        heavy = min(60000, limit // 2)  # one source opens the most

        def src(i: int) -> str:
            return "10.200.0.1" if i < heavy else "10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255)

        flows = (Flow(src=src(i), sport=1024 + i % 60000, **assured) for i in range(limit))
        try:
            ct.create_many(flows)
        except OSError as exc:  # full early: another test may lower the global limit for a moment
            assert exc.errno in (errno.ENOMEM, errno.ENOSPC), exc
        with pytest.raises(OSError) as info:
            for i in range(4096):  # top up to the limit, whatever it is now
                ct.create(Flow(src="10.251.%d.%d" % (i >> 8, i & 255), sport=1, **assured))
        exc = info.value
        msg = str(exc)
        if exc.errno == errno.ENOSPC:  # the bucket array is shared: other namespaces' entries lengthen chains
            assert "a hash chain is too long" in msg and "set-hashsize" in msg, msg
        else:
            assert exc.errno == errno.ENOMEM, msg
            m = re.search(r"the table is full: (\d+) of (\d+) entries \(nf_conntrack_max\)", msg)
            assert m and int(m.group(1)) >= int(m.group(2)) > 0, msg
            assert "pyconntrack set-max" in msg
        assert "chaintoolong" in msg and "insert_failed" in msg
        with pytest.raises(OSError, match="the table is full|a hash chain is too long") as info2:
            ct.create_many([Flow(src="10.252.0.1", sport=1, **assured)])
        assert info2.value.created == 0  # type: ignore[attr-defined]
        assert ct.count(Filter(src="10.252.0.1")) == 0
        h = health.health(ct)  # over the warning fill: the verdict names who fills the table
        assert h.verdict is health.Verdict.critical
        assert h.top_sources[0] == (ipaddress.IPv4Address("10.200.0.1"), heavy)
        assert "top sources: 10.200.0.1 %d" % heavy in str(h)
        r = run("health", "--netns", netns.name, "--interval", "0", "--json")
        assert r.returncode == 2 and json.loads(r.stdout)["top_sources"][0] == ["10.200.0.1", heavy]


def test_a_chain_too_long_says_so():
    """ENOSPC needs a bucket chain longer than the kernel's random limit (8..72): millions of entries
    on this host's hash table.  The message itself, from the numbers the kernel would give."""
    text = insert_refused_text(errno.ENOSPC, "create of x", 500000, 2000000,
                               {"chaintoolong": 12, "insert_failed": 3}, 65536)
    assert "a hash chain is too long" in text and "chaintoolong 12, insert_failed 3" in text
    assert "65536 buckets" in text and "set-hashsize" in text


def test_health_below_the_warning_fill_costs_no_dump(ns, monkeypatch):
    from conntrack import _binding
    started: List[int] = []
    real = _binding.Socket._start_dump
    monkeypatch.setattr(_binding.Socket, "_start_dump", lambda self, *a: started.append(1) or real(self, *a))
    with conntrack.Conntrack(ns.name) as ct:
        h = health.health(ct)
        assert h.fill < health.WARNING_FILL and h.top_sources == () and "top sources" not in str(h)
        assert started == []
        ct.top("src", 1)
        assert started == [1]  # the counter sees dumps
