"""What the running kernel can filter for us: probed once per process, else from the release.

ctnetlink grew kernel-side filters over the years, and distributions
backport them (RHEL), so the release number is only a fallback.  The probe
asks the kernel itself: in a scratch network namespace of its own (so
nothing the caller can see is written), it creates two entries and sends
one dump request per filter.  A kernel that honours the filter returns
only the matching entry; one that ignores the attribute returns both; one
that rejects it answers with an error.  Either way the library then
filters in C instead.

Flush filters are never probed by flushing: a flush whose filter the kernel
ignored would empty the table.  Since 5.8 the kernel parses the filter of a
dump and of a flush with the same code (``ctnetlink_alloc_filter``,
``ctnetlink_needs_filter``), and mark (5.8), status (5.15) and zone (6.8)
reached both in the same commits, so those flush filters follow their dump
probes.  ``CTA_FILTER`` on a flush was refused with EOPNOTSUPP until 6.12,
and a flush by family needs 6.12: those two stay with the release number.

The features are the kernel's, the same in every namespace, so one probe
serves every handle of the process.  ``KernelFeatures.decided`` says how
each flag was decided.  The environment variable ``CONNTRACK_FEATURES``
(``probe``, ``version``, ``oldest``, ``none``) overrides the default for
handles created without ``features=`` (the tests use ``oldest`` to run the
fallback paths on a new kernel).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

#: Environment variable naming the default features: probe (default), version, oldest, none.
ENV = "CONNTRACK_FEATURES"


def kernel_version(release: Optional[str] = None) -> Tuple[int, int]:
    """(major, minor) of the running kernel, from ``uname -r``."""
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@dataclass(frozen=True)
class KernelFeatures:
    """Kernel-side filters the library may use."""

    dump_mark: bool = False
    """Dump filtered by mark/mask (CTA_MARK, CTA_MARK_MASK)."""
    dump_status: bool = False
    """Dump filtered by status/mask (CTA_STATUS_MASK, 5.15)."""
    dump_zone: bool = False
    """Dump filtered by zone (CTA_ZONE on dump, 6.8)."""
    dump_tuple: bool = False
    """Dump filtered by exact tuple parts (CTA_FILTER, 5.8)."""
    flush_family: bool = False
    """Flush of one family honoured (nfgenmsg version 1); conservative: 6.12."""
    flush_mark: bool = False
    """Flush filtered by mark/mask."""
    flush_status: bool = False
    """Flush filtered by status/mask (5.15)."""
    flush_zone: bool = False
    """Flush filtered by zone (6.8)."""
    flush_tuple: bool = False
    """Flush filtered by exact tuple parts (CTA_FILTER on delete, 6.12)."""
    events_bpf: bool = False
    """Event streams filtered in the kernel by a socket filter (classic BPF with
    SKF_AD_NLATTR_NEST, 2.6.29; built by libnetfilter_conntrack's nfct_filter)."""
    tuple_ipv6_addresses: bool = False
    """IPv6 addresses in CTA_FILTER.  Off on every kernel detected so far:
    ctnetlink_filter_match_tuple inverts the IPv6 address comparison (seen
    on 6.18: a filter for one address returns every other one), which on a
    flush would delete the wrong entries.  IPv6 addresses are checked in C."""
    decided: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)
    """How each flag was decided: ``"probe"`` (the kernel answered a dump
    request), ``"probe+history"`` (a flush flag following its dump probe),
    ``"version X.Y"`` (the release table), ``"forced"`` (given by the caller)."""

    @classmethod
    def detect(cls, release: Optional[str] = None) -> KernelFeatures:
        """Features of the running kernel: probed (once per process, see the module), or from the
        release table when the probe cannot run (e.g. no CAP_SYS_ADMIN for a namespace).  With
        *release* (e.g. ``"6.1.0"``), the table's answer for that release."""
        if release is not None:
            return cls.from_version(release)
        return probe()

    @classmethod
    def from_version(cls, release: Optional[str] = None) -> KernelFeatures:
        """What a mainline kernel of that release (default: the running one) supports."""
        v = kernel_version(release)
        how = "version %d.%d" % v
        flags = _table(v)
        return cls(**flags, decided={name: how for name in _flag_names()})

    @classmethod
    def none(cls) -> KernelFeatures:
        """No kernel-side filtering at all: the portable path."""
        return cls(decided={name: "forced" for name in _flag_names()})

    @classmethod
    def oldest(cls) -> KernelFeatures:
        """The oldest kernels' profile: a dump filtered by mark, nothing else (no CTA_FILTER, no
        status or zone filter, no filtered flush).  The tests run the fallbacks with it."""
        return cls(dump_mark=True, decided={name: "forced" for name in _flag_names()})

    @classmethod
    def default(cls) -> KernelFeatures:
        """What a handle uses without ``features=``: :meth:`detect`, unless ``CONNTRACK_FEATURES``
        says ``version`` (the release table), ``oldest`` or ``none``."""
        choice = os.environ.get(ENV, "").strip().lower() or "probe"
        if choice == "probe":
            return cls.detect()
        if choice == "version":
            return cls.from_version()
        if choice == "oldest":
            return cls.oldest()
        if choice == "none":
            return cls.none()
        raise ValueError("%s=%r: expected probe, version, oldest or none" % (ENV, choice))

    @property
    def source(self) -> str:
        """In short, how the flags were decided: ``probed``, ``forced`` or the release table's ``version X.Y``."""
        hows = set(self.decided.values())
        if any(h.startswith("probe") for h in hows):
            return "probed"
        return ", ".join(sorted(hows)) or "given"

    def __str__(self) -> str:
        on = [f.name for f in fields(self) if f.name != "decided" and getattr(self, f.name)]
        return "KernelFeatures(%s; %s)" % (", ".join(on) or "none", self.source)


