"""Persistence of nf_conntrack settings across reboots: the sysctl.d drop-in and modules-load.d.

Private: use it through :mod:`conntrack.sysctl` (``set_max(..., persist=True)``,
:func:`conntrack.sysctl.write_dropin`, :func:`conntrack.sysctl.load_at_boot`).
Every function takes ``root`` (default ``"/"``) so that a test or an image
builder can point it at another tree.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import warnings
from typing import List, Mapping, Optional

from ._check import check_int
from ._limits import MAX_BUCKETS, MAX_LIMIT, MAX_TIMEOUT, TIMEOUT_RE
from ._limits import path as _path
from .errors import PersistOverridden

DROPIN_DIR = "etc/sysctl.d"
"""Where ``persist=True`` writes, relative to ``root``."""
DEFAULT_DROPIN = "90-conntrack.conf"  # documented as conntrack.sysctl.DEFAULT_DROPIN
_DROPIN_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*\.conf")


def check_dropin(dropin: str) -> str:
    """*dropin* when it is a file name systemd-sysctl reads, or ValueError."""
    if not isinstance(dropin, str) or not _DROPIN_RE.fullmatch(dropin) or dropin.startswith("."):
        raise ValueError("dropin: %r is not a file name ending in .conf (systemd-sysctl reads only *.conf)"
                         % (dropin,))
    return dropin


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
    if name not in _DROPIN_RANGES and not TIMEOUT_RE.fullmatch(name):
        raise ValueError("values: %r is not a key this library writes (net.netfilter.nf_conntrack_max, "
                         "_buckets, _acct, _timestamp or an nf_conntrack_*timeout*)" % (key,))
    return key


def _dropin_value(key: str, value: object) -> int:
    name = key[len("net.netfilter."):]
    lo, hi = _DROPIN_RANGES.get(name, (1, MAX_TIMEOUT))
    return check_int(value, "values: " + key, lo, hi, strings=False, kernel=True)


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
    check_dropin(dropin)
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
