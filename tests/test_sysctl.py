"""conntrack.sysctl: typed reads of the real host and of namespaces, validated writes.

Writes go to a temporary tree (see ``fake_root``) except in one test that
raises the host's nf_conntrack_max and restores it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import warnings
from pathlib import Path
from typing import Dict, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conntrack
from conntrack import sysctl
from conntrack.errors import (
    NotLoaded,
    PersistOverridden,
    ProxmoxFirewallWarning,
    ReadOnlyInNamespace,
)

PROC = Path("/proc/sys/net/netfilter")
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def host_value(name: str) -> int:
    return int((PROC / name).read_text())


@pytest.fixture
def fake_root(tmp_path: Path) -> Iterator[Path]:
    """A stand-in for / with copies of this host's nf_conntrack sysctls, hashsize and meminfo.

    A fake, because the kernel's /proc/sys cannot be pointed at a temporary
    directory and tests must not change the host; the values are the host's
    real ones (or the kernel's defaults when nf_conntrack is not loaded).
    """
    d = tmp_path / "proc/sys/net/netfilter"
    d.mkdir(parents=True)
    values: Dict[str, str] = {}
    if PROC.joinpath("nf_conntrack_max").exists():
        for p in PROC.glob("nf_conntrack_*"):
            if p.is_file():
                values[p.name] = p.read_text()
    else:
        values = {"nf_conntrack_%s" % k: "%d\n" % v for k, v in {
            "max": 262144, "count": 0, "buckets": 262144, "expect_max": 4096, "acct": 0, "timestamp": 0,
            "events": 2, "checksum": 1, "tcp_loose": 1, "tcp_be_liberal": 0, "udp_timeout": 30,
            "tcp_timeout_established": 432000}.items()}
    for name, text in values.items():
        (d / name).write_text(text)
    params = tmp_path / "sys/module/nf_conntrack/parameters"
    params.mkdir(parents=True)
    (params / "hashsize").write_text(values["nf_conntrack_buckets"])
    (tmp_path / "proc/meminfo").write_text(Path("/proc/meminfo").read_text())
    yield tmp_path


def digest(root: Path) -> Dict[str, str]:
    """Content hash of every file under *root* (to prove what was not touched)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- reading the real host --------------------------------------------------------------


@pytest.mark.kernel
def test_read_matches_the_host_proc_files():
    s = sysctl.read()
    assert s.max == host_value("nf_conntrack_max")
    assert s.buckets == host_value("nf_conntrack_buckets")
    assert s.expect_max == host_value("nf_conntrack_expect_max")
    assert s.acct is bool(host_value("nf_conntrack_acct"))
    assert s.tcp_loose is bool(host_value("nf_conntrack_tcp_loose"))
    assert s.events is bool(host_value("nf_conntrack_events"))
    expected = {p.name[len("nf_conntrack_"):]: int(p.read_text())
                for p in PROC.glob("nf_conntrack_*timeout*")}
    assert dict(s.timeouts) == expected
    assert all(isinstance(v, int) for v in s.timeouts.values())
    assert s.hashsize == int(Path("/sys/module/nf_conntrack/parameters/hashsize").read_text())
    assert s.hashsize == s.buckets  # two views of one value
    with pytest.raises(TypeError):
        s.timeouts["udp_timeout"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        s.max = 1  # type: ignore[misc]


def test_reading_changes_nothing(fake_root):
    before = digest(fake_root)
    sysctl.read(str(fake_root))
    sysctl.usage(str(fake_root))
    sysctl.recommend_max(str(fake_root))
    assert digest(fake_root) == before


def test_usage_in_a_namespace_counts_its_own_entries(ns_ct):
    flows = [conntrack.Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=2000 + i, dport=53, timeout=600)
             for i in range(50)]
    assert ns_ct.create_many(flows) == 50
    u = sysctl.usage(netns=ns_ct.ns.name)
    assert u.count == 50 == ns_ct.count()
    assert u.max == ns_ct.limit() == sysctl.read().max  # the global limit caps the namespace
    assert u.fill == pytest.approx(50 / u.max)
    assert sysctl.read(netns=ns_ct.ns.name).count == 50


def test_reading_a_namespace_keeps_the_calling_thread_home(netns):
    own = os.stat("/proc/thread-self/ns/net").st_ino
    netns.exec("sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=77")
    host = sysctl.read().timeouts["udp_timeout"]
    assert sysctl.read(netns=netns.name).timeouts["udp_timeout"] == 77
    assert sysctl.read(netns=netns.path).timeouts["udp_timeout"] == 77
    assert os.stat("/proc/thread-self/ns/net").st_ino == own
    assert sysctl.read().timeouts["udp_timeout"] == host
    assert sysctl.is_init_netns() is True
    assert sysctl.is_init_netns(netns.name) is False


def test_set_timeout_in_a_namespace_leaves_the_host_alone(netns):
    host = sysctl.read().timeouts["udp_timeout_stream"]
    new = host + 7
    assert sysctl.set_timeout("udp_timeout_stream", new, netns=netns.name) == host
    assert netns.exec("cat", str(PROC / "nf_conntrack_udp_timeout_stream")).stdout.strip() == str(new)
    assert sysctl.read().timeouts["udp_timeout_stream"] == host


@pytest.mark.kernel
def test_a_missing_namespace_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="not found"):
        sysctl.read(netns="ctpy-no-such-namespace")


