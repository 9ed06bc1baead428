"""conntrack.health: verdicts from real tables, including one filled until the kernel refuses."""

from __future__ import annotations

import datetime as dt
import errno
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

import conntrack
from conntrack import health, sysctl
from conntrack.health import Sample, Verdict

SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sys.stdin.readline()  # go
sent = failed = 0
codes = set()
for port in range(20000, 20000 + int(sys.argv[1])):
    try:
        s.sendto(b"x", ("127.0.0.1", port))
        sent += 1
    except OSError as exc:
        failed += 1
        codes.add(exc.errno)
print(sent, failed, ",".join(map(str, sorted(codes))), flush=True)
"""


def udp_flows(n: int, first_port: int = 1024) -> list:
    return [conntrack.Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=first_port + i, dport=53,
                           timeout=600) for i in range(n)]


def made(count: int, limit: int, **totals: int) -> Sample:
    """A sample built from numbers, to check the verdict rules themselves (no kernel involved)."""
    base: Dict[str, int] = {"drop": 0, "early_drop": 0, "insert_failed": 0}
    base.update(totals)
    return Sample(time.monotonic(), time.time(), count, limit, base, "netlink", 1, True)


# -- the rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("count, verdict", [(0, "ok"), (899, "ok"), (900, "warning"), (949, "warning"),
                                            (950, "critical"), (1000, "critical")])
def test_fill_thresholds(count, verdict):
    h = health.judge(made(count, 1000))
    assert h.verdict == Verdict(verdict) and h.fill == count / 1000
    assert h.rates is None and "no previous sample" in str(h)


@pytest.mark.parametrize("counter, verdict", [("drop", "critical"), ("early_drop", "critical"),
                                              ("insert_failed", "warning")])
def test_losses_between_samples(counter, verdict):
    before = made(10, 1000)
    after = Sample(before.monotonic + 2.0, before.wall + 2.0, 10, 1000,
                   {"drop": 0, "early_drop": 0, "insert_failed": 0, counter: 6}, "netlink", 1, True)
    h = health.judge(after, before)
    assert h.verdict == Verdict(verdict)
    assert h.deltas is not None and h.deltas[counter] == 6
    assert h.rates is not None and h.rates[counter] == pytest.approx(3.0)
    assert "%s +6" % counter in str(h)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6))
def test_verdict_never_improves_as_the_table_fills(a, b, limit):
    lo, hi = sorted((min(a, limit), min(b, limit)))
    order = [Verdict.ok, Verdict.warning, Verdict.critical]
    assert order.index(health.judge(made(lo, limit)).verdict) <= order.index(health.judge(made(hi, limit)).verdict)


# -- the kernel log ---------------------------------------------------------------------------


def test_kernel_log_parsing(tmp_path: Path):
    """A saved log in /dev/kmsg's record format: the kernel cannot be made to log these lines on demand."""
    boot = time.time() - time.monotonic()
    now_us = int(time.monotonic() * 1e6)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/kmsg").write_text(
        "4,10,%d,-;nf_conntrack: table full, dropping packet\n" % (now_us - 60_000_000)
        + " SUBSYSTEM=net\n"
        + "4,11,%d,-;nf_conntrack: table full in netns 4026532000, dropping packet\n" % (now_us - 1_000_000)
        + "6,12,%d,-;eth0: link up\n" % now_us
    )
    lines = health.table_full_messages(root=str(tmp_path))
    assert [m.netns_inode for m in lines] == [None, 4026532000]
    assert [m.seq for m in lines] == [10, 11]
    assert [m.seq for m in health.table_full_messages(root=str(tmp_path), after_seq=10)] == [11]
    assert lines[1].time == pytest.approx(boot + now_us / 1e6 - 1, abs=0.5)
    recent = health.table_full_messages(since=time.time() - 10, root=str(tmp_path))
    assert [m.netns_inode for m in recent] == [4026532000]
    since = dt.datetime.now() - dt.timedelta(seconds=30)
    assert len(health.table_full_messages(since=since, root=str(tmp_path))) == 1


def test_the_real_kernel_log_is_readable(netns):
    lines = health.table_full_messages(since=time.time() - 3600)
    assert all("table full" in m.text for m in lines)


# -- real tables ------------------------------------------------------------------------------


