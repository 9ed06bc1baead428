"""nf_conntrack's limits and timeouts: typed reads, validated writes.

Values live in ``/proc/sys/net/netfilter/nf_conntrack_*`` (one set per
network namespace, except the global ``nf_conntrack_max`` and
``nf_conntrack_buckets``, which are read-only outside the host namespace)
and in ``/sys/module/nf_conntrack/parameters/hashsize`` (global)::

    from conntrack import sysctl

    s = sysctl.read()
    print(s.count, "of", s.max, "entries;", s.timeouts["tcp_timeout_established"], "s for ESTABLISHED")
    sysctl.set_max(524288, persist=True)     # now, and at boot via /etc/sysctl.d/90-conntrack.conf
    print(sysctl.recommend_max())

Every function takes ``root`` (default ``"/"``) so that a test or an image
builder can point it at another tree; reading never writes.  ``netns``
(a name under /run/netns, a path or an open fd) reads or writes another
network namespace's values from a short-lived thread that enters it; the
calling thread never changes namespace.

This is the module to import; it re-exports the parts that live in private
modules: the drop-in and modules-load.d writer (``conntrack._persist``),
Proxmox VE detection (``conntrack._proxmox``), the recommendation
(``conntrack._recommend``) and the kernel's bounds (``conntrack._limits``).
"""

from __future__ import annotations

import errno
import os
import types
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, TypeVar

from . import _limits, _persist, _proxmox, _recommend
from ._check import check_int
from ._limits import INT_MAX as INT_MAX  # re-exported, as every name below that this module does not use
from ._limits import TIMEOUT_RE as _TIMEOUT_RE
from ._limits import fill
from ._limits import path as _path
from ._persist import DROPIN_DIR as DROPIN_DIR
from ._persist import MODULES_LOAD as MODULES_LOAD
from ._persist import check_dropin as _check_dropin
from ._persist import load_at_boot, module_is_builtin, write_dropin
from ._proxmox import is_proxmox
from ._recommend import Recommendation, kernel_default, mem_total, recommend_max
from .errors import NotLoaded, ReadOnlyInNamespace, from_errno
from .netns import NetnsSpec
from .netns import run_in as in_netns

_T = TypeVar("_T")

SYSCTL_DIR = "proc/sys/net/netfilter"
"""Where the sysctls live, relative to ``root``."""
HASHSIZE_PATH = "sys/module/nf_conntrack/parameters/hashsize"
"""The module parameter behind ``nf_conntrack_buckets``, relative to ``root``."""

# The public constants of the private modules, documented where users read them.
DEFAULT_DROPIN = _persist.DEFAULT_DROPIN
"""The drop-in this module owns unless told another name."""
BYTES_PER_ENTRY = _recommend.BYTES_PER_ENTRY
"""Approximate kernel memory per entry: ``struct nf_conn`` from its slab plus its share of the hash table."""
MAX_LIMIT = _limits.MAX_LIMIT
"""``nf_conntrack_max`` is an int the kernel bounds to 0..INT_MAX (0 means no limit, refused here)."""
MAX_BUCKETS = _limits.MAX_BUCKETS
"""The kernel refuses a hash table of more than UINT_MAX / sizeof(pointer) buckets."""
MAX_TIMEOUT = _limits.MAX_TIMEOUT
"""Timeouts are stored in jiffies (seconds * HZ) in an int; this bound holds for the lowest HZ (100).
With a higher HZ the kernel may refuse less; that refusal is reported as ValueError too."""

# Global values that only the initial network namespace may change.
_NS_READONLY = frozenset(("nf_conntrack_max", "nf_conntrack_buckets", "nf_conntrack_expect_max"))
_FLAGS = ("acct", "timestamp", "events", "checksum", "tcp_loose", "tcp_be_liberal")


