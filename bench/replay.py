"""The C helper's dump path alone, source trees side by side (no kernel in the timing).

Records one real dump of N entries (bench/ctbench.py's table, in a scratch
namespace; the host's global nf_conntrack_max is raised for it when lower and
restored), then builds bench/replay_dump.c once per source tree given (its
csrc/ modules, read from its build_ffi.py MODULES, or a single csrc/ctpy.c)
and replays the recorded receive buffers through each build in turn: the
reader thread's CPU time, best of ROUNDS, per mode.  Use it to check that a
change to csrc/ does not slow the dump path; wall-clock dumps on a busy host
are dominated by the kernel's share and by noise.

    python bench/replay.py /work/main .             # needs root to record
    python bench/replay.py --recording /tmp/d.bin . # reuse a recording
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

MODES = {0: "dump_next (2,048-record batches)", 1: "dump_count", 2: "dump_count, TCP state filter"}

RECORD = r"""
import socket, struct, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE: nothing lost while writing
s.bind((0, 0))
seq = 4242
# IPCTNL_MSG_CT_GET, NLM_F_REQUEST|NLM_F_DUMP, family AF_UNSPEC
s.send(struct.pack("=IHHII", 20, (1 << 8) | 1, 0x301, seq, 0) + struct.pack("=BBH", 0, 0, 0))
with open(sys.argv[1], "wb") as out:
    out.write(struct.pack("=II", s.getsockname()[0], seq))
    done = False
    while not done:
        b = s.recv(256 * 1024)
        out.write(struct.pack("=I", len(b)) + b)
        off = 0
        while off < len(b):
            ln, ty = struct.unpack_from("=IH", b, off)
            done = done or ty == 3  # NLMSG_DONE
            off += (ln + 3) & ~3
"""


def record(n: int, path: str) -> None:
    import ctbench

    import conntrack

    name = "nf_conntrack_max"
    before = ctbench.read_sysctl(name)
    ns = ctbench.Namespace("ctreplay-")
    try:
        if before < n + 65536:
            ctbench.write_sysctl(name, n + 65536)  # raised only, put back below
        with conntrack.Conntrack(netns="/run/netns/" + ns.name) as ct:
            made = ctbench.build(ct, n)
        subprocess.run(ns.exec_argv(sys.executable, "-c", RECORD, path), check=True)
        print("recorded a dump of %d entries (%.1f MB)" % (made, os.path.getsize(path) / 1e6), flush=True)
    finally:
        ns.delete()
        if ctbench.read_sysctl(name) != before and before < n + 65536:
            ctbench.write_sysctl(name, before)


def modules(tree: str) -> List[str]:
    """The C files of a tree: build_ffi.py's MODULES, or the single csrc/ctpy.c of older trees."""
    with open(os.path.join(tree, "build_ffi.py"), encoding="utf-8") as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MODULES" for t in node.targets):
                return [os.path.join(tree, "csrc", m + ".c") for m in ast.literal_eval(node.value)]
    return [os.path.join(tree, "csrc", "ctpy.c")]


def build(tree: str, out: str, tmp: str) -> None:
    unity = os.path.join(tmp, os.path.basename(out) + ".unity.c")
    with open(unity, "w") as f:
        f.write("".join('#include "%s"\n' % os.path.abspath(m) for m in modules(tree)))
    pkg = subprocess.run(["pkg-config", "--cflags", "--libs", "libnetfilter_conntrack", "libmnl"],
                         capture_output=True, text=True).stdout.split()
    cmd = ["gcc", "-O2", "-Wall", "-Wno-unused-function", "-pthread",
           "-I" + os.path.join(os.path.abspath(tree), "csrc"), '-DCTPY_UNITY="%s"' % unity,
           '-DCTPY_NFCT_VERSION="replay"', "-o", out, os.path.join(HERE, "replay_dump.c")]
    subprocess.run(cmd + (pkg or ["-lnetfilter_conntrack", "-lnfnetlink", "-lmnl"]), check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="+", help="source trees (checkouts) to compare")
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=30, help="replays per measurement, best kept")
    ap.add_argument("--alternations", type=int, default=3, help="times each tree is measured, in turn")
    ap.add_argument("--recording", help="a recording to reuse, or where to keep the new one")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ctreplay-")
    try:
        rec = args.recording or os.path.join(tmp, "dump.bin")
        if not os.path.exists(rec):
            record(args.entries, rec)
        bins = []
        for i, tree in enumerate(args.trees):
            out = os.path.join(tmp, "replay%d" % i)
            build(tree, out, tmp)
            bins.append(out)
        best: Dict[Tuple[int, int], Tuple[float, int]] = {}
        for _ in range(args.alternations):
            for mode in MODES:
                for i, b in enumerate(bins):
                    got = subprocess.run([b, rec, str(mode), str(args.rounds)], check=True,
                                         capture_output=True, text=True).stdout.split()
                    n, secs = int(got[0]), float(got[1])
                    if (i, mode) not in best or secs < best[(i, mode)][0]:
                        best[(i, mode)] = (secs, n)
        for mode, what in MODES.items():
            for i, tree in enumerate(args.trees):
                secs, n = best[(i, mode)]
                print("%-32s %-24s %8.2f ms  (%d entries kept)" % (what, tree, secs * 1e3, n))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
