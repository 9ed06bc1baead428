"""Benchmark: conntrack (this library) against conntrack(8), pyroute2 and a raw netlink floor.

Everything runs in a scratch network namespace made here and deleted at
the end; the host's table is never touched.  The host's global
nf_conntrack_max (and nf_conntrack_buckets, when changed) are restored on
exit, Ctrl-C and SIGTERM.  See bench/README.md.

    make bench BENCH_ARGS="--entries 200000"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
sys.path.insert(0, ROOT)

import ctbench  # noqa: E402

import conntrack  # noqa: E402
from conntrack import Filter  # noqa: E402

MiB = 1 << 20


def log(msg: str) -> None:
    print(msg, flush=True)


def fmt_n(n: int) -> str:
    return f"{n:,}"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n: int = args.entries
        self.repeat: int = max(1, args.repeat)
        self.ns: Optional[ctbench.Namespace] = None
        self.ct: Optional[conntrack.Conntrack] = None
        self.times: Dict[str, float] = {}
        self.notes: Dict[str, str] = {}
        self.entries: Dict[str, int] = {}
        self.memory: Dict[str, float] = {}
        self.saved: Dict[str, int] = {}
        self.events: Dict[str, Tuple[int, int]] = {}
        self.other_entries = -1
        self.wrote: Dict[str, int] = {}  # the last value this run wrote, per sysctl

    # -- helpers --------------------------------------------------------------------------

    def best(self, name: str, fn: Callable[[], Tuple[float, Any]], repeat: Optional[int] = None) -> Any:
        """Run fn (returns (seconds, result)) repeat times; keep the best time and the last result."""
        best = float("inf")
        result: Any = None
        for i in range(repeat or self.repeat):
            secs, result = fn()
            log("    %-60s run %d: %8.3f s  (%s)" % (name, i + 1, secs, result))
            best = min(best, secs)
        self.times[name] = best
        self.entries[name] = result
        return result

    def exec_argv(self, *cmd: str) -> List[str]:
        assert self.ns is not None
        return self.ns.exec_argv(*cmd)

    def wall(self, argv: List[str], **kw: Any) -> Tuple[float, subprocess.CompletedProcess]:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, text=True, **kw)
        secs = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), proc.returncode, proc.stderr))
        return secs, proc

    def inner(self, code: str, *args: str) -> Tuple[float, int, float]:
        """Run a Python program in the namespace; it prints "count seconds" (its own timing)."""
        secs, proc = self.wall(self.exec_argv(sys.executable, "-c", code, *args),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        n, inner = proc.stdout.split()[:2]
        return secs, int(n), float(inner)

    def table_ok(self) -> None:
        """The table is whole again: N entries, N/2 UNREPLIED."""
        assert self.ct is not None
        self.ensure_max()
        total = self.ct.count()
        unrep = self.ct.count(Filter(unreplied=True))
        want_unrep = ctbench.expected_count(self.n, ctbench.is_unreplied)
        if total != self.n or unrep != want_unrep:
            raise RuntimeError("table has %d entries (%d unreplied), expected %d (%d)"
                               % (total, unrep, self.n, want_unrep))

    def ensure_max(self) -> None:
        """Someone else (a concurrent test run) may lower the global nf_conntrack_max: raise it again."""
        want = 2 * self.n + 65536
        now = ctbench.read_sysctl("nf_conntrack_max")
        if now < want:
            ctbench.write_sysctl("nf_conntrack_max", want)
            self.wrote["nf_conntrack_max"] = want
            self.notes["max"] = ("nf_conntrack_max was lowered by another process during the run (to %d);"
                                 " raised again to %d" % (now, want))
            log("    !! " + self.notes["max"])

    def refill(self, where: Callable[[int], bool], flt: Filter) -> None:
        """Re-create the entries *where* selects (they were just deleted; *flt* selects the same set)."""
        assert self.ct is not None
        self.ensure_max()
        t0 = time.perf_counter()
        try:
            made = ctbench.build(self.ct, self.n, where, guard=self.ensure_max)
        except conntrack.ConntrackError as exc:
            log("    !! refill failed (%s); deleting the partial refill and retrying" % str(exc)[:200])
            self.ensure_max()
            self.ct.delete(flt)
            made = ctbench.build(self.ct, self.n, where, guard=self.ensure_max)
        log("    (re-created the %s deleted entries in %.1f s)" % (fmt_n(made), time.perf_counter() - t0))
        self.table_ok()

    # -- setup ----------------------------------------------------------------------------

    def setup(self) -> None:
        self.saved["nf_conntrack_max"] = ctbench.read_sysctl("nf_conntrack_max")
        want = 2 * self.n + 65536
        if self.saved["nf_conntrack_max"] < want:
            ctbench.write_sysctl("nf_conntrack_max", want)
            self.wrote["nf_conntrack_max"] = want
            log("nf_conntrack_max: %d -> %d for the run (restored at exit)" % (self.saved["nf_conntrack_max"], want))
        self.other_entries = ctbench.entries_elsewhere()
        log("conntrack entries in the host and other namespaces: %s" % self.notes_other())
        self.ns = ctbench.Namespace()
        log("namespace: %s" % self.ns.name)
        self.ct = conntrack.Conntrack(self.ns.name)
        log("building %s entries (half UNREPLIED UDP, half ESTABLISHED/ASSURED TCP) with create_many ..."
            % fmt_n(self.n))
        t0 = time.perf_counter()
        made = ctbench.build(self.ct, self.n, guard=self.ensure_max)
        secs = time.perf_counter() - t0
        log("  created %s in %.1f s (%.0f/s, Flow() construction included)" % (fmt_n(made), secs, made / secs))
        self.table_ok()
        ctbench.expected_count(self.n, ctbench.in_cidr_selection)

    def notes_other(self) -> str:
        return fmt_n(self.other_entries) if self.other_entries >= 0 else "unknown"

    def teardown(self) -> None:
        if self.ct is not None:
            self.ct.close()
            self.ct = None
        if self.ns is not None:
            self.ns.delete()
            self.ns = None
        restore_sysctls(self.saved, self.wrote)

    # -- 1. dump ----------------------------------------------------------------------------

    def dump_ours(self, touch: bool) -> Tuple[float, int]:
        assert self.ct is not None
        t0 = time.perf_counter()
        if touch:
            n = 0
            for f in self.ct.dump():
                _ = f.status
                n += 1
        else:
            n = sum(1 for _ in self.ct.dump())
        return time.perf_counter() - t0, n

    def dump_floor(self) -> Tuple[float, int]:
        _wall, n, inner = self.inner(ctbench.FLOOR_CODE)
        return inner, n

    def dump_cli(self) -> Tuple[float, int]:
        secs, proc = self.wall(self.exec_argv("conntrack", "-L"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return secs, ctbench.cli_reported(proc.stderr)

    def bench_dump(self, suffix: str = "") -> None:
        log("1. full dump of %s entries%s" % (fmt_n(self.n), suffix))
        self.best("dump: raw netlink floor" + suffix, self.dump_floor)
        self.best("dump: conntrack, count only" + suffix,
                                                      lambda: self.dump_ours(False))
        self.best("dump: conntrack, f.status read" + suffix,
                                                             lambda: self.dump_ours(True))
        if suffix:
            return
        self.best("dump: conntrack -L > /dev/null", self.dump_cli)
        cap = min(self.args.pyroute2_cap, self.n)
        if cap <= 0:
            return
        try:
            import pyroute2  # noqa: F401
        except ImportError:
            self.notes["pyroute2"] = "pyroute2 not installed (make bench installs it); skipped"
            log("    " + self.notes["pyroute2"])
            return

        def pyroute2_run() -> Tuple[float, int]:
            _wall, n, inner = self.inner(ctbench.PYROUTE2_CODE, str(cap))
            return inner * self.n / n, n

        self.best("dump: pyroute2 dump_entries (extrapolated)", pyroute2_run)
        self.notes["pyroute2"] = ("pyroute2 %s: timed on the first %s entries, extrapolated linearly to %s"
                                  % (_pyroute2_version(), fmt_n(cap), fmt_n(self.n)))
        log("    " + self.notes["pyroute2"])

    # -- 1b. the loop users write, whole processes ---------------------------------------

    def bench_loop(self) -> None:
        """Read src, dst, sport, dport and state of every flow; every side a whole
        process (`ip netns exec NS ...`, interpreter start-up and import included)."""
        log("1b. reading every flow's src, dst, sport, dport, state (whole processes)")
        env = dict(os.environ, PYTHONPATH=ROOT)

        def py(code: str, *args: str) -> Callable[[], Tuple[float, int]]:
            def fn() -> Tuple[float, int]:
                secs, proc = self.wall(self.exec_argv(sys.executable, "-c", code, *args),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
                return secs, int(proc.stdout.split()[0])
            return fn

        self.best("loop: raw netlink floor (whole process)", py(ctbench.FLOOR_CODE))
        self.best("loop: conntrack -L > /dev/null", self.dump_cli)
        self.best("loop: Flow objects (o=f.orig; o.src..o.dport; f.state)", py(ctbench.LOOP_CODE, "object"))
        self.best("loop: dump_tuples(fields=src,dst,sport,dport,state)", py(ctbench.LOOP_CODE, "tuples"))
        self.best("loop: dump_tuples(..., addresses='int')", py(ctbench.LOOP_CODE, "tuples-int"))

    # -- 2. count ---------------------------------------------------------------------------

    def bench_count(self) -> None:
        assert self.ct is not None
        ct = self.ct
        log("2. count of UNREPLIED entries")

        def ours() -> Tuple[float, int]:
            t0 = time.perf_counter()
            n = ct.count(Filter(unreplied=True))
            return time.perf_counter() - t0, n

        def cli() -> Tuple[float, int]:
            # conntrack(8) has no status filter for "SEEN_REPLY not set" (-u takes only set bits;
            # -L -u UNSET is rejected), so the CLI way is to list and count the [UNREPLIED] lines.
            secs, proc = self.wall(self.exec_argv("sh", "-c", "conntrack -L 2>/dev/null | grep -c UNREPLIED"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            return secs, int(proc.stdout.strip())

        self.best("count: ct.count(Filter(unreplied=True))", ours)
        self.best("count: conntrack -L | grep -c UNREPLIED", cli)

    # -- 3. delete --------------------------------------------------------------------------

    def bench_delete(self) -> None:
        assert self.ct is not None
        ct = self.ct
        log("3. bulk deletes (the deleted entries are re-created after each run; table verified whole)")
        flt_all = Filter(unreplied=True)
        flt_cidr = Filter(**ctbench.CIDR_FILTER_KW)
        log("    Filter(unreplied=True): %s" % flt_all.explain(ct.features))
        log("    Filter(%s): %s" % (", ".join("%s=%r" % kv for kv in ctbench.CIDR_FILTER_KW.items()),
                                    flt_cidr.explain(ct.features)))

        def ours(flt: Filter) -> Callable[[], Tuple[float, int]]:
            def fn() -> Tuple[float, int]:
                before = ct.count()
                t0 = time.perf_counter()
                res = ct.delete(flt)
                secs = time.perf_counter() - t0
                gone = before - ct.count()
                if res.exact and res.deleted != gone:
                    raise RuntimeError("delete reported %d, table lost %d" % (res.deleted, gone))
                return secs, gone
            return fn

        def cli(*sel: str) -> Callable[[], Tuple[float, int]]:
            def fn() -> Tuple[float, int]:
                before = ct.count()
                secs, proc = self.wall(self.exec_argv("conntrack", "-D", *sel),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                reported = ctbench.cli_reported(proc.stderr)
                gone = before - ct.count()
                if reported != gone:
                    raise RuntimeError("conntrack -D reported %d, table lost %d" % (reported, gone))
                return secs, gone
            return fn

        def process(kw: Dict[str, Any]) -> Callable[[], Tuple[float, int]]:
            """The delete in a fresh process (start-up and import timed too), as a user runs it."""
            env = dict(os.environ, PYTHONPATH=ROOT)

            def fn() -> Tuple[float, int]:
                before = ct.count()
                secs, proc = self.wall(self.exec_argv(sys.executable, "-c", ctbench.DELETE_CODE, repr(kw)),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
                gone = before - ct.count()
                return secs, gone
            return fn

        cases = [
            ("unreplied", flt_all, {"unreplied": True}, ("-p", "udp"), ctbench.is_unreplied,
             "delete UNREPLIED: ct.delete(Filter(unreplied=True))", "delete UNREPLIED: conntrack -D -p udp"),
            ("cidr", flt_cidr, ctbench.CIDR_FILTER_KW, ctbench.CIDR_CLI, ctbench.in_cidr_selection,
             "delete CIDR+port: ct.delete(Filter(...))", "delete CIDR+port: conntrack -D " + " ".join(ctbench.CIDR_CLI)),
        ]
        for tag, flt, kw, sel, where, ours_name, cli_name in cases:
            want = ctbench.expected_count(self.n, where)
            proc_name = ours_name.split(":")[0] + ": python process (start-up, import, delete)"
            for name, fn in ((ours_name, ours(flt)), (proc_name, process(kw)), (cli_name, cli(*sel))):
                best = float("inf")
                for i in range(self.repeat):
                    secs, gone = fn()
                    log("    %-60s run %d: %8.3f s  (deleted %s, expected %s)"
                        % (name, i + 1, secs, fmt_n(gone), fmt_n(want)))
                    if gone != want:
                        self.notes["delete_" + tag] = "MISMATCH: %s deleted %d, expected %d" % (name, gone, want)
                        log("    !! " + self.notes["delete_" + tag])
                    best = min(best, secs)
                    self.refill(where, flt)
                self.times[name] = best
                self.entries[name] = gone

    # -- 4. memory --------------------------------------------------------------------------

    def bench_memory(self) -> None:
        assert self.ns is not None
        log("4. memory (fresh process per measurement)")
        out: Dict[str, List[int]] = {}
        for mode in ("stream", "list", "list-orig", "tracemalloc"):
            _secs, proc = self.wall([sys.executable, "-c", ctbench.MEMORY_CODE, mode, self.ns.name],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out[mode] = [int(x) for x in proc.stdout.split()]
            log("    %-12s %s" % (mode, out[mode]))
        n, base, peak, _cur = out["stream"]
        self.memory["stream_peak_growth"] = (peak - base) / MiB
        self.memory["stream_flows"] = n
        n, base, _peak, cur = out["list"]
        self.memory["list_bytes_per_flow"] = (cur - base) / max(n, 1)
        self.memory["list_growth"] = (cur - base) / MiB
        n, base, _peak, cur = out["list-orig"]
        self.memory["list_orig_bytes_per_flow"] = (cur - base) / max(n, 1)
        self.memory["tracemalloc_peak"] = out["tracemalloc"][2] / MiB
        log("    streaming: peak RSS growth %.1f MiB over %s flows (tracemalloc peak of Python "
            "allocations %.0f KiB)" % (self.memory["stream_peak_growth"], fmt_n(self.memory["stream_flows"]),
                                       self.memory["tracemalloc_peak"] * 1024))
        log("    list(ct.dump()): RSS growth %.0f MiB = %.0f bytes per Flow"
            % (self.memory["list_growth"], self.memory["list_bytes_per_flow"]))

    # -- 6. monitoring scrape --------------------------------------------------------------

    def bench_scrape(self) -> None:
        """What one Prometheus scrape of this table costs (read-only)."""
        assert self.ns is not None
        try:
            from conntrack.exporter import ConntrackCollector
            ConntrackCollector(netns=[self.ns.name])
        except Exception as exc:  # prometheus_client missing: say so, measure the rest
            self.notes["scrape"] = "exporter scrape not measured: %s" % exc
            log("6. " + self.notes["scrape"])
            return
        log("6. one exporter scrape: default (netlink counters, no dump) and with --breakdown (served from the "
            "cache a background thread refreshes; its dump timed apart)")
        default = ConntrackCollector(netns=[self.ns.name])
        cached = ConntrackCollector(netns=[self.ns.name], breakdown=True, breakdown_interval=3600)
        try:
            deadline = time.monotonic() + 600
            while cached.breakdown_refreshes < 1:  # the first refresh (one dump) has ended
                if time.monotonic() > deadline:
                    raise RuntimeError("the breakdown thread did not finish a refresh in 600 s")
                time.sleep(0.1)
            for name, collector in (("scrape: exporter, default (no dump)", default),
                                    ("scrape: exporter, --breakdown (served from cache)", cached)):
                def scrape(c: Any = collector) -> Tuple[float, int]:
                    t0 = time.perf_counter()
                    samples = sum(len(m.samples) for m in c.collect())
                    return time.perf_counter() - t0, samples
                self.best(name, scrape)
        finally:
            cached.close()
        assert self.ct is not None
        ct = self.ct

        def refresh() -> Tuple[float, int]:
            t0 = time.perf_counter()
            top, summary = ct.top_and_summary("src", 10)
            return time.perf_counter() - t0, summary.total
        self.best("scrape: --breakdown refresh, one dump (background thread)", refresh)
        argv = ["sh", "-c", "ip netns exec %s conntrack -C && ip netns exec %s conntrack -S >/dev/null"
                % (self.ns.name, self.ns.name)]
        self.best("scrape: conntrack -C && conntrack -S (entries and stats only)",
                  lambda: (self.wall(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)[0], 0))

    # -- 8. top talkers ----------------------------------------------------------------------

    TOP_AWK = ("conntrack -L 2>/dev/null | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^src=/) {print $i; break}}' "
               "| sort | uniq -c | sort -rn | head -20")

    def bench_top(self) -> None:
        """Who fills the table: the 20 most frequent sources, ours against the shell pipeline."""
        assert self.ct is not None and self.ns is not None
        ct = self.ct
        log("8. top 20 sources (%s)" % self.TOP_AWK)
        env = dict(os.environ, PYTHONPATH=ROOT)

        def ours() -> Tuple[float, int]:
            t0 = time.perf_counter()
            t = ct.top("src", 20)
            return time.perf_counter() - t0, t[0][1]

        def cli_ours() -> Tuple[float, int]:
            secs, proc = self.wall(self.exec_argv(sys.executable, "-m", "conntrack", "top", "--by", "src",
                                                  "--limit", "20"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            return secs, int(proc.stdout.split()[0])

        def pipeline() -> Tuple[float, int]:
            secs, proc = self.wall(self.exec_argv("sh", "-c", self.TOP_AWK),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            return secs, int(proc.stdout.split()[0])

        a = self.best("top: ct.top('src', 20)", ours)
        b = self.best("top: pyconntrack top --by src --limit 20", cli_ours)
        c = self.best("top: conntrack -L | awk | sort | uniq -c | sort -rn | head", pipeline)
        if not a == b == c:
            self.notes["top"] = "MISMATCH: top source counts %d (ct.top), %d (pyconntrack), %d (pipeline)" % (a, b, c)
            log("    !! " + self.notes["top"])
        _secs, proc = self.wall([sys.executable, "-c", self.TOP_MEMORY_CODE, self.ns.name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        distinct, before, after = (int(x) for x in proc.stdout.split())
        self.memory["top_peak_growth"] = (after - before) / 1024
        self.notes["top_keys"] = ("top: %s distinct sources among %s entries; peak RSS growth of ct.top('src') "
                                  "in a fresh process: %.1f MiB (the C hash table holds one slot per distinct "
                                  "key, not per entry)" % (fmt_n(distinct), fmt_n(self.n),
                                                           self.memory["top_peak_growth"]))
        log("    " + self.notes["top_keys"])

    TOP_MEMORY_CODE = r"""
