"""Exceptions raised by the conntrack package.

Every kernel error goes through :func:`from_errno`, so callers can catch
either the package's classes or the matching built-in ``OSError`` subclass
(``PermissionError``, ``FileNotFoundError``, ``FileExistsError``).
Bad arguments raise :class:`ValueError` (or :class:`TypeError`) and never
reach the kernel; those of a field checker are :class:`InvalidValue` (or
:class:`InvalidType`), whose ``field`` names the keyword.
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


class DeleteInterrupted(KeyboardInterrupt):
    """Ctrl-C (``KeyboardInterrupt``) arrived during a bulk delete.

    It is still a :class:`KeyboardInterrupt`; ``result`` is the partial
    :class:`~conntrack.DeleteResult`: what was deleted before it stopped.
    """

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class MatchesEverything(ConntrackError, ValueError):
    """A delete's filter matches every entry and ``all=True`` was not given.

    ``Filter()``, ``Filter(mark="0/0")``, ``Filter(status=0)`` and the like
    restrict nothing; deleting with them empties the table.  Say
    ``all=True`` (or call :meth:`~conntrack.Conntrack.flush`) when you mean it.
    """


class HandleClosed(ConntrackError, ValueError):
    """A method of a :class:`~conntrack.Conntrack` handle was called after :meth:`~conntrack.Conntrack.close`."""


class InvalidValue(ConntrackError, ValueError):
    """A bad value for a keyword argument; ``field`` names the keyword (``"dport"``).

    The message opens with the field too, sometimes with a qualifier
    (``"mark mask: ..."``, ``"src_nat port: ..."``).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidType(ConntrackError, TypeError):
    """A keyword argument of the wrong type; ``field`` names the keyword."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def keyword(label: str) -> str:
    """The keyword of a checker's *label*: ``"mark"`` for ``"mark mask"``."""
    return label.partition(" ")[0]


class WrongOwner(ConntrackError, RuntimeError):
    """A handle was used from a thread other than the one that opened it,
    or in a child process after ``fork()``.  Open one handle per thread
    (and per process)."""




class NotANamespace(ConntrackOSError, ValueError):
    """The path or descriptor given as ``netns`` is not a network namespace
    (EINVAL).  Also an :class:`OSError`: a name under /run/netns whose
    namespace is being created or deleted looks like this for a moment."""


class TimedOut(ConntrackOSError, TimeoutError):
    """The kernel did not answer a request in time (the socket's receive timeout)."""


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
    elif err == _errno.EAGAIN:
        cls = TimedOut
        message = "%s: no answer from the kernel within the handle's timeout" % what
    exc: OSError = cls(err, message)
    if filename is not None:
        exc.filename = filename
    return exc


class NotLoaded(ConntrackError, FileNotFoundError):
    """nf_conntrack's sysctls are absent: the module is not loaded (``modprobe nf_conntrack``)."""

    @classmethod
    def missing(cls, path: str) -> NotLoaded:
        """The error for *path*, one of nf_conntrack's files under /proc, not found (ENOENT)."""
        exc = cls(_errno.ENOENT, "%s is missing: nf_conntrack is not loaded (modprobe nf_conntrack) "
                  "or this is not Linux" % path)
        exc.filename = path
        return exc


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


class DumpInterrupted(ConntrackWarning):
    """The kernel flagged a dump as interrupted (``NLM_F_DUMP_INTR``): the
    table changed under it, so entries may be missing or repeated."""


class PersistOverridden(ConntrackWarning):
    """Another sysctl drop-in, applied after ours at boot, sets the same key."""


class MissingDependency(ConntrackError, ImportError):
    """An optional dependency is not installed (the message names the extra to install)."""
