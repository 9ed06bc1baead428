"""conntrack: the Linux connection tracking table from Python.

Typed flows from the kernel's nf_conntrack table over ctnetlink, with the
hot paths (dump parsing, filtering, batched deletes) in C: a netlink socket
and a one-pass parser of its own over libmnl, and libnetfilter_conntrack to
build requests and the event socket's filter::

    import conntrack

    with conntrack.Conntrack() as ct:
        print(ct.count(), "of", conntrack.sysctl.read().max)
        for flow in ct.dump(conntrack.Filter(unreplied=True)):
            print(flow)
"""

from __future__ import annotations

from typing import Any

from ._binding import nfct_version
from .enums import DCCPState, Family, Proto, SCTPState, Status, TCPState
from .errors import (
    BulkDeleteError,
    ConntrackError,
    ConntrackOSError,
    ConntrackWarning,
    DeleteInterrupted,
    DumpInterrupted,
    Exists,
    HandleClosed,
    InvalidType,
    InvalidValue,
    MatchesEverything,
    MissingDependency,
    NoPermission,
    NotANamespace,
    NotFound,
    NotLoaded,
    PersistOverridden,
    ProxmoxFirewallWarning,
    ReadOnlyInNamespace,
    TimedOut,
    Unsupported,
    WrongOwner,
)
from .events import Event, EventStream, EventType
from .features import KernelFeatures
from .filter import Filter, Plan
from .flow import Counters, Flow, FlowTuple
from .table import Conntrack, DeleteResult, Summary
from .top import Top

_PYPROJECT_VERSION = "0.1.0"
"""pyproject.toml's version: ``__version__`` when the package is not installed (a checkout)."""


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pyconntrack")
    except metadata.PackageNotFoundError:
        return _PYPROJECT_VERSION


__version__ = _package_version()

__all__ = [
    "health",
    "sysctl",
    "BulkDeleteError",
    "Conntrack",
    "ConntrackError",
    "ConntrackOSError",
    "ConntrackWarning",
    "Counters",
    "DCCPState",
    "DeleteInterrupted",
    "DeleteResult",
    "DumpInterrupted",
    "Event",
    "EventStream",
    "EventType",
    "Exists",
    "Family",
    "Filter",
    "Flow",
    "FlowTuple",
    "HandleClosed",
    "InvalidType",
    "InvalidValue",
    "KernelFeatures",
    "MatchesEverything",
    "MissingDependency",
    "NoPermission",
    "NotANamespace",
    "NotFound",
    "NotLoaded",
    "PersistOverridden",
    "Plan",
    "Proto",
    "ProxmoxFirewallWarning",
    "ReadOnlyInNamespace",
    "SCTPState",
    "Status",
    "Summary",
    "TCPState",
    "TimedOut",
    "Top",
    "Unsupported",
    "WrongOwner",
    "nfct_version",
]


def __getattr__(name: str) -> Any:
    """``conntrack.health`` and ``conntrack.sysctl`` are imported on first use:
    a script that only dumps or deletes starts faster without them."""
    if name in ("health", "sysctl"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
