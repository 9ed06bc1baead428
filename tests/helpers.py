"""Test helpers: throwaway network namespaces, the reference tool, real traffic.

Nothing here fakes the kernel: namespaces are real, traffic is real
(loopback inside the namespace, tracked because an nftables rule there uses
``ct state``), and the reference is the conntrack(8) C tool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional

import pytest

NFT_RULES = """
table inet ctpytest {
  chain output { type filter hook output priority 0; ct state new,established,related accept; }
  chain input  { type filter hook input priority 0; ct state new,established,related accept; }
}
"""

# Any ruleset that uses `ct label` turns connlabel storage on for the namespace's new entries.
LABEL_RULES = """
table inet lbl {
  chain c { type filter hook output priority 0; ct label set 3; }
}
"""


def can_use_kernel() -> Optional[str]:
    """None when kernel tests can run here, else the reason they cannot."""
    if sys.platform != "linux":
        return "kernel tests need Linux"
    if os.geteuid() != 0:
        return "kernel tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN to make network namespaces)"
    if shutil.which("ip") is None:
        return "kernel tests need iproute2's `ip` (apt-get install iproute2)"
    if not os.path.exists("/proc/sys/net/netfilter/nf_conntrack_max"):
        return "nf_conntrack is not loaded (modprobe nf_conntrack)"
    return None


def _tool(name: str, package: str) -> Callable[[], Optional[str]]:
    return lambda: None if shutil.which(name) else "needs %s (apt-get install %s)" % (name, package)


def _userns() -> Optional[str]:
    """Whether this process may make a user namespace: asked of the kernel, which refuses one
    to a chrooted process and when ``user.max_user_namespaces`` is 0."""
    try:
        run = subprocess.run(["unshare", "--user", "--map-root-user", "true"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "needs user namespaces (unshare --user: %s)" % exc
    if run.returncode:
        return "needs user namespaces (unshare --user --map-root-user: %s; chrooted, or " \
               "user.max_user_namespaces is 0)" % run.stderr.strip()
    return None


# Every capability a test may need, in one place (pygit2's test/utils.py style).  Each name is
# also a pytest marker: ``@pytest.mark.tool`` (or ``pytestmark = pytest.mark.tool``) skips the
# test with the reason below when the capability is missing, and in CI (CI=true) such a skip is
# a failure (conftest.py): CI has root, a kernel and every tool.  ``kernel`` is added by
# conftest to every test that uses a namespace fixture.  Inside a test, ``need("nft")``.
CAPABILITIES: Dict[str, Callable[[], Optional[str]]] = {
    "kernel": can_use_kernel,
    "root": lambda: None if os.geteuid() == 0 else "needs root",
    "tool": _tool("conntrack", "conntrack"),  # the conntrack(8) reference tool
    "nft": _tool("nft", "nftables"),
    "setpriv": _tool("setpriv", "util-linux"),
    "unshare": _tool("unshare", "util-linux"),
    "userns": lambda: _tool("unshare", "util-linux")() or _userns(),
}


def missing(*names: str) -> Optional[str]:
    """The reason the first missing capability of *names* gives, or None when all are here."""
    for name in names:
        reason = CAPABILITIES[name]()
        if reason:
            return reason
    return None


def need(*names: str) -> None:
    """Skip the calling test unless every capability in *names* is here (a failure in CI when
    the test carries a capability marker, as every test using this should)."""
    reason = missing(*names)
    if reason:
        pytest.skip(reason)


def run(*cmd: str, input: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=input, capture_output=True, text=True, check=check)


class Netns:
    """A named network namespace that lives for one test (or module)."""

    def __init__(self) -> None:
        self.name = "ctpy-" + uuid.uuid4().hex[:10]
        run("ip", "netns", "add", self.name)
        self.exec("ip", "link", "set", "lo", "up")

    @property
    def path(self) -> str:
        return "/run/netns/" + self.name

    def exec(self, *cmd: str, input: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.name, *cmd, input=input, check=check)

    def track(self) -> None:
        """Make conntrack track this namespace's traffic (an nft ct-state rule)."""
        need("nft")
        self.exec("nft", "-f", "-", input=NFT_RULES)

    def keep_labels(self) -> None:
        """Give this namespace's entries connlabel storage (a ruleset that uses ``ct label``)."""
        need("nft")
        self.exec("nft", "-f", "-", input=LABEL_RULES)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run conntrack(8), the reference tool, inside the namespace."""
        return self.exec("conntrack", *args, check=check)

    def cli_lines(self, *args: str) -> List[str]:
        out = self.cli(*args).stdout
        return [line.rstrip() for line in out.splitlines() if line.strip()]

    def python(self, code: str, *args: str) -> subprocess.Popen:
        """Start a Python program inside the namespace (stdin/stdout piped)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable, "-c", textwrap.dedent(code), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def event_subscribers(self) -> int:
        """Netfilter netlink sockets in this namespace that joined a multicast group (event listeners)."""
        n = 0
        for line in self.exec("cat", "/proc/net/netlink").stdout.splitlines()[1:]:
            cols = line.split()  # sk Eth Pid Groups ...
            if len(cols) > 3 and cols[1] == "12" and int(cols[3], 16):  # 12: NETLINK_NETFILTER
                n += 1
        return n

    def wait_for_event_subscriber(self, deadline: float = 60.0) -> None:
        """Until some socket in the namespace listens to conntrack events (a thread subscribing)."""
        end = time.monotonic() + deadline
        while not self.event_subscribers():
            if time.monotonic() > end:
                raise AssertionError("no event subscriber in %s after %.0f s" % (self.name, deadline))
            time.sleep(0.05)

    def delete(self) -> None:
        run("ip", "netns", "del", self.name, check=False)


