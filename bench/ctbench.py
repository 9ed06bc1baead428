"""Helpers shared by bench/run.py and tests/test_bench_small.py.

The benchmark table is a pure function of the entry index ``k`` (0..N-1):
even ``k`` are UNREPLIED UDP flows, odd ``k`` ESTABLISHED/ASSURED TCP
flows (status SEEN_REPLY|ASSURED), every one with a mark and a timeout of
an hour.  Source addresses are unique per protocol, so every tuple is
unique for N < 2**25, and they spread over the whole of 10.0.0.0/8.

The "CIDR + port" selection (``CIDR_FILTER`` / ``CIDR_CLI``) is one that
both ``conntrack.Filter`` and ``conntrack -D`` can express: conntrack(8)
1.4.7 takes a CIDR source (``-s 10.64.0.0/10``) but only a single port
(``--dport 53``; ranges give "invalid parameters").  It matches 1/16 of
the UDP entries.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import uuid
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

import conntrack
from conntrack import Flow, Status, TCPState

TIMEOUT = 3600
UDP_DPORTS = (53, 123, 443, 4500)
TCP_DPORTS = (22, 80, 443, 8080)
TCP_STATUS = Status.SEEN_REPLY | Status.ASSURED

CIDR_SRC = "10.64.0.0/10"
CIDR_DPORT = 53
CIDR_FILTER_KW = {"proto": "udp", "src": CIDR_SRC, "dport": CIDR_DPORT}
CIDR_CLI = ("-p", "udp", "-s", CIDR_SRC, "--dport", str(CIDR_DPORT))

Key = Tuple[str, str, str, int, int]  # proto, src, dst, sport, dport


def _ip(value: int) -> str:
    return "%d.%d.%d.%d" % (value >> 24, value >> 16 & 255, value >> 8 & 255, value & 255)


def entry(k: int) -> Dict[str, int]:
    """The k-th entry of the benchmark table as plain numbers."""
    j = k >> 1
    udp = not k & 1
    src = 0x0A000000 | (j & 255) << 16 | (j >> 8 & 255) << 8 | (j >> 16 & 255)
    dst = 0x0A000000 | ((j * 7 + 3) & 255) << 16 | (j >> 3 & 255) << 8 | (1 + j % 250)
    return {
        "udp": udp,
        "src": src,
        "dst": dst,
        "sport": 1024 + (j * 13) % 60000,
        "dport": (UDP_DPORTS if udp else TCP_DPORTS)[j >> 8 & 3],
        "mark": k & 15,
    }


def make_flow(k: int) -> Flow:
    e = entry(k)
    if e["udp"]:
        return Flow(proto="udp", src=e["src"], dst=e["dst"], sport=e["sport"], dport=e["dport"],
                    timeout=TIMEOUT, mark=e["mark"])
    return Flow(proto="tcp", src=e["src"], dst=e["dst"], sport=e["sport"], dport=e["dport"],
                timeout=TIMEOUT, mark=e["mark"], status=TCP_STATUS, state=TCPState.ESTABLISHED)


def key(k: int) -> Key:
    e = entry(k)
    return ("udp" if e["udp"] else "tcp", _ip(e["src"]), _ip(e["dst"]), e["sport"], e["dport"])


def is_unreplied(k: int) -> bool:
    return not k & 1


def in_cidr_selection(k: int) -> bool:
    """Whether entry k matches CIDR_FILTER / CIDR_CLI (udp, src 10.64.0.0/10, dport 53)."""
    if k & 1:
        return False
    j = k >> 1
    return 64 <= (j & 255) < 128 and UDP_DPORTS[j >> 8 & 3] == CIDR_DPORT


def flows(n: int, where: Optional[Callable[[int], bool]] = None) -> Iterator[Flow]:
    """The table's flows (only those whose index passes *where*), built lazily."""
    for k in range(n):
        if where is None or where(k):
            yield make_flow(k)


