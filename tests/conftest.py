"""Fixtures, capability skips (see helpers.CAPABILITIES) and the CI rule: in CI a skipped kernel test
(any test with a capability marker) is a failure."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from helpers import CAPABILITIES, Netns, missing, need

import conntrack

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
KERNEL_FIXTURES = {"netns", "ns_ct", "shared_netns"}


def pytest_configure(config: pytest.Config) -> None:
    for name in CAPABILITIES:
        if name not in ("kernel", "tool"):  # those two are declared in pyproject.toml
            config.addinivalue_line("markers", "%s: needs %s (skipped without it; a failure in CI)" % (name, name))


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    for item in items:
        if KERNEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kernel)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test whose capability markers name something missing here (before its fixtures)."""
    reason = missing(*[name for name in CAPABILITIES if item.get_closest_marker(name) is not None])
    if reason:
        pytest.skip(reason)


def _needs_capability(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(name) is not None for name in CAPABILITIES)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and _needs_capability(item):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = "kernel test skipped in CI (CI=true), which counts as a failure: %s" % reason


def _scratch_netns() -> Iterator[Netns]:
    need("kernel")
    ns = Netns()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh network namespace, deleted after the test."""
    yield from _scratch_netns()


@pytest.fixture
def ns_ct(netns: Netns) -> Iterator[conntrack.Conntrack]:
    """A Conntrack handle on a fresh namespace (``ns_ct.ns`` is the Netns)."""
    with conntrack.Conntrack(netns.name) as ct:
        ct.ns = netns  # type: ignore[attr-defined]
        yield ct


@pytest.fixture(scope="module")
def shared_netns() -> Iterator[Netns]:
    """One namespace for a whole module (hypothesis examples flush it)."""
    yield from _scratch_netns()