import resource, sys
import conntrack
with conntrack.Conntrack(sys.argv[1]) as ct:
    ct.count()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = ct.top("src", 20)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(t.distinct, before, after)
"""

    # -- 7. events ---------------------------------------------------------------------------

    EVENTS_CODE = r"""
import sys
import conntrack
from conntrack import EventType, Filter
n = 0
with conntrack.Conntrack() as ct:
    print("ready", flush=True)
    for ev in ct.events(Filter(mark=0x7777), types=EventType.NEW, idle_timeout=3.0):
        if ev.type == EventType.NEW:
            n += 1
print(n, flush=True)
"""

    def bench_events(self, burst: int = 200_000) -> None:
        """A burst of NEW events: how many each listener receives (each alone, in turn)."""
        assert self.ct is not None and self.ns is not None
        log("7. a burst of %s NEW events (create_many), received by each listener in turn" % fmt_n(burst))
        env = dict(os.environ, PYTHONPATH=ROOT)
        flows = [conntrack.Flow(proto="udp", src="2001:db8:%x:%x::1" % (k >> 16, k & 0xFFFF), dst="2001:db8::53",
                                sport=1000, dport=53, timeout=600, mark=0x7777) for k in range(burst)]
        listeners = [
            ("events: ct.events() (256 MiB buffer)", [sys.executable, "-c", self.EVENTS_CODE]),
            ("events: conntrack -E -e NEW (defaults)", ["conntrack", "-E", "-e", "NEW", "-f", "ipv6"]),
            ("events: conntrack -E -e NEW -b 268435456", ["conntrack", "-E", "-e", "NEW", "-f", "ipv6",
                                                          "-b", "268435456"]),
        ]
        for name, argv in listeners:
            self.ensure_max()
            # output to a file, as `conntrack -E > file` would: a pipe nobody drains
            # during the burst would stall the CLI and make it lose more
            with tempfile.TemporaryFile("w+") as out:
                proc = subprocess.Popen(self.exec_argv(*argv), stdout=out, stderr=subprocess.DEVNULL,
                                        text=True, env=env)
                if argv[0] == sys.executable:
                    while "ready" not in _read_all(out):  # subscribed
                        time.sleep(0.05)
                time.sleep(1.0)
                t0 = time.perf_counter()
                made = self.ct.create_many(flows)
                secs = time.perf_counter() - t0
                if argv[0] == sys.executable:
                    proc.wait(120)
                    got = int(_read_all(out).split()[-1])
                else:
                    time.sleep(3.0)
                    proc.send_signal(signal.SIGINT)
                    proc.wait(60)
                    got = sum(1 for line in _read_all(out).splitlines() if line.lstrip().startswith("[NEW]"))
            self.events[name] = (got, made)
            log("    %-60s %8s of %s received (%.0f%%); burst took %.2f s"
                % (name, fmt_n(got), fmt_n(made), 100.0 * got / max(made, 1), secs))
            self.ct.delete(conntrack.Filter(mark=0x7777))

    def bench_event_filter(self, burst: int = 200_000, rcvbuf: int = 256 * 1024) -> None:
        """A burst in which 1% of the entries match a stream's filter, read by one
        consumer thread with a small receive buffer: events lost with the
        kernel-side (socket BPF) filter and with the C check alone."""
        assert self.ct is not None and self.ns is not None
        log("9. a burst of %s NEW events, 1%% matching, %d KiB buffer: lost with/without the kernel filter"
            % (fmt_n(burst), rcvbuf // 1024))
        flows = [conntrack.Flow(proto="udp", src="2001:db8:%x:%x:%x::1" % (0xff if k % 100 == 0 else 1, k >> 16,
                                                                         k & 0xFFFF),
                                dst="2001:db8::53", sport=1000, dport=53, timeout=600, mark=0x7778)
                 for k in range(burst)]
        wanted = Filter(src="2001:db8:ff::/48")
        matching = sum(1 for k in range(burst) if k % 100 == 0)
        for name, features in (("kernel (BPF) + C filter", None),
                               ("C filter only", conntrack.KernelFeatures.none())):
            self.ensure_max()
            with conntrack.Conntrack(self.ns.name, features=features) as ct:
                log("    %s: %s" % (name, wanted.explain(ct.features, events=True)))
                stream = ct.events(wanted, types=conntrack.EventType.NEW, rcvbuf=rcvbuf, idle_timeout=3.0)
                got = [0]
                reader = threading.Thread(target=_count_new, args=(stream, got))
                reader.start()
                t0 = time.perf_counter()
                made = self.ct.create_many(flows)
                secs = time.perf_counter() - t0
                reader.join(120)
                label = "event filter: " + name
                self.events[label + ", matching"] = (got[0], matching)
                self.notes[label] = "%s: %d events lost (SK_MEMINFO_DROPS), %d overflows" % (
                    label, stream.lost or 0, stream.overflows)
                log("    %-40s %6s of %s matching received, %s events lost, %d overflows; burst of %s took %.2f s"
                    % (name, fmt_n(got[0]), fmt_n(matching), fmt_n(stream.lost or 0), stream.overflows,
                       fmt_n(made), secs))
            self.ct.delete(conntrack.Filter(mark=0x7778))

    # -- 5. buckets -------------------------------------------------------------------------

    def bench_buckets(self) -> None:
        if not ctbench.sysctl_writable("nf_conntrack_buckets"):
            self.notes["buckets"] = "nf_conntrack_buckets is read-only here; not measured"
            log("5. " + self.notes["buckets"])
            return
        old = ctbench.read_sysctl("nf_conntrack_buckets")
        new = max(self.n, old)
        if new == old:
            self.notes["buckets"] = "nf_conntrack_buckets (%d) already >= N; not measured" % old
            log("5. " + self.notes["buckets"])
            return
        self.saved.setdefault("nf_conntrack_buckets", old)
        log("5. hash buckets: %d -> %d (chains %.1f -> %.1f), dump re-measured" % (old, new, self.n / old, self.n / new))
        ctbench.write_sysctl("nf_conntrack_buckets", new)
        self.wrote["nf_conntrack_buckets"] = new
        try:
            self.table_ok()
            self.bench_dump(suffix=" [buckets=N]")
        finally:
            ctbench.write_sysctl("nf_conntrack_buckets", old)
            self.wrote["nf_conntrack_buckets"] = old
            log("   nf_conntrack_buckets restored to %d" % old)

    # -- report -----------------------------------------------------------------------------

    def report(self) -> str:
        t = self.times
        lines: List[str] = []
        add = lines.append
        add("")
        add("machine: %s" % machine())
        add("table: %s entries (%s UNREPLIED UDP, %s ESTABLISHED/ASSURED TCP), best of %d runs"
            % (fmt_n(self.n), fmt_n(ctbench.expected_count(self.n, ctbench.is_unreplied)),
               fmt_n(self.n - ctbench.expected_count(self.n, ctbench.is_unreplied)), self.repeat))
        add("")
        add("%-66s %10s %12s" % ("measurement", "seconds", "entries"))
        add("-" * 90)
        for name, secs in t.items():
            add("%-66s %10.3f %12s" % (name, secs, fmt_n(self.entries.get(name, 0))))
        add("")
        add("%-52s %9s %9s %8s %10s  %s" % ("comparison (ratio = ours / reference)", "ours s", "ref s",
                                            "ratio", "target", "result"))
        add("-" * 102)
        cmp_rows = [
            ("full dump (count only) vs raw floor", "dump: conntrack, count only", "dump: raw netlink floor", 1.3),
            ("full dump (f.status read) vs raw floor", "dump: conntrack, f.status read",
             "dump: raw netlink floor", 1.3),
            ("full dump (count only) vs conntrack -L", "dump: conntrack, count only",
             "dump: conntrack -L > /dev/null", 1.0),
            ("full dump (f.status read) vs conntrack -L", "dump: conntrack, f.status read",
             "dump: conntrack -L > /dev/null", 1.0),
            ("full dump (f.status read) vs pyroute2 (extrapolated)", "dump: conntrack, f.status read",
             "dump: pyroute2 dump_entries (extrapolated)", None),
            ("count UNREPLIED vs conntrack -L | grep -c", "count: ct.count(Filter(unreplied=True))",
             "count: conntrack -L | grep -c UNREPLIED", 0.5),
            ("delete all UNREPLIED vs conntrack -D -p udp", "delete UNREPLIED: ct.delete(Filter(unreplied=True))",
             "delete UNREPLIED: conntrack -D -p udp", 0.2),
            ("delete CIDR+port vs conntrack -D (same selection)", "delete CIDR+port: ct.delete(Filter(...))",
             "delete CIDR+port: conntrack -D " + " ".join(ctbench.CIDR_CLI), 1 / 3),
            ("delete UNREPLIED, whole process vs conntrack -D",
             "delete UNREPLIED: python process (start-up, import, delete)", "delete UNREPLIED: conntrack -D -p udp", 0.2),
            ("delete CIDR+port, whole process vs conntrack -D",
             "delete CIDR+port: python process (start-up, import, delete)",
             "delete CIDR+port: conntrack -D " + " ".join(ctbench.CIDR_CLI), 1 / 3),
            ("loop: Flow objects vs raw floor (whole processes)", "loop: Flow objects (o=f.orig; o.src..o.dport; f.state)",
             "loop: raw netlink floor (whole process)", 1.3),
            ("loop: Flow objects vs conntrack -L", "loop: Flow objects (o=f.orig; o.src..o.dport; f.state)",
             "loop: conntrack -L > /dev/null", 0.75),
            ("loop: dump_tuples vs raw floor (whole processes)", "loop: dump_tuples(fields=src,dst,sport,dport,state)",
             "loop: raw netlink floor (whole process)", 1.15),
            ("loop: dump_tuples addresses='int' vs raw floor", "loop: dump_tuples(..., addresses='int')",
             "loop: raw netlink floor (whole process)", 1.15),
            ("top --by src (CLI) vs conntrack -L | awk | sort | uniq -c", "top: pyconntrack top --by src --limit 20",
             "top: conntrack -L | awk | sort | uniq -c | sort -rn | head", 0.2),
            ("scrape, default vs conntrack -C && conntrack -S", "scrape: exporter, default (no dump)",
             "scrape: conntrack -C && conntrack -S (entries and stats only)", 1.0),
            ("[buckets=N] dump (f.status read) vs raw floor", "dump: conntrack, f.status read [buckets=N]",
             "dump: raw netlink floor [buckets=N]", 1.3),
        ]
        for label, ours, ref, target in cmp_rows:
            if ours not in t or ref not in t:
                continue
            ratio = t[ours] / t[ref]
            if target is None:
                tgt, res = "(info)", ""
            else:
                strict = target == 1.0
                ok = ratio < target if strict else ratio <= target
                tgt = ("< %.2fx" if strict else "<= %.2fx") % target
                res = "PASS" if ok else "MISS"
            add("%-52s %9.3f %9.3f %7.2fx %10s  %s" % (label, t[ours], t[ref], ratio, tgt, res))
        if "stream_peak_growth" in self.memory:
            g = self.memory["stream_peak_growth"]
            scale = "" if self.n == 1_000_000 else " (target is for 1M entries; N=%s)" % fmt_n(self.n)
            add("%-52s %8.1f MiB %19s %10s  %s%s" % ("streaming dump: peak RSS growth", g, "", "< 64 MiB",
                                                     "PASS" if g < 64 else "MISS", scale))
            add("%-52s %8.0f B  %19s %10s" % ("list(ct.dump()): RSS growth per Flow held",
                                              self.memory["list_bytes_per_flow"], "", "(info)"))
            add("%-52s %8.0f B  %19s %10s" % ("list(ct.dump()), every f.orig read: RSS per Flow",
                                              self.memory["list_orig_bytes_per_flow"], "", "(info)"))
            add("%-52s %8.0f KiB %19s %10s" % ("streaming dump: tracemalloc peak (Python heap)",
                                               self.memory["tracemalloc_peak"] * 1024, "", "(info)"))
        for name, (got, made) in self.events.items():
            add("%-52s %9s of %s (%.0f%%)" % (name + " received", fmt_n(got), fmt_n(made), 100.0 * got / max(made, 1)))
        add("")
        add("entries column: what each run saw (dump: flows/messages read; count: the count; delete: entries"
            " removed, checked against the table's counter and the expected number)")
        add("CIDR+port selection: Filter(%s) vs conntrack -D %s (conntrack(8) 1.4.7 takes no port ranges,"
            " so both use one port)" % (", ".join("%s=%r" % kv for kv in ctbench.CIDR_FILTER_KW.items()),
                                        " ".join(ctbench.CIDR_CLI)))
        add("UNREPLIED count reference: conntrack(8) has no status filter for 'SEEN_REPLY not set' "
            "(-L -u UNSET is refused), so the CLI lists and greps")
        add("reference timings are wall-clock of `ip netns exec NS ...` subprocesses; ours are in-process "
            "perf_counter; the raw floor and pyroute2 are timed inside their own process (startup excluded); "
            "the loop: rows and the 'python process' deletes are whole processes (start-up and import included)")
        add("the kernel's conntrack hash is one for all namespaces: other namespaces' entries slow every dump "
            "and flush here; host entries outside this namespace at the start: %s" % self.notes_other())
        for v in self.notes.values():
            add("note: " + v)
        return "\n".join(lines)


def _count_new(stream: conntrack.EventStream, got: List[int]) -> None:
    """A consumer: count the stream's NEW events into got[0]."""
    for ev in stream:
        got[0] += ev.type == conntrack.EventType.NEW


