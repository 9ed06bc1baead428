"""Network namespaces: how a handle names one, and running code inside one.

``netns`` arguments everywhere accept None (this process's namespace), a
name under /run/netns (as ``ip netns add`` makes), a path such as
/proc/PID/ns/net, or an open file descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from typing import Callable, Dict, Optional, TypeVar, Union

from . import _binding
from .errors import NotANamespace, from_errno

NetnsSpec = Union[None, str, int, "os.PathLike[str]"]
_T = TypeVar("_T")

_NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h (4.11+)
_CLONE_NEWNET = 0x40000000


def _check_netns(fd: int, what: str) -> None:
    """Raise NotANamespace unless *fd* is a network namespace (closes nothing)."""
    try:
        kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        kind = None  # not an nsfs file at all (ENOTTY), or a kernel without the ioctl
    if kind != _CLONE_NEWNET:
        raise NotANamespace(errno.EINVAL, "netns: %s is not a network namespace" % what)


def resolve(netns: NetnsSpec) -> Optional[int]:
    """An open fd for the namespace (caller closes it), or None for our own."""
    if netns is None:
        return None
    if isinstance(netns, bool):
        raise TypeError("netns: expected a name, a path or an fd, got %r" % (netns,))
    if isinstance(netns, int):
        if not 0 <= netns < 2**31:
            raise ValueError("netns: %d is not a file descriptor" % netns)
        try:
            fd = os.dup(netns)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise ValueError("netns: %d is not an open file descriptor" % netns) from None
            raise from_errno(exc.errno or errno.EIO, "netns: cannot use descriptor %d" % netns) from None
        what = "descriptor %d" % netns
    else:
        path = os.fspath(netns)
        if not isinstance(path, str) or not path:
            raise ValueError("netns: expected a name, a path or an fd, got %r" % (netns,))
        if "/" not in path:
            path = os.path.join("/run/netns", path)
        try:
            fd = _binding.netns_open(path)
        except FileNotFoundError:
            raise from_errno(errno.ENOENT, "network namespace %r not found" % os.fspath(netns), path) from None
        except OSError as exc:
            raise from_errno(exc.errno or errno.EIO, "cannot open network namespace %r" % path, path) from None
        what = repr(path)
    try:
        _check_netns(fd, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def run_in(netns: NetnsSpec, fn: Callable[[], _T]) -> _T:
    """Run *fn* in a short-lived thread inside *netns* and return its result.

    /proc/sys/net follows the namespace of the thread that opens it, so the
    thread sees that namespace's values; the calling thread stays where it is.
    With ``netns=None``, *fn* runs here.
    """
    if netns is None:
        return fn()
    fd = resolve(netns)
    assert fd is not None
    box: Dict[str, object] = {}

    def work() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _binding.setns(fd)
            try:
                box["value"] = fn()
            finally:
                try:
                    _binding.setns(own)
                except OSError:  # the thread ends now anyway, and its namespace with it
                    pass
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc
        finally:
            os.close(own)

    try:
        t = threading.Thread(target=work, name="conntrack-netns")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
