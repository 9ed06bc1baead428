"""Exceptions raised by the conntrack package.

Every kernel error goes through :func:`from_errno`, so callers can catch
either the package's classes or the matching built-in ``OSError`` subclass
(``PermissionError``, ``FileNotFoundError``, ``FileExistsError``).
Bad arguments raise plain :class:`ValueError` (or :class:`TypeError`) and
never reach the kernel.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any, Optional


class ConntrackError(Exception):
    """Base class of the package's own exceptions."""


class ConntrackOSError(ConntrackError, OSError):
    """The kernel (or the C library) refused an operation."""


class NotFound(ConntrackOSError, FileNotFoundError):
    """No such conntrack entry (ENOENT)."""


class Exists(ConntrackOSError, FileExistsError):
    """The entry already exists (EEXIST)."""


class NoPermission(ConntrackOSError, PermissionError):
    """The caller lacks CAP_NET_ADMIN in the target network namespace."""


class Unsupported(ConntrackOSError):
    """The running kernel does not support the request (EOPNOTSUPP)."""


class BulkDeleteError(ConntrackError):
    """A bulk delete stopped part-way; ``result`` says what was done."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


_PERM_HINT = (
    "conntrack needs CAP_NET_ADMIN (run as root) in the network namespace "
    "it talks to"
)


def from_errno(err: int, what: str, filename: Optional[str] = None) -> OSError:
    """Turn an errno value into the most specific exception for it."""
    message = "%s: %s" % (what, os.strerror(err))
    cls: type = ConntrackOSError
    if err in (_errno.EPERM, _errno.EACCES):
        cls = NoPermission
        message = "%s (%s)" % (message, _PERM_HINT)
    elif err == _errno.ENOENT:
        cls = NotFound
    elif err == _errno.EEXIST:
        cls = Exists
    elif err == _errno.EOPNOTSUPP:
        cls = Unsupported
    exc: OSError = cls(err, message)
    if filename is not None:
        exc.filename = filename
    return exc


class NotLoaded(ConntrackError, FileNotFoundError):
    """nf_conntrack's sysctls are absent: the module is not loaded (``modprobe nf_conntrack``)."""


class ReadOnlyInNamespace(ConntrackError, PermissionError):
    """The value is global and read-only outside the initial network namespace.

    ``nf_conntrack_max``, ``nf_conntrack_buckets``, ``nf_conntrack_expect_max``
    and the module's ``hashsize`` can only be changed from the host (init)
    namespace; every namespace's table is capped by the host's value.
    """


class ConntrackWarning(UserWarning):
    """Base class of the package's warnings."""


class ProxmoxFirewallWarning(ConntrackWarning):
    """On a Proxmox VE host, pve-firewall re-applies its own conntrack settings."""


class PersistOverridden(ConntrackWarning):
    """Another sysctl drop-in, applied after ours at boot, sets the same key."""


class MissingDependency(ConntrackError, ImportError):
    """An optional dependency is not installed (the message names the extra to install)."""