def _flag_names() -> List[str]:
    return [f.name for f in fields(KernelFeatures) if f.name != "decided"]


def _table(v: Tuple[int, int]) -> Dict[str, bool]:
    """The release table: mainline versions that brought each filter."""
    return dict(
        dump_mark=v >= (3, 0),
        dump_status=v >= (5, 15),
        dump_zone=v >= (6, 8),
        dump_tuple=v >= (5, 8),
        flush_family=v >= (6, 12),
        flush_mark=v >= (5, 8),
        flush_status=v >= (5, 15),
        flush_zone=v >= (6, 8),
        flush_tuple=v >= (6, 12),
        events_bpf=v >= (2, 6),
    )


_lock = threading.Lock()
_probed: Dict[str, KernelFeatures] = {}  # by kernel release: one probe per process


def probe() -> KernelFeatures:
    """Ask the kernel which dump filters it honours (once per process); see the module.

    When the probe cannot run (no CAP_SYS_ADMIN for a scratch namespace, say), the release
    table decides, and ``decided`` says why.
    """
    release = os.uname().release
    with _lock:
        if release not in _probed:
            v = kernel_version(release)
            try:
                _probed[release] = _derive(_probe_dumps(), v)
            except OSError as exc:
                why = "version %d.%d (no probe: %s)" % (v + (errno.errorcode.get(exc.errno or 0, str(exc)),))
                _probed[release] = KernelFeatures(**_table(v), decided={name: why for name in _flag_names()})
        return _probed[release]


def _derive(dump: Dict[str, bool], v: Tuple[int, int]) -> KernelFeatures:
    """Flush flags from the dump probes and the kernel's history (see the module)."""
    table = _table(v)
    flags = dict(dump)
    flags["flush_mark"] = dump["dump_mark"] and dump["dump_tuple"]  # 5.8: one filter parser for both
    flags["flush_status"] = dump["dump_status"]
    flags["flush_zone"] = dump["dump_zone"]
    flags["flush_tuple"] = dump["dump_tuple"] and table["flush_tuple"]  # EOPNOTSUPP before 6.12
    flags["flush_family"] = table["flush_family"]
    flags["events_bpf"] = table["events_bpf"]
    how = "version %d.%d" % v
    decided = {name: "probe" for name in dump}
    decided.update(flush_mark="probe+history", flush_status="probe+history", flush_zone="probe+history",
                   flush_tuple="probe+%s" % how, flush_family=how, tuple_ipv6_addresses="off (kernel bug)",
                   events_bpf=how)
    return KernelFeatures(**flags, decided=decided)


def _probe_dumps() -> Dict[str, bool]:
    """The dump probes, run in a thread that moves into a new network namespace of its own."""
    box: Dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = _probe_here()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=work, name="conntrack-probe")  # never reused: it ends in the scratch namespace
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    result: Dict[str, bool] = box["value"]
    return result


def _probe_here() -> Dict[str, bool]:
    from . import _binding, _dump
    from .enums import Status
    from .filter import Filter
    from .flow import Flow, flow_at
    from .plan import CheckPart
    from .table import Conntrack

    _binding.unshare_netns()  # this thread only; the namespace goes with its last socket
    everything = KernelFeatures(dump_mark=True, dump_status=True, dump_zone=True, dump_tuple=True)
    # One entry matches every filter below; each other one differs in one attribute only, so it
    # comes back exactly when the kernel ignores that attribute.
    base: Dict[str, Any] = dict(src="10.0.0.1", dst="10.0.0.2", dport=9, timeout=60)
    entries = [
        Flow(proto="udp", sport=1, mark=1, zone=7, **base),
        Flow(proto="udp", sport=2, mark=2, zone=7, **base),
        Flow(proto="udp", sport=3, mark=1, zone=7, status=Status.SEEN_REPLY, **base),
        Flow(proto="udp", sport=4, mark=1, **base),
        Flow(proto="tcp", sport=5, mark=1, zone=7, state="ESTABLISHED", **base),
    ]
    parts: Dict[str, Tuple[Dict[str, Any], int]] = {"dump_mark": (dict(mark=1), 2), "dump_status": (dict(unreplied=True), 3),
             "dump_zone": (dict(zone=7), 4), "dump_tuple": (dict(family="ipv4", proto="udp"), 5)}
    # the probe's dumps go through a socket of its own: the kernel's part alone, no C check
    with Conntrack(features=KernelFeatures.none()) as ct, contextlib.closing(_binding.Socket()) as sock:

        def returned(**kw: Any) -> Set[int]:
            plan = Filter(**kw).compile(everything)
            seen: Set[int] = set()
            for batch in _dump.batches(sock.dump(plan.kernel, CheckPart()), prefetch=False):
                seen.update(flow_at(batch, i).orig.sport or 0 for i in range(batch.n))
            return seen

        ct.create_many(entries)
        everyone: Dict[str, Any] = {}
        for kw, _ in parts.values():
            everyone.update(kw)
        try:  # one request for all four (a dump walks the host's whole table: keep them few)
            seen = returned(**everyone)
            if 1 in seen:
                return {name: other not in seen for name, (_, other) in parts.items()}
        except OSError:  # some attribute was refused: ask one at a time to see which
            pass
        out: Dict[str, bool] = {}
        for name, (kw, other) in parts.items():
            try:
                seen = returned(**kw)
            except OSError:  # rejected (EINVAL, EOPNOTSUPP): not supported either
                out[name] = False
                continue
            out[name] = 1 in seen and other not in seen
        return out