def test_an_empty_namespace_is_ok(ns_ct):
    h = health.health(ns_ct, since=time.time())
    assert h.verdict is Verdict.ok and h.count == 0 and h.max == ns_ct.limit()
    assert h.sample.source == "netlink" and h.table_full == 0
    assert h.sample.netns_inode == os.stat(ns_ct.ns.path).st_ino and h.sample.init_netns is False
    again = health.health(ns_ct, previous=h)
    assert again.deltas == {"drop": 0, "early_drop": 0, "insert_failed": 0} and again.interval > 0
    assert health.as_dict(again)["verdict"] == "ok"


def test_the_procfs_fallback_agrees_with_netlink(ns_ct):
    ns_ct.ns.track()
    p = ns_ct.ns.python(SENDER, "20")
    out, err = p.communicate("go\n", timeout=30)
    assert out.split()[0] == "20", err
    netlink = health._sum(ns_ct.stats())
    procfs = health._sum(health.read_proc_stat(netns=ns_ct.ns.name))
    common = set(netlink) & set(procfs)
    assert {"drop", "early_drop", "insert_failed", "found", "invalid", "insert"} <= common
    assert {k: netlink[k] for k in common} == {k: procfs[k] for k in common}
    print(netlink, procfs)
    assert ns_ct.count() >= 20  # the real flows were tracked


def test_previous_sample_of_another_namespace_is_refused(ns_ct):
    with conntrack.Conntrack() as host:
        h = health.health(host)
    with pytest.raises(ValueError, match="another network namespace"):
        health.health(ns_ct, previous=h)


def test_fill_a_namespace_until_the_kernel_refuses(ns_ct):
    """Lower the host's global max (it caps every namespace), fill a namespace, watch it go critical."""
    ns = ns_ct.ns
    ns.track()
    sender = ns.python(SENDER, "50")  # started now, sends on "go": keeps the lowered-max window short
    limit = max(2000, sysctl.read().count + 1000)  # never below what the host table holds now
    wait_for_quiet_namespaces(ns.name, limit // 2)
    try:
        with host_max(limit):
            assert ns_ct.limit() == limit
            first = health.health(ns_ct)
            assert first.verdict is Verdict.ok

            with pytest.raises(OSError) as refused:
                ns_ct.create_many(udp_flows(limit + 500))
            assert refused.value.errno == errno.ENOMEM  # the kernel said: table full
            assert ns_ct.count() == limit

            full = health.health(ns_ct, previous=first)
            assert full.verdict is Verdict.critical and full.fill == 1.0
            assert full.table_full is not None  # the log was read (root)
            assert all(m.netns_inode == full.sample.netns_inode for m in full.log_lines)

            # Real packets for new flows now: each needs an entry the kernel cannot give.
            out, err = sender.communicate("go\n", timeout=30)
            after = health.health(ns_ct, previous=full)
            assert ns_ct.limit() == limit, "the global max changed under the test"
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    sent, failed = (int(x) for x in out.split()[:2])
    print(full, after, out, sep="\n")
    assert after.verdict is Verdict.critical
    assert after.deltas is not None
    assert after.deltas["drop"] == failed > 0  # every refused flow is a dropped packet
    assert after.deltas["early_drop"] == sent  # the rest got in by evicting an unreplied entry
    assert after.rates is not None and after.rates["drop"] > 0
    # the log window is exact: records between the two samples only
    assert all(full.sample.kmsg_seq < m.seq <= after.sample.kmsg_seq for m in after.log_lines)
    assert all(first.sample.kmsg_seq < m.seq <= full.sample.kmsg_seq for m in full.log_lines)


def wait_for_quiet_namespaces(ours: str, threshold: int, patience: float = 60.0) -> None:
    """The global max caps every namespace: do not lower it under another one holding many entries
    (a benchmark filling a million, say).  Wait for them a while, else skip."""
    deadline = time.monotonic() + patience
    while True:
        busy = {}
        for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else ():
            if name == ours:
                continue
            try:
                n = sysctl.usage(netns=name).count
            except OSError:
                continue
            if n >= threshold:
                busy[name] = n
        if not busy:
            return
        if time.monotonic() > deadline:
            pytest.skip("other namespaces hold many entries %r; lowering the global nf_conntrack_max "
                        "would make their inserts fail" % busy)
        time.sleep(1.0)


@contextmanager
def host_max(value: int) -> Iterator[int]:
    """Set the host's nf_conntrack_max for a block; restore it after, even on failure.

    If another process changed it meanwhile, its value is left alone and the test fails.
    """
    original = sysctl.read().max
    sysctl.set_max(value)
    try:
        yield original
    finally:
        current = sysctl.read().max
        if current == value:
            sysctl.set_max(original)
        else:
            pytest.fail("nf_conntrack_max was changed to %d by another process during the test; left as is"
                        % current)