# -- namespaces: read-only globals ------------------------------------------------------------


def test_max_and_hashsize_are_read_only_in_a_namespace(netns):
    before = sysctl.read()
    with pytest.raises(ReadOnlyInNamespace) as info:
        sysctl.set_max(before.max + 1, netns=netns.name)
    assert isinstance(info.value, PermissionError)
    assert "nf_conntrack_max" in str(info.value) and "namespace" in str(info.value)
    with pytest.raises(ReadOnlyInNamespace, match="hashsize"):
        sysctl.set_hashsize(before.buckets * 2, netns=netns.name)
    after = sysctl.read()
    assert (after.max, after.buckets) == (before.max, before.buckets)


def test_set_max_from_a_thread_living_in_a_namespace(netns):
    """The plain call, made by a process that lives in the namespace (no netns argument)."""
    p = netns.python("""
        import sys
        from conntrack import sysctl
        from conntrack.errors import ReadOnlyInNamespace
        try:
            sysctl.set_max(sysctl.read().max + 1)
        except ReadOnlyInNamespace as exc:
            print("refused", isinstance(exc, PermissionError), exc.errno)
    """)
    out, err = p.communicate(input="", timeout=30)
    assert out.split() == ["refused", "True", str(errno.EACCES)], err


def test_persist_is_refused_for_a_namespace(netns):
    with pytest.raises(ValueError, match="persist"):
        sysctl.set_timeout("udp_timeout", 30, persist=True, netns=netns.name)


def test_netns_only_with_the_real_root(fake_root, netns):
    with pytest.raises(ValueError, match="netns"):
        sysctl.read(str(fake_root), netns=netns.name)


# -- the one test that changes the host ---------------------------------------------------


@pytest.mark.kernel
def test_raise_and_restore_the_host_max():
    original = sysctl.read().max
    raised = min(original + 4096, sysctl.MAX_LIMIT)
    try:
        assert sysctl.set_max(raised) == original
        assert host_value("nf_conntrack_max") == raised
        with conntrack.Conntrack() as ct:
            assert ct.limit() == raised  # the kernel's own view over netlink
    finally:
        current = sysctl.read().max
        if current == raised:
            sysctl.set_max(original)
        else:  # another process changed it meanwhile: its value stays
            pytest.fail("nf_conntrack_max was changed to %d by another process during the test" % current)
    assert host_value("nf_conntrack_max") == original


# -- writes to a temporary tree ---------------------------------------------------------------


def test_set_max_writes_the_file_and_returns_the_old_value(fake_root):
    root = str(fake_root)
    old = sysctl.read(root).max
    assert sysctl.set_max(old + 1, root=root) == old
    assert sysctl.read(root).max == old + 1
    assert not (fake_root / "etc/sysctl.d").exists()  # no persist, no drop-in