def build(ct: conntrack.Conntrack, n: int, where: Optional[Callable[[int], bool]] = None,
          guard: Optional[Callable[[], None]] = None, chunk: int = 65536) -> int:
    """Insert the table (or the part *where* selects) with create_many; returns how many.

    *guard* runs before each chunk (the benchmark re-checks the global
    nf_conntrack_max there).  A chunk refused with ENOMEM (table full: someone
    lowered the global max meanwhile) is retried once, flow by flow, after *guard*.
    """
    made = 0
    pending: List[Flow] = []

    def send() -> int:
        if guard is not None:
            guard()
        try:
            return ct.create_many(pending)
        except conntrack.ConntrackOSError as exc:
            if exc.errno != errno.ENOMEM or guard is None:
                raise
            guard()
            done = 0
            for f in pending:
                try:
                    ct.create(f)
                    done += 1
                except conntrack.Exists:
                    done += 1  # created by the refused batch before it stopped
            return done

    for f in flows(n, where):
        pending.append(f)
        if len(pending) >= chunk:
            made += send()
            pending = []
    if pending:
        made += send()
    return made


def expected_count(n: int, where: Callable[[int], bool]) -> int:
    return sum(1 for k in range(n) if where(k))


# -- namespaces, sysctls, the reference tool ---------------------------------------------

def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, **kw)


