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
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import tempfile
import types
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, TypeVar

from .errors import (
    ConntrackError,
    NotLoaded,
    PersistOverridden,
    ProxmoxFirewallWarning,
    ReadOnlyInNamespace,
    from_errno,
)
from .netns import NetnsSpec
from .netns import run_in as in_netns

_T = TypeVar("_T")

SYSCTL_DIR = "proc/sys/net/netfilter"
"""Where the sysctls live, relative to ``root``."""
HASHSIZE_PATH = "sys/module/nf_conntrack/parameters/hashsize"
"""The module parameter behind ``nf_conntrack_buckets``, relative to ``root``."""
DROPIN_DIR = "etc/sysctl.d"
"""Where ``persist=True`` writes, relative to ``root``."""
DEFAULT_DROPIN = "90-conntrack.conf"
"""The drop-in this module owns unless told another name."""

BYTES_PER_ENTRY = 320
"""Approximate kernel memory per entry: ``struct nf_conn`` from its slab plus its share of the hash table."""

INT_MAX = 2**31 - 1
MAX_LIMIT = INT_MAX
"""``nf_conntrack_max`` is an int the kernel bounds to 0..INT_MAX (0 means no limit, refused here)."""
MAX_BUCKETS = min(INT_MAX, (2**32 - 1) // 8)
"""The kernel refuses a hash table of more than UINT_MAX / sizeof(pointer) buckets."""
MAX_TIMEOUT = INT_MAX // 100
"""Timeouts are stored in jiffies (seconds * HZ) in an int; this bound holds for the lowest HZ (100).
With a higher HZ the kernel may refuse less; that refusal is reported as ValueError too."""

# Global values that only the initial network namespace may change.
_NS_READONLY = frozenset(("nf_conntrack_max", "nf_conntrack_buckets", "nf_conntrack_expect_max"))
_FLAGS = ("acct", "timestamp", "events", "checksum", "tcp_loose", "tcp_be_liberal")
_TIMEOUT_RE = re.compile(r"nf_conntrack_[a-z0-9_]*timeout[a-z0-9_]*")
_DROPIN_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*\.conf")
# pve-firewall writes these from the [OPTIONS] of /etc/pve/nodes/<node>/host.fw.
_PVE_KEYS = ("nf_conntrack_max", "nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_syn_recv")


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
        return self.count / self.max if self.max else 0.0


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
        return self.count / self.max if self.max else 0.0

    @property
    def free(self) -> int:
        """Entries left before the kernel starts dropping new flows."""
        return max(self.max - self.count, 0)

    def __str__(self) -> str:
        return "%d of %d entries (%.1f%%)" % (self.count, self.max, 100 * self.fill)


@dataclass(frozen=True)
class Recommendation:
    """A suggested ``nf_conntrack_max`` with the reasoning behind it."""

    value: int
    """The suggested nf_conntrack_max."""
    buckets: int
    """The suggested hash size (one bucket per entry keeps the average chain at 2)."""
    memory_bytes: int
    """Kernel memory a full table of ``value`` entries takes (approximately)."""
    mem_total: int
    """RAM the reasoning started from (MemTotal, bytes)."""
    explanation: str
    """The reasoning, one step a line."""

    def __str__(self) -> str:
        return self.explanation


# -- paths and namespaces -------------------------------------------------------


def _path(root: str, *parts: str) -> str:
    return os.path.join(os.fspath(root), *parts)


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


def _not_loaded(path: str) -> NotLoaded:
    exc = NotLoaded(
        errno.ENOENT,
        "%s is missing: nf_conntrack is not loaded (modprobe nf_conntrack) or this is not Linux" % path,
    )
    exc.filename = path
    return exc


def _read_tree(root: str) -> Settings:
    d = _path(root, SYSCTL_DIR)
    if not os.path.exists(os.path.join(d, "nf_conntrack_max")):
        raise _not_loaded(os.path.join(d, "nf_conntrack_max"))
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
            raise _not_loaded(os.path.join(d, "nf_conntrack_" + key))
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
            raise _not_loaded(exc.filename or d) from None

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
            raise _not_loaded(path) from None

    return in_netns(netns, check)


# -- validation -------------------------------------------------------------------------


def _check_count(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("%s: expected an int, got %r" % (field, value))
    if not lo <= value <= hi:
        raise ValueError("%s: %d is out of the kernel's range %d..%d" % (field, value, lo, hi))
    return value


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


def _check_dropin(dropin: str) -> str:
    if not isinstance(dropin, str) or not _DROPIN_RE.fullmatch(dropin) or dropin.startswith("."):
        raise ValueError("dropin: %r is not a file name ending in .conf (systemd-sysctl reads only *.conf)"
                         % (dropin,))
    return dropin


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
        raise _not_loaded(path) from None
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
            raise _not_loaded(path) from None
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
        _warn_proxmox(root, "nf_conntrack_max", n)
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
    if full in _PVE_KEYS and seconds != previous:
        _warn_proxmox(root, full, seconds)
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


# -- loading the module early -------------------------------------------------------------------

MODULES_LOAD = "etc/modules-load.d/nf_conntrack.conf"
"""Where :func:`load_at_boot` lists nf_conntrack for systemd-modules-load."""


def module_is_builtin(root: str = "/") -> bool:
    """True when nf_conntrack is built into the kernel (in /sys/module without an ``initstate``)."""
    d = _path(root, "sys/module/nf_conntrack")
    return os.path.isdir(d) and not os.path.exists(os.path.join(d, "initstate"))


def load_at_boot(root: str = "/") -> Optional[str]:
    """Make sure nf_conntrack is loaded before sysctl.d is applied at boot; return the file written.

    systemd-sysctl applies /etc/sysctl.d early (after systemd-modules-load);
    a ``net.netfilter.nf_conntrack_*`` key whose module is not loaded yet
    fails with "No such file or directory" and is skipped, so the setting
    is silently lost until a firewall rule loads the module later.  Listing
    the module in <root>/etc/modules-load.d makes it load first.  Returns
    None when nothing is needed (nf_conntrack is built into this kernel)
    or the file already lists it.
    """
    if module_is_builtin(root):
        return None
    path = _path(root, MODULES_LOAD)
    try:
        with open(path) as f:
            if any(line.split("#")[0].strip() == "nf_conntrack" for line in f):
                return None
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _atomic_write(path, "# written by pyconntrack: load nf_conntrack before sysctl.d applies its settings\n"
                  "nf_conntrack\n", 0o644)
    return path


# -- the drop-in ------------------------------------------------------------------------------


def _line_key(line: str) -> Optional[str]:
    """The key a sysctl.d line sets, in dotted form, or None for comments and blanks."""
    s = line.strip()
    if not s or s[0] in "#;":
        return None
    if s.startswith("-"):
        s = s[1:]
    key, sep, _ = s.partition("=")
    if not sep:
        return None
    key = key.strip()
    slash, dot = key.find("/"), key.find(".")
    if slash != -1 and (dot == -1 or slash < dot):
        key = key.replace("/", ".")
    return key


def _atomic_write(path: str, text: str, mode: int) -> None:
    d, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix="." + base + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# The keys a drop-in of ours may set, with the values the kernel takes.
_DROPIN_RANGES = {
    "nf_conntrack_max": (1, MAX_LIMIT),
    "nf_conntrack_buckets": (1, MAX_BUCKETS),
    "nf_conntrack_acct": (0, 1),
    "nf_conntrack_timestamp": (0, 1),
}


def _dropin_key(key: object) -> str:
    """*key* when it is one of the keys this module owns (dotted form)."""
    if not isinstance(key, str):
        raise TypeError("values: a sysctl key must be a str, got %r" % (key,))
    name = key[len("net.netfilter."):] if key.startswith("net.netfilter.") else ""
    if name not in _DROPIN_RANGES and not _TIMEOUT_RE.fullmatch(name):
        raise ValueError("values: %r is not a key this library writes (net.netfilter.nf_conntrack_max, "
                         "_buckets, _acct, _timestamp or an nf_conntrack_*timeout*)" % (key,))
    return key


def _dropin_value(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("values: %s: expected an int, got %r" % (key, value))
    name = key[len("net.netfilter."):]
    lo, hi = _DROPIN_RANGES.get(name, (1, MAX_TIMEOUT))
    if not lo <= value <= hi:
        raise ValueError("values: %s: %d is out of the kernel's range %d..%d" % (key, value, lo, hi))
    return value


def write_dropin(values: Mapping[str, int], *, root: str = "/", dropin: str = DEFAULT_DROPIN) -> str:
    """Set *values* (dotted sysctl keys) in our drop-in under <root>/etc/sysctl.d; return its path.

    Only keys this library owns (``net.netfilter.nf_conntrack_max``,
    ``_buckets``, ``_acct``, ``_timestamp`` and the ``nf_conntrack_*timeout*``
    keys) and ints in the kernel's range are accepted; anything else raises
    before a byte is written.

    Only our keys change: other lines, comments and keys of the file stay as
    they were, and no other file is touched.  The file is replaced
    atomically (temporary file + rename).  Warns with
    :class:`conntrack.errors.PersistOverridden` when a file applied later at
    boot sets the same key.
    """
    _check_dropin(dropin)
    if not isinstance(values, Mapping):
        raise TypeError("values: expected a mapping of sysctl keys to ints, got %r" % (values,))
    pending = {_dropin_key(k): _dropin_value(k, v) for k, v in values.items()}  # all checked before any write
    d = _path(root, DROPIN_DIR)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, dropin)
    if os.path.islink(path):
        raise ValueError("dropin: %s is a symlink (to a file shared with others); choose another name" % path)
    try:
        with open(path) as f:
            lines = f.read().splitlines()
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        lines = ["# nf_conntrack settings written by pyconntrack (conntrack.sysctl); one key per line."]
        mode = 0o644
    wanted = dict(pending)
    out: List[str] = []
    for line in lines:
        key = _line_key(line)
        if key is None or key not in wanted:
            out.append(line)
            continue
        if key in pending:  # first occurrence: update in place; later duplicates would override it
            prefix = "-" if line.strip().startswith("-") else ""
            out.append("%s%s = %d" % (prefix, key, pending.pop(key)))
    out.extend("%s = %d" % (k, v) for k, v in pending.items())
    _atomic_write(path, "\n".join(out) + "\n", mode)
    _warn_overrides(root, dropin, path, wanted)
    return path


def _warn_overrides(root: str, dropin: str, ours: str, keys: Mapping[str, int]) -> None:
    seen = {os.path.realpath(ours)}
    later: List[str] = []
    for sub in ("etc/sysctl.d", "run/sysctl.d", "usr/local/lib/sysctl.d", "usr/lib/sysctl.d", "lib/sysctl.d"):
        d = _path(root, sub)
        try:
            names = os.listdir(d)
        except OSError:
            continue
        later.extend(os.path.join(d, n) for n in sorted(names) if n.endswith(".conf") and n > dropin)
    later.append(_path(root, "etc/sysctl.conf"))  # `sysctl --system` reads it last
    for path in later:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            key = _line_key(line)
            if key in keys:
                warnings.warn(PersistOverridden(
                    "%s also sets %s and is applied after %s at boot, so its value wins"
                    % (path, key, ours)), stacklevel=4)


# -- Proxmox ---------------------------------------------------------------------------------


def is_proxmox(root: str = "/") -> bool:
    """True on a Proxmox VE host (it has /etc/pve)."""
    return os.path.isdir(_path(root, "etc/pve"))


def _pve_node(root: str) -> str:
    try:
        with open(_path(root, "etc/hostname")) as f:
            name = f.read().strip()
    except OSError:
        name = ""
    return (name or socket.gethostname()).split(".")[0]


def _pve_setting(path: str, key: str) -> Optional[str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        k, sep, v = line.partition(":")
        if sep and k.strip() == key:
            return v.strip()
    return None


def _warn_proxmox(root: str, name: str, value: int) -> None:
    """Tell the user where Proxmox keeps this value; never touch Proxmox's files."""
    if not is_proxmox(root):
        return
    node = _pve_node(root)
    fw = "/etc/pve/nodes/%s/host.fw" % node
    current = _pve_setting(_path(root, fw.lstrip("/")), name)
    now = " (it now says %s: %s)" % (name, current) if current is not None else ""
    warnings.warn(ProxmoxFirewallWarning(
        "this is a Proxmox VE host: pve-firewall restores %s from its own configuration, undoing this "
        "change; set it as `%s: %d` in the [OPTIONS] section of %s%s (Datacenter > Node > Firewall > "
        "Options in the web UI)" % (name, name, value, fw, now)), stacklevel=3)


# -- recommendation ---------------------------------------------------------------------------


def mem_total(root: str = "/") -> int:
    """MemTotal from <root>/proc/meminfo, in bytes."""
    path = _path(root, "proc/meminfo")
    with open(path) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                parts = line.split()
                return int(parts[1]) * (1024 if len(parts) > 2 and parts[2] == "kB" else 1)
    raise ConntrackError("%s has no MemTotal line" % path)


def kernel_default(mem: int) -> Tuple[int, int]:
    """(buckets, max) the kernel picks by itself for *mem* bytes of RAM (64-bit)."""
    buckets = mem // 16384 // 8
    if mem > 4 * 2**30:
        buckets = 262144
    elif mem > 2**30:
        buckets = 65536
    buckets = max(buckets, 1024)
    return buckets, buckets


def _mib(n: int) -> str:
    return "%.0f MiB" % (n / 2**20)


def recommend_max(root: str = "/", *, memory_fraction: float = 0.02) -> Recommendation:
    """A limit that spends at most *memory_fraction* of RAM on conntrack, with the reasoning.

    Never below the kernel's own default or twice today's entries; one hash
    bucket per entry (each entry is hashed twice, so chains average 2).
    """
    if not 0 < memory_fraction <= 0.5:
        raise ValueError("memory_fraction: %r is not in (0, 0.5]" % (memory_fraction,))
    mem = mem_total(root)
    now = read(root)
    budget = int(mem * memory_fraction)
    by_memory = budget // BYTES_PER_ENTRY // 1024 * 1024
    _default_buckets, default_max = kernel_default(mem)
    floor = max(default_max, 2 * now.count)
    value = min(max(by_memory, floor), MAX_LIMIT)
    buckets = min(value, MAX_BUCKETS)
    lines = [
        "RAM: %s (MemTotal in %s)." % (_mib(mem), _path(root, "proc/meminfo")),
        "Each entry costs about %d bytes of kernel memory (struct nf_conn plus its hash bucket)." % BYTES_PER_ENTRY,
        "Budget: %.1f%% of RAM = %s, room for %d entries (rounded down to a multiple of 1024)."
        % (100 * memory_fraction, _mib(budget), by_memory),
        "Floor: the kernel's own default for this RAM (%d) and twice today's %d entries: %d."
        % (default_max, now.count, floor),
        "Recommended nf_conntrack_max: %d (a full table uses about %s)." % (value, _mib(value * BYTES_PER_ENTRY)),
        "Today: max %d (about %s when full), %d buckets: %.1f entries per bucket when full%s."
        % (now.max, _mib(now.max * BYTES_PER_ENTRY), now.buckets, now.max / max(now.buckets, 1),
           "; long chains slow every lookup" if now.max > 4 * now.buckets else ""),
        "Recommended buckets (hashsize): %d, one per entry, so chains average 2 (each entry is hashed "
        "twice, once per direction)." % buckets,
    ]
    if is_proxmox(root):
        lines.append("Proxmox VE: set nf_conntrack_max in the node's host.fw, or pve-firewall resets it.")
    return Recommendation(value, buckets, value * BYTES_PER_ENTRY, mem, "\n".join(lines))


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