def test_persist_creates_then_updates_only_our_keys(fake_root):
    root = str(fake_root)
    dropins = fake_root / "etc/sysctl.d"
    dropins.mkdir(parents=True)
    (dropins / "10-other.conf").write_text("net.netfilter.nf_conntrack_max = 5\n")
    other = digest(dropins)
    sysctl.set_max(300000, persist=True, root=root)
    path = dropins / sysctl.DEFAULT_DROPIN
    assert "net.netfilter.nf_conntrack_max = 300000" in path.read_text().splitlines()
    # a human edits our file: comments and foreign keys must survive our next write
    path.write_text("# mine\nnet.core.somaxconn = 4096\n-net/netfilter/nf_conntrack_max=1\n"
                    "net.netfilter.nf_conntrack_max = 2\n")
    os.chmod(path, 0o640)
    sysctl.set_max(400000, persist=True, root=root)
    sysctl.set_timeout("tcp_timeout_established", 7200, persist=True, root=root)
    assert path.read_text().splitlines() == [
        "# mine",
        "net.core.somaxconn = 4096",
        "-net.netfilter.nf_conntrack_max = 400000",
        "net.netfilter.nf_conntrack_tcp_timeout_established = 7200",
    ]
    assert (path.stat().st_mode & 0o777) == 0o640
    assert digest(dropins)["10-other.conf"] == other["10-other.conf"]
    assert sorted(p.name for p in dropins.iterdir()) == ["10-other.conf", "90-conntrack.conf"]  # no temp files
    assert sysctl.read(root).timeouts["tcp_timeout_established"] == 7200


def test_persist_with_another_name_and_bad_names(fake_root):
    root = str(fake_root)
    sysctl.set_acct(True, persist=True, dropin="50-ct-acct.conf", root=root)
    assert (fake_root / "etc/sysctl.d/50-ct-acct.conf").read_text().endswith("net.netfilter.nf_conntrack_acct = 1\n")
    for bad in ("../x.conf", "x.txt", ".hidden.conf", "a/b.conf", ""):
        with pytest.raises(ValueError, match="dropin"):
            sysctl.set_acct(True, persist=True, dropin=bad, root=root)
    (fake_root / "etc/sysctl.d/77-link.conf").symlink_to("/etc/hostname")
    with pytest.raises(ValueError, match="symlink"):
        sysctl.set_acct(True, persist=True, dropin="77-link.conf", root=root)


def test_persist_warns_when_a_later_file_wins(fake_root):
    root = str(fake_root)
    dropins = fake_root / "etc/sysctl.d"
    dropins.mkdir(parents=True)
    (dropins / "99-sysctl.conf").write_text("net.netfilter.nf_conntrack_max=65536\n")
    with pytest.warns(PersistOverridden, match="99-sysctl.conf"):
        sysctl.set_max(500000, persist=True, root=root)
    assert (dropins / "99-sysctl.conf").read_text() == "net.netfilter.nf_conntrack_max=65536\n"


def test_set_hashsize_and_flags(fake_root):
    root = str(fake_root)
    old = sysctl.read(root).hashsize
    assert sysctl.set_hashsize(131072, persist=True, root=root) == old
    assert sysctl.read(root).hashsize == 131072
    assert "net.netfilter.nf_conntrack_buckets = 131072" in (fake_root / "etc/sysctl.d/90-conntrack.conf").read_text()
    previous = sysctl.read(root).timestamp
    assert sysctl.set_timestamp(True, root=root) is previous
    assert sysctl.read(root).timestamp is True
    assert sysctl.set_acct(False, root=root) is not None and sysctl.read(root).acct is False
    with pytest.raises(TypeError, match="acct"):
        sysctl.set_acct(1, root=root)  # type: ignore[arg-type]


def test_read_only_file_in_a_namespace_tree(fake_root):
    """nf_conntrack_max at mode 0444 is what a non-initial namespace shows; root cannot write it either."""
    os.chmod(fake_root / "proc/sys/net/netfilter/nf_conntrack_max", 0o444)
    with pytest.raises(ReadOnlyInNamespace, match="host"):
        sysctl.set_max(1000, root=str(fake_root))