# -- results ------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """nf_conntrack's sysctls of one network namespace, as read."""

    max: int
    """nf_conntrack_max: the table's size limit (global; caps every namespace's table)."""
    count: int
    """nf_conntrack_count: entries in this namespace's table now."""
    buckets: int
    """nf_conntrack_buckets: hash table size (global)."""
    expect_max: int
    """nf_conntrack_expect_max: limit of the expectation table."""
    hashsize: Optional[int]
    """The module parameter ``hashsize`` (same as ``buckets``); None when it cannot be read."""
    timeouts: Mapping[str, int] = field(hash=False)
    """Every nf_conntrack_*timeout* value in seconds, by name without the ``nf_conntrack_`` prefix
    (for example ``"tcp_timeout_established"``)."""
    acct: bool
    """nf_conntrack_acct: per-flow packet and byte counters."""
    timestamp: bool
    """nf_conntrack_timestamp: per-flow start (and stop) times."""
    events: bool
    """nf_conntrack_events is not 0 (1 = always, 2 = only while someone listens)."""
    checksum: bool
    """nf_conntrack_checksum: verify layer-4 checksums."""
    tcp_loose: bool
    """nf_conntrack_tcp_loose: pick up TCP connections already established."""
    tcp_be_liberal: bool
    """nf_conntrack_tcp_be_liberal: only mark out-of-window RSTs as INVALID."""
    raw: Mapping[str, int] = field(hash=False, repr=False)
    """Every integer nf_conntrack_* value found, by its full name."""

    @property
    def fill(self) -> float:
        """count / max (0.0 when the limit is 0, meaning none)."""
        return fill(self.count, self.max)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready values (:ref:`json`), what ``pyconntrack limits --json`` prints: the named
        values (``raw`` left out), ``fill``, ``free`` and ``memory_full_bytes`` (the kernel memory
        a full table takes, at :data:`BYTES_PER_ENTRY`)."""
        return {
            "max": self.max, "count": self.count, "fill": self.fill, "free": max(self.max - self.count, 0),
            "buckets": self.buckets, "hashsize": self.hashsize, "expect_max": self.expect_max,
            "memory_full_bytes": self.max * BYTES_PER_ENTRY,
            "timeouts": dict(self.timeouts),
            **{flag: getattr(self, flag) for flag in _FLAGS},
        }


@dataclass(frozen=True)
class Usage:
    """How full a namespace's table is."""

    count: int
    """Entries now."""
    max: int
    """The limit (nf_conntrack_max)."""

    @property
    def fill(self) -> float:
        """count / max, 0.0..1.0 (0.0 when the limit is 0, meaning none)."""
        return fill(self.count, self.max)

    @property
    def free(self) -> int:
        """Entries left before the kernel starts dropping new flows."""
        return max(self.max - self.count, 0)

    def __str__(self) -> str:
        return "%d of %d entries (%.1f%%)" % (self.count, self.max, 100 * self.fill)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready values (:ref:`json`): ``count``, ``max``, ``fill``, ``free``."""
        return {"count": self.count, "max": self.max, "fill": self.fill, "free": self.free}


# -- paths and namespaces -------------------------------------------------------


def _check_root_netns(root: str, netns: NetnsSpec) -> None:
    if netns is not None and os.path.realpath(os.fspath(root)) != "/":
        raise ValueError("netns: only with root='/' (a namespace's values exist only in the live /proc)")


# -- reading ----------------------------------------------------------------------


def _read_int(path: str) -> int:
    with open(path, "rb") as f:
        text = f.read().split()
    if len(text) != 1:
        raise ValueError("%s: expected one integer, got %r" % (path, b" ".join(text)))
    return int(text[0])


def _read_tree(root: str) -> Settings:
    d = _path(root, SYSCTL_DIR)
    if not os.path.exists(os.path.join(d, "nf_conntrack_max")):
        raise NotLoaded.missing(os.path.join(d, "nf_conntrack_max"))
    raw: Dict[str, int] = {}
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        if not name.startswith("nf_conntrack_") or not os.path.isfile(path):
            continue
        try:
            raw[name] = _read_int(path)
        except ValueError:
            continue  # not a single integer: not ours to type
        except FileNotFoundError:
            continue  # went away (module unloading)
    for key in ("max", "count", "buckets", "expect_max") + _FLAGS:
        if "nf_conntrack_" + key not in raw:
            raise NotLoaded.missing(os.path.join(d, "nf_conntrack_" + key))
    timeouts = {name[len("nf_conntrack_"):]: value for name, value in raw.items() if _TIMEOUT_RE.fullmatch(name)}
    try:
        hashsize: Optional[int] = _read_int(_path(root, HASHSIZE_PATH))
    except (OSError, ValueError):
        hashsize = None  # root-only file (0600), or the module is built in without parameters
    flags = {key: bool(raw["nf_conntrack_" + key]) for key in _FLAGS}
    return Settings(
        max=raw["nf_conntrack_max"],
        count=raw["nf_conntrack_count"],
        buckets=raw["nf_conntrack_buckets"],
        expect_max=raw["nf_conntrack_expect_max"],
        hashsize=hashsize,
        timeouts=types.MappingProxyType(timeouts),
        raw=types.MappingProxyType(raw),
        **flags,
    )


def read(root: str = "/", *, netns: NetnsSpec = None) -> Settings:
    """Every nf_conntrack sysctl of this (or *netns*'s) network namespace.

    Raises :class:`conntrack.errors.NotLoaded` when nf_conntrack is not loaded.
    """
    _check_root_netns(root, netns)
    return in_netns(netns, lambda: _read_tree(root))


def usage(root: str = "/", *, netns: NetnsSpec = None) -> Usage:
    """Entries and limit of this (or *netns*'s) table, from /proc/sys."""
    _check_root_netns(root, netns)

    def get() -> Usage:
        d = _path(root, SYSCTL_DIR)
        try:
            return Usage(_read_int(os.path.join(d, "nf_conntrack_count")),
                         _read_int(os.path.join(d, "nf_conntrack_max")))
        except FileNotFoundError as exc:
            raise NotLoaded.missing(exc.filename or d) from None

    return in_netns(netns, get)


def is_init_netns(netns: NetnsSpec = None) -> bool:
    """True when *netns* (default: this thread's) is the host's initial network namespace.

    Judged by the kernel's own rule: only there is nf_conntrack_max writable.
    """

    def check() -> bool:
        path = "/proc/sys/net/netfilter/nf_conntrack_max"
        try:
            return bool(os.stat(path).st_mode & 0o200)
        except FileNotFoundError:
            raise NotLoaded.missing(path) from None

    return in_netns(netns, check)


# -- validation -------------------------------------------------------------------------


def _check_count(value: object, field: str, lo: int, hi: int) -> int:
    return check_int(value, field, lo, hi, strings=False, kernel=True)


def _check_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError("%s: expected True or False, got %r" % (field, value))
    return value


def timeout_name(name: str) -> str:
    """The full sysctl name of a timeout given as ``tcp_timeout_established``,
    ``nf_conntrack_tcp_timeout_established`` or ``net.netfilter.nf_conntrack_...``."""
    if not isinstance(name, str):
        raise TypeError("name: expected a timeout name, got %r" % (name,))
    n = name.strip()
    for prefix in ("net.netfilter.", "net/netfilter/"):
        if n.startswith(prefix):
            n = n[len(prefix):]
    if not n.startswith("nf_conntrack_"):
        n = "nf_conntrack_" + n
    if not _TIMEOUT_RE.fullmatch(n):
        raise ValueError("name: %r is not an nf_conntrack timeout (e.g. 'tcp_timeout_established')" % (name,))
    return n


# -- writing -----------------------------------------------------------------------------


def _readonly(name: str, path: str) -> ReadOnlyInNamespace:
    why = ("it caps every namespace's table" if name == "nf_conntrack_max"
           else "one hash table serves every namespace")
    exc = ReadOnlyInNamespace(
        errno.EACCES,
        "%s is read-only in this network namespace: the kernel keeps one global value, set from the "
        "host's initial namespace, and %s" % (name, why),
    )
    exc.filename = path
    return exc


_CAP_NET_ADMIN = 12


def _has_net_admin() -> bool:
    """Whether this thread has CAP_NET_ADMIN in its effective set (True when it cannot tell)."""
    try:
        with open("/proc/thread-self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


def _write_file(path: str, name: str, field: str, value: int) -> int:
    """Write *value* to an existing sysctl or parameter file; return the previous value."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotLoaded.missing(path) from None
    if not st.st_mode & 0o222:
        if name in _NS_READONLY or name == "hashsize":
            raise _readonly(name, path)
        raise from_errno(errno.EACCES, "%s is read-only" % path, path)
    previous = _read_int(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)  # never O_CREAT
        try:
            os.write(fd, b"%d\n" % value)
        finally:
            os.close(fd)
    except OSError as exc:
        err = exc.errno or errno.EIO
        if err == errno.EINVAL:
            raise ValueError("%s: the kernel refused %d (%s)" % (field, value, path)) from None
        if err in (errno.EACCES, errno.EPERM) and not _has_net_admin():
            # the cause is the caller's privilege, wherever the value lives
            raise from_errno(err, "cannot write %s: it needs CAP_NET_ADMIN (root)" % path, path) from None
        if err == errno.EOPNOTSUPP or (err in (errno.EACCES, errno.EPERM) and name in _NS_READONLY):
            raise _readonly(name, path) from None
        if err == errno.ENOENT:
            raise NotLoaded.missing(path) from None
        raise from_errno(err, "cannot write %s" % path, path) from None
    return previous


def _set(name: str, value: int, field: str, root: str, netns: NetnsSpec, persist: bool, dropin: str) -> int:
    """Set one sysctl now (and at boot when *persist*); return its previous value."""
    _check_root_netns(root, netns)
    if persist:
        if netns is not None:
            raise ValueError("persist: sysctl.d applies to the host namespace at boot; not with netns")
        _check_dropin(dropin)
    path = _path(root, SYSCTL_DIR, name)
    previous = in_netns(netns, lambda: _write_file(path, name, field, value))
    if persist:
        write_dropin({"net.netfilter." + name: value}, root=root, dropin=dropin)
        load_at_boot(root)
    return previous


def set_max(n: int, *, persist: bool = False, dropin: str = DEFAULT_DROPIN, root: str = "/",
            netns: NetnsSpec = None) -> int:
    """Set nf_conntrack_max (1..INT_MAX); return the previous value.

    Only the host's initial namespace may: elsewhere this raises
    :class:`conntrack.errors.ReadOnlyInNamespace`.  On a Proxmox VE host,
    raising the limit warns with :class:`conntrack.errors.ProxmoxFirewallWarning`.
    """
    _check_count(n, "max", 1, MAX_LIMIT)
    previous = _set("nf_conntrack_max", n, "max", root, netns, persist, dropin)
    if n > previous:
        _proxmox.warn(root, "nf_conntrack_max", n)
    return previous


def set_hashsize(n: int, *, persist: bool = False, dropin: str = DEFAULT_DROPIN, root: str = "/",
                 netns: NetnsSpec = None) -> int:
    """Resize the hash table (the module's ``hashsize``); return the previous size.

    The kernel rehashes every entry, so large tables pause briefly.  With
    ``persist=True`` the drop-in sets ``net.netfilter.nf_conntrack_buckets``
    (the same value, writable from the host namespace); it applies at boot
    only if nf_conntrack is loaded by then, so a modular nf_conntrack is also
    listed in /etc/modules-load.d (see :func:`load_at_boot`).
    """
    _check_count(n, "hashsize", 1, MAX_BUCKETS)
    _check_root_netns(root, netns)
    if persist:
        if netns is not None:
            raise ValueError("persist: sysctl.d applies to the host namespace at boot; not with netns")
        _check_dropin(dropin)
    path = _path(root, HASHSIZE_PATH)
    previous = in_netns(netns, lambda: _write_file(path, "hashsize", "hashsize", n))
    if persist:
        write_dropin({"net.netfilter.nf_conntrack_buckets": n}, root=root, dropin=dropin)
        load_at_boot(root)
    return previous


def set_timeout(name: str, seconds: int, *, persist: bool = False, dropin: str = DEFAULT_DROPIN,
                root: str = "/", netns: NetnsSpec = None) -> int:
    """Set one nf_conntrack_*timeout* value in seconds; return the previous value.

    *name* as in :attr:`Settings.timeouts` (``"udp_timeout"``) or the full
    sysctl name.  Timeouts are per namespace.
    """
    full = timeout_name(name)
    _check_count(seconds, full, 1, MAX_TIMEOUT)
    previous = _set(full, seconds, full, root, netns, persist, dropin)
    if full in _proxmox.PVE_KEYS and seconds != previous:
        _proxmox.warn(root, full, seconds)
    return previous


def set_acct(on: bool, *, persist: bool = False, dropin: str = DEFAULT_DROPIN, root: str = "/",
             netns: NetnsSpec = None) -> bool:
    """Turn per-flow packet/byte accounting on or off; return the previous setting."""
    _check_bool(on, "acct")
    return bool(_set("nf_conntrack_acct", int(on), "acct", root, netns, persist, dropin))


def set_timestamp(on: bool, *, persist: bool = False, dropin: str = DEFAULT_DROPIN, root: str = "/",
                  netns: NetnsSpec = None) -> bool:
    """Turn per-flow timestamps on or off; return the previous setting."""
    _check_bool(on, "timestamp")
    return bool(_set("nf_conntrack_timestamp", int(on), "timestamp", root, netns, persist, dropin))


__all__ = [
    "BYTES_PER_ENTRY",
    "DEFAULT_DROPIN",
    "MAX_BUCKETS",
    "MAX_LIMIT",
    "MAX_TIMEOUT",
    "Recommendation",
    "Settings",
    "Usage",
    "in_netns",
    "is_init_netns",
    "is_proxmox",
    "kernel_default",
    "load_at_boot",
    "mem_total",
    "module_is_builtin",
    "read",
    "recommend_max",
    "set_acct",
    "set_hashsize",
    "set_max",
    "set_timeout",
    "set_timestamp",
    "timeout_name",
    "usage",
    "write_dropin",
]