def _read_all(fh: Any) -> str:
    fh.seek(0)
    return str(fh.read())


def _pyroute2_version() -> str:
    try:
        from importlib.metadata import version
        return version("pyroute2")
    except Exception:
        return "?"


def machine() -> str:
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    cli = subprocess.run(["conntrack", "--version"], capture_output=True, text=True).stdout.strip()
    return "nproc=%d, memory=%.1f GiB, kernel %s, libnetfilter_conntrack %s, %s, Python %s" % (
        os.cpu_count() or 0, mem_kb / (1 << 20), platform.release(), conntrack.nfct_version(),
        cli or "conntrack(8) ?", platform.python_version())


def restore_sysctls(saved: Dict[str, int], wrote: Optional[Dict[str, int]] = None) -> None:
    """Write back what the run found, where the value is still the one the run
    wrote: if another process changed it since (a test that lowers the max for
    a moment and puts its own value back), restoring ours would undo theirs."""
    for name, value in list(saved.items()):
        try:
            now = ctbench.read_sysctl(name)
            if now == value:
                continue
            if wrote is not None and name in wrote and now != wrote[name]:
                log("%s is %d, changed by another process since this run set %d: left as it is (found %d)"
                    % (name, now, wrote[name], value))
                continue
            ctbench.write_sysctl(name, value)
            log("%s restored to %d" % (name, value))
        except OSError as exc:  # keep restoring the others
            log("!! could not restore %s to %d: %s" % (name, value, exc))


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000, help="table size N (default 1,000,000)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement, best kept (default 2)")
    ap.add_argument("--pyroute2-cap", type=int, default=100_000,
                    help="entries pyroute2 reads before the time is extrapolated (0 skips it)")
    ap.add_argument("--no-buckets", action="store_true",
                    help="skip re-measuring the dump with nf_conntrack_buckets raised to N")
    ap.add_argument("--json", metavar="PATH", help="also write the raw numbers as JSON")
    ap.add_argument("--sections", default="dump,loop,count,delete,memory,scrape,top,events,evfilter,buckets",
                    help="comma-separated sections to run (default: all)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark makes a network namespace and raises nf_conntrack_max")
    for tool in ("ip", "conntrack"):
        if shutil.which(tool) is None:
            sys.exit("%s not found (make sysdeps)" % tool)
    if args.entries < 2:
        sys.exit("--entries: need at least 2")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    log("machine: %s" % machine())
    b = Bench(args)
    try:
        sections = set(args.sections.split(","))
        b.setup()
        for name, fn in (("dump", b.bench_dump), ("loop", b.bench_loop), ("count", b.bench_count),
                         ("delete", b.bench_delete), ("memory", b.bench_memory), ("scrape", b.bench_scrape),
                         ("top", b.bench_top), ("events", b.bench_events), ("evfilter", b.bench_event_filter)):
            if name in sections:
                fn()
        if "buckets" in sections and not args.no_buckets:
            b.bench_buckets()
        report = b.report()
        log(report)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"machine": machine(), "entries": b.n, "repeat": b.repeat, "times": b.times,
                           "entries_seen": b.entries, "memory": b.memory, "notes": b.notes}, fh, indent=2)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        b.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