def test_not_loaded(tmp_path):
    with pytest.raises(NotLoaded, match="modprobe nf_conntrack"):
        sysctl.read(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        sysctl.set_max(1000, root=str(tmp_path))
    assert not (tmp_path / "proc/sys/net/netfilter/nf_conntrack_max").exists()  # never created


# -- validation (property tests) -----------------------------------------------------------


@HYP
@given(st.one_of(st.integers(max_value=0), st.integers(min_value=sysctl.MAX_LIMIT + 1)))
def test_max_out_of_range_is_refused_before_any_write(fake_root, n):
    before = digest(fake_root)
    with pytest.raises(ValueError, match="^max: "):
        sysctl.set_max(n, persist=True, root=str(fake_root))
    assert digest(fake_root) == before


@HYP
@given(st.integers(min_value=1, max_value=sysctl.MAX_LIMIT))
def test_max_in_range_is_written_as_given(fake_root, n):
    sysctl.set_max(n, root=str(fake_root))
    assert sysctl.read(str(fake_root)).max == n


@HYP
@given(st.one_of(st.integers(max_value=0), st.integers(min_value=sysctl.MAX_BUCKETS + 1)))
def test_hashsize_out_of_range(fake_root, n):
    with pytest.raises(ValueError, match="^hashsize: "):
        sysctl.set_hashsize(n, root=str(fake_root))


@HYP
@given(st.sampled_from(["udp_timeout", "nf_conntrack_tcp_timeout_established",
                        "net.netfilter.nf_conntrack_icmp_timeout"]),
       st.one_of(st.integers(max_value=0), st.integers(min_value=sysctl.MAX_TIMEOUT + 1)))
def test_timeout_out_of_range_names_the_field(fake_root, name, seconds):
    with pytest.raises(ValueError, match="^nf_conntrack_[a-z_]*timeout[a-z_]*: "):
        sysctl.set_timeout(name, seconds, root=str(fake_root))


@HYP
@given(st.text(max_size=30).filter(lambda s: "timeout" not in s))
def test_names_that_are_not_timeouts_are_refused(fake_root, name):
    with pytest.raises(ValueError, match="^name: "):
        sysctl.set_timeout(name, 30, root=str(fake_root))


@HYP
@given(st.one_of(st.booleans(), st.floats(), st.text(max_size=5), st.none()))
def test_max_wants_an_int(fake_root, value):
    with pytest.raises(TypeError, match="^max: "):
        sysctl.set_max(value, root=str(fake_root))  # type: ignore[arg-type]


def test_unknown_timeout_name_is_not_created(fake_root):
    with pytest.raises(FileNotFoundError):
        sysctl.set_timeout("bogus_timeout", 30, root=str(fake_root))
    assert not (fake_root / "proc/sys/net/netfilter/nf_conntrack_bogus_timeout").exists()


# -- Proxmox ------------------------------------------------------------------------------------


@pytest.fixture
def pve_root(fake_root: Path) -> Path:
    """A fake Proxmox VE host: /etc/pve with this node's host.fw (no real Proxmox here)."""
    (fake_root / "etc").mkdir(exist_ok=True)
    (fake_root / "etc/hostname").write_text("pve1\n")
    node = fake_root / "etc/pve/nodes/pve1"
    node.mkdir(parents=True)
    (node / "host.fw").write_text("[OPTIONS]\n\nnf_conntrack_max: 262144\nenable: 1\n")
    return fake_root


def test_raising_max_on_proxmox_warns_and_leaves_pve_alone(pve_root):
    root = str(pve_root)
    assert sysctl.is_proxmox(root)
    pve = digest(pve_root / "etc/pve")
    current = sysctl.read(root).max
    with pytest.warns(ProxmoxFirewallWarning) as caught:
        sysctl.set_max(current + 1000, persist=True, root=root)
    text = str(caught[0].message)
    assert "pve-firewall" in text and "/etc/pve/nodes/pve1/host.fw" in text
    assert "nf_conntrack_max: %d" % (current + 1000) in text and "262144" in text
    assert digest(pve_root / "etc/pve") == pve
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sysctl.set_max(current, root=root)  # lowering: no warning


def test_no_proxmox_warning_elsewhere(fake_root):
    assert not sysctl.is_proxmox(str(fake_root))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sysctl.set_max(sysctl.read(str(fake_root)).max * 2, root=str(fake_root))


# -- recommendation -------------------------------------------------------------------------------


def test_recommend_max_from_a_known_machine(fake_root):
    (fake_root / "proc/meminfo").write_text("MemTotal:        8388608 kB\nMemFree: 1 kB\n")
    (fake_root / "proc/sys/net/netfilter/nf_conntrack_count").write_text("0\n")
    r = sysctl.recommend_max(str(fake_root))
    mem = 8 * 2**30
    assert r.mem_total == mem
    assert r.value == (mem // 50) // 320 // 1024 * 1024  # 2% of RAM at 320 bytes an entry
    assert r.buckets == r.value and r.memory_bytes == r.value * 320
    assert "320 bytes" in r.explanation and "8192 MiB" in r.explanation and str(r.value) in r.explanation
    small = sysctl.recommend_max(str(fake_root), memory_fraction=0.001)
    assert small.value == 262144  # never below the kernel's own default for 8 GiB


@pytest.mark.kernel
def test_recommend_max_on_this_host():
    r = sysctl.recommend_max()
    mem = sysctl.mem_total()
    assert r.value >= sysctl.kernel_default(mem)[1]
    assert r.value >= 2 * sysctl.read().count
    assert str(r) == r.explanation and "MemTotal" in r.explanation