TCP_PAIR = """
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname())
conn, _ = srv.accept()
cli.sendall(b"ping"); conn.recv(4); conn.sendall(b"pong"); cli.recv(4)
print(cli.getsockname()[1], srv.getsockname()[1], flush=True)
sys.stdin.read()
"""

UDP_UNREPLIED = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.sendto(b"hello", ("127.0.0.1", int(sys.argv[1])))
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


# Entries made with conntrack(8) -I for the cross-checks (one per protocol and family).
CLI_CREATES = [
    ["-p", "udp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--sport", "5353", "--dport", "53", "-t", "300", "-m", "5"],
    ["-p", "tcp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--sport", "1234", "--dport", "80", "-t", "300",
     "--state", "ESTABLISHED", "-u", "SEEN_REPLY,ASSURED", "-w", "7"],
    ["-p", "icmp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--icmp-type", "8", "--icmp-code", "0",
     "--icmp-id", "77", "-t", "300"],
    ["-p", "udp", "-s", "2001:db8::1", "-d", "2001:db8::2", "--sport", "1", "--dport", "2",
     "-t", "300", "-m", "1"],
    ["-p", "tcp", "-s", "10.0.0.3", "-d", "10.0.0.4", "--sport", "1", "--dport", "2", "-t", "300",
     "--state", "SYN_SENT"],
]


HOST_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


@contextmanager
def host_max_at_least(n: int) -> Iterator[None]:
    """The host's global nf_conntrack_max raised to *n* for a block when it is lower (a
    small VM's default, e.g. 65536 with 2 GiB), and put back after; never lowered.  Each
    namespace's table is capped by it, so a test that needs n entries needs this."""
    with open(HOST_MAX) as f:
        before = int(f.read())
    if before >= n:
        yield
        return
    with open(HOST_MAX, "w") as f:
        f.write("%d\n" % n)
    try:
        yield
    finally:
        with open(HOST_MAX) as f:
            now = int(f.read())
        if now == n:  # another process's change stays
            with open(HOST_MAX, "w") as f:
                f.write("%d\n" % before)
