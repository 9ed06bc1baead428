"""KernelFeatures: the probe asks the running kernel; the release table is the fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import conntrack
from conntrack import KernelFeatures, features
from conntrack.netns import run_in

ROOT = Path(__file__).resolve().parent.parent
DUMP_FLAGS = ("dump_mark", "dump_status", "dump_zone", "dump_tuple")


def fresh_probe() -> KernelFeatures:
    features._probed.clear()  # the process's cache: probe again
    return features.probe()


def test_the_probe_says_how_each_flag_was_decided(netns):
    f = fresh_probe()
    assert {f.decided[name] for name in DUMP_FLAGS} == {"probe"}
    assert f.decided["flush_status"] == "probe+history" and f.decided["flush_family"].startswith("version ")
    assert set(f.decided) == set(features._flag_names())
    assert f.source == "probed" and str(f).endswith("; probed)")
    assert features.probe() is f  # once per process


def test_the_probe_agrees_with_the_release_table_on_a_mainline_kernel(netns):
    """Debian's kernels are mainline plus fixes: what the kernel answers is what its release says.
    (A distribution kernel with backports, RHEL's, would differ here, and the probe would be right.)"""
    assert fresh_probe() == KernelFeatures.from_version()


def test_the_probe_leaves_the_callers_namespace_alone(ns_ct):
    def probe_from_inside():  # a thread inside the test's namespace runs the probe
        return fresh_probe()

    f = run_in(ns_ct.ns.name, probe_from_inside)
    assert f.dump_mark and f.decided["dump_mark"] == "probe"
    assert ns_ct.count() == 0  # its five entries lived in a scratch namespace of its own


def test_without_cap_sys_admin_the_release_table_decides(netns):
    """No scratch namespace without CAP_SYS_ADMIN: the bounding set drops it for a child process."""
    code = ("from conntrack import KernelFeatures; f = KernelFeatures.detect(); "
            "print(f.source); print(f == KernelFeatures.from_version())")
    proc = subprocess.run(["setpriv", "--bounding-set", "-sys_admin", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=120, cwd=str(ROOT),
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    source, same = proc.stdout.split("\n")[:2]
    assert source == "version %d.%d (no probe: EPERM)" % features.kernel_version() and same == "True"


@pytest.mark.parametrize("choice, expected", [("oldest", KernelFeatures.oldest()), ("none", KernelFeatures.none()),
                                              ("version", KernelFeatures.from_version())])
def test_the_environment_variable_picks_the_default(ns_ct, monkeypatch, choice, expected):
    monkeypatch.setenv(features.ENV, choice)
    with conntrack.Conntrack(ns_ct.ns.name) as ct:
        assert ct.features == expected and ct.features.decided == expected.decided
    with conntrack.Conntrack(ns_ct.ns.name, features=KernelFeatures.from_version("5.10.0")) as ct:
        assert not ct.features.dump_status  # an explicit features= wins over the variable


def test_a_bad_environment_variable_is_a_clear_error(netns, monkeypatch):
    monkeypatch.setenv(features.ENV, "fastest")
    with pytest.raises(ValueError, match="CONNTRACK_FEATURES='fastest'"):
        conntrack.Conntrack(netns.name)


def test_the_oldest_profile_filters_only_by_mark():
    f = KernelFeatures.oldest()
    assert f.dump_mark and not any(getattr(f, n) for n in features._flag_names() if n != "dump_mark")
    assert f.source == "forced" and KernelFeatures.none().source == "forced"


@pytest.mark.parametrize("release, on", [
    ("5.10.0-32-amd64", {"dump_mark", "dump_tuple", "flush_mark"}),
    ("6.1.0-50-amd64", {"dump_mark", "dump_tuple", "flush_mark", "dump_status", "flush_status"}),
    ("6.12.117+deb13-amd64", {"dump_mark", "dump_tuple", "flush_mark", "dump_status", "flush_status",
                              "dump_zone", "flush_zone", "flush_tuple", "flush_family"}),
])
def test_the_release_table(release, on):
    f = KernelFeatures.detect(release)
    assert {n for n in features._flag_names() if getattr(f, n)} == on | {"events_bpf"}  # socket filters: 2.6.29
    assert set(f.decided.values()) == {"version %s" % ".".join(release.split(".")[:2])}
