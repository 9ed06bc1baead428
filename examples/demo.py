"""`make demo`: the library's main job on a scratch network namespace.

Creates a throwaway namespace, makes real traffic in it (a TCP connection
and a UDP datagram nobody answers, tracked because an nftables rule there
uses `ct state`), injects a few thousand flows over netlink, then shows
what the user's note asks for: table usage, a few flows as `conntrack -L`
prints them, the UNREPLIED ones, and a bulk delete of them.  The host's own
table is never touched; the namespace is deleted at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import conntrack  # noqa: E402
from conntrack import Filter, Flow  # noqa: E402

INJECT = 4000
NFT = """
table inet demo {
  chain output { type filter hook output priority 0; ct state new,established,related accept; }
  chain input  { type filter hook input priority 0; ct state new,established,related accept; }
}
"""
TRAFFIC = """
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 8080)); srv.listen(1)
cli = socket.create_connection(("127.0.0.1", 8080)); conn, _ = srv.accept()
cli.sendall(b"GET /"); conn.recv(5); conn.sendall(b"200 OK"); cli.recv(6)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"?", ("127.0.0.1", 53))
print("ready", flush=True)
sys.stdin.read()
"""


def sh(*cmd: str, input: str | None = None) -> None:
    proc = subprocess.run(cmd, input=input, text=True, capture_output=True)
    if proc.returncode != 0:  # say what the tool said, not only its exit status
        raise SystemExit("demo: `%s` failed (exit %d): %s"
                         % (" ".join(cmd), proc.returncode, proc.stderr.strip() or "(no message)"))


def injected() -> list[Flow]:
    """Half UNREPLIED UDP (DNS-like), half ESTABLISHED/ASSURED TCP."""
    flows = []
    for i in range(INJECT):
        src = "10.%d.%d.%d" % (1 + i % 3, (i >> 8) & 255, i & 255)
        if i % 2:
            flows.append(Flow(proto="udp", src=src, dst="192.0.2.53", sport=30000 + i % 30000, dport=53,
                              timeout=120, mark=1))
        else:
            flows.append(Flow(proto="tcp", src=src, dst="198.51.100.80", sport=40000 + i % 20000, dport=443,
                              timeout=3600, state="ESTABLISHED", status="SEEN_REPLY|ASSURED", mark=2))
    return flows


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (CAP_NET_ADMIN, and CAP_SYS_ADMIN to create a namespace)", file=sys.stderr)
        return 1
    ns = "ctdemo-" + uuid.uuid4().hex[:8]
    sh("ip", "netns", "add", ns)
    traffic = None
    try:
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=NFT)
        traffic = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", TRAFFIC],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert traffic.stdout is not None and traffic.stdout.readline().strip() == "ready"

        print("scratch namespace %s (libnetfilter_conntrack %s, kernel %s)"
              % (ns, conntrack.nfct_version(), os.uname().release))
        with conntrack.Conntrack(ns) as ct:
            t = time.perf_counter()
            created = ct.create_many(injected())
            print("injected %d flows over netlink in %.3f s" % (created, time.perf_counter() - t))

            count, limit = ct.count(), ct.limit()
            print("\ntable usage: %d of %d entries (%.2f%% full)" % (count, limit, 100.0 * count / limit))
            limits = conntrack.sysctl.read(netns=ns)  # /proc/sys as the namespace sees it
            print("limits: nf_conntrack_max=%d, buckets=%d, nf_conntrack_count=%d, "
                  "udp timeout %d s, tcp established %d s"
                  % (limits.max, limits.buckets, limits.count, limits.timeouts["udp_timeout"],
                     limits.timeouts["tcp_timeout_established"]))
            print("health: %s" % conntrack.health.health(ct))
            print("by protocol: %s" % ", ".join("%s=%d" % (p.name, n) for p, n in ct.summary().by_proto.items()))

            print("\nreal traffic, as conntrack -L prints it:")
            for flow in ct.dump(Filter(src="127.0.0.1")):
                print("  " + str(flow))
            print("\na few injected flows:")
            for n, flow in enumerate(ct.dump(Filter(src="10.0.0.0/8"))):
                if n == 4:
                    break
                print("  " + str(flow))

            unreplied = Filter(unreplied=True)
            t = time.perf_counter()
            n_unreplied = ct.count(unreplied)
            print("\nUNREPLIED flows: %d (counted in %.1f ms, no Python object per entry)"
                  % (n_unreplied, 1000 * (time.perf_counter() - t)))
            print("  how: " + unreplied.explain(ct.features))
            sample = next(ct.dump(unreplied))
            print("  e.g. " + str(sample))

            dry = ct.delete(unreplied, dry_run=True)
            print("\ndry run: would delete %d UNREPLIED flows" % len(dry.matched))
            t = time.perf_counter()
            result = ct.delete(unreplied)
            print("deleted %d UNREPLIED flows in %.1f ms (method: %s)"
                  % (result.deleted, 1000 * (time.perf_counter() - t), result.method))
            print("left: %d entries, %d UNREPLIED" % (ct.count(), ct.count(unreplied)))
    finally:
        if traffic is not None:
            assert traffic.stdin is not None
            traffic.stdin.close()
            traffic.wait(5)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