class Namespace:
    """A scratch network namespace (``ip netns add``), deleted by :meth:`delete`."""

    def __init__(self, prefix: str = "ctbench-") -> None:
        self.name = prefix + uuid.uuid4().hex[:8]
        run("ip", "netns", "add", self.name)

    def exec_argv(self, *cmd: str) -> List[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def delete(self) -> None:
        run("ip", "netns", "del", self.name, check=False)


SYSCTL_DIR = "/proc/sys/net/netfilter"


def entries_elsewhere() -> int:
    """Conntrack entries in the host namespace and every named one (they share
    the kernel's hash table with the benchmark's); -1 when unreadable."""
    try:
        total = read_sysctl("nf_conntrack_count")
        names = run("ip", "netns", "list").stdout.split("\n")
        for line in names:
            name = line.split(" ")[0]
            if name:
                out = run("ip", "netns", "exec", name, "cat", os.path.join(SYSCTL_DIR, "nf_conntrack_count"),
                          check=False).stdout.strip()
                total += int(out) if out.isdigit() else 0
        return total
    except (OSError, ValueError):
        return -1


def read_sysctl(name: str) -> int:
    with open(os.path.join(SYSCTL_DIR, name)) as fh:
        return int(fh.read().split()[0])


def write_sysctl(name: str, value: int) -> None:
    with open(os.path.join(SYSCTL_DIR, name), "w") as fh:
        fh.write("%d\n" % value)


def sysctl_writable(name: str) -> bool:
    return os.access(os.path.join(SYSCTL_DIR, name), os.W_OK)


_SHOWN = re.compile(r"(\d+) flow entries have been (shown|deleted)")


def cli_reported(stderr: str) -> int:
    """The entry count conntrack(8) prints on stderr ("N flow entries have been deleted.")."""
    m = _SHOWN.search(stderr)
    if m is None:
        raise RuntimeError("conntrack(8) did not report a count: %r" % stderr[-300:])
    return int(m.group(1))


_LINE = re.compile(r"^(tcp|udp)\s+\d+\s+\d+\s+(?:[A-Z_]+\s+)?src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def parse_cli_keys(text: str) -> Set[Key]:
    """The original-direction keys of `conntrack -L` output lines."""
    out: Set[Key] = set()
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.add((m.group(1), m.group(2), m.group(3), int(m.group(4)), int(m.group(5))))
    return out


# -- programs run inside the namespace -------------------------------------------------

# The floor: a plain netlink socket, one IPCTNL_MSG_CT_GET dump request,
# and a loop that only walks nlmsghdr headers and counts messages.
FLOOR_CODE = r"""
import socket, struct, sys, time
t0 = time.perf_counter()
NETLINK_NETFILTER = 12
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
s.bind((0, 0))
# nlmsghdr(len, type=NFNL_SUBSYS_CTNETLINK<<8|IPCTNL_MSG_CT_GET, flags=REQUEST|DUMP, seq, pid) + nfgenmsg
s.send(struct.pack("=IHHII", 20, (1 << 8) | 1, 0x301, 1, 0) + struct.pack("=BBH", 0, 0, 0))
buf = bytearray(1 << 17)
hdr = struct.Struct("=IH").unpack_from
n = 0
done = False
while not done:
    got = s.recv_into(buf)
    off = 0
    while off < got:
        ln, ty = hdr(buf, off)
        if ty == 3:  # NLMSG_DONE
            done = True
            break
        if ty == 2:  # NLMSG_ERROR
            sys.exit("netlink error %d" % struct.unpack_from("=i", buf, off + 16)[0])
        n += 1
        off += (ln + 3) & ~3
print(n, time.perf_counter() - t0)
"""

# The loop users write: every flow's addresses, ports and state.  argv[1]:
# "object" (Flow objects), "tuples" (dump_tuples, address objects) or
# "tuples-int" (dump_tuples, addresses as ints).  Prints "count seconds".
LOOP_CODE = r"""
import sys, time
t0 = time.perf_counter()
import conntrack
mode = sys.argv[1]
n = 0
with conntrack.Conntrack() as ct:
    if mode == "object":
        for f in ct.dump():
            o = f.orig
            o.src; o.dst; o.sport; o.dport; f.state
            n += 1
    else:
        addresses = "int" if mode == "tuples-int" else "object"
        for src, dst, sport, dport, state in ct.dump_tuples(fields=("src", "dst", "sport", "dport", "state"),
                                                            addresses=addresses):
            n += 1
print(n, time.perf_counter() - t0)
"""

# A bulk delete as a user runs it: a fresh process, import included.
# argv[1]: the Filter keywords as a Python literal.  Prints "deleted seconds".
DELETE_CODE = r"""
import ast, sys, time
t0 = time.perf_counter()
import conntrack
with conntrack.Conntrack() as ct:
    res = ct.delete(conntrack.Filter(**ast.literal_eval(sys.argv[1])))
print(res.deleted, time.perf_counter() - t0)
"""

PYROUTE2_CODE = r"""
import sys, time
from pyroute2 import Conntrack
cap = int(sys.argv[1])
t0 = time.perf_counter()
ct = Conntrack()
n = 0
for _ in ct.dump_entries():
    n += 1
    if n >= cap:
        break
print(n, time.perf_counter() - t0)
"""

# Memory: a fresh process per measurement; RSS from /proc/self/statm and ru_maxrss.
MEMORY_CODE = r"""
import gc, os, sys
import conntrack
mode, ns = sys.argv[1], sys.argv[2]
def status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
ct = conntrack.Conntrack(ns)
sum(1 for _ in ct.dump(conntrack.Filter(mark=99)))  # warm up: threads, buffers, code paths
gc.collect()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
base = status("VmRSS")
n = 0
if mode == "stream":
    for f in ct.dump():
        n += 1
        _ = f.status
elif mode == "tracemalloc":
    import tracemalloc
    tracemalloc.start()
    for f in ct.dump():
        n += 1
        _ = f.status
    base = 0
else:
    held = list(ct.dump())
    if mode == "list-orig":  # the held flows' tuples read too (decoded once per batch, kept with it)
        for f in held:
            f.orig
    gc.collect()
    n = len(held)
peak = tracemalloc.get_traced_memory()[1] if mode == "tracemalloc" else status("VmHWM")
print(n, base, peak, status("VmRSS"))
"""
