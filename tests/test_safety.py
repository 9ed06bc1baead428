"""Delete safety and handles that fail loudly (issue 12, sections 1 and 2).

Every test here runs against the real kernel in a throwaway namespace,
except the pure Filter checks at the top.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import pytest
from helpers import Netns

import conntrack
from conntrack import (
    DeleteInterrupted,
    Filter,
    Flow,
    HandleClosed,
    KernelFeatures,
    MatchesEverything,
    NotANamespace,
    TimedOut,
    WrongOwner,
    _binding,
    sysctl,
)
from conntrack.errors import DumpInterrupted
from conntrack.netns import run_in


def _udp(i: int, **kw) -> Flow:
    return Flow(proto="udp", src="10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255), dst="10.255.0.1",
                sport=1000 + i % 50000, dport=53, timeout=600, **kw)


# -- Filter: matches_everything and contradictions (no kernel) -----------------------------------


@pytest.mark.parametrize("kw", [{}, {"mark": (0, 0)}, {"mark": "0/0"}, {"status": 0}, {"status": []},
                                {"labels": []}, {"labels": 0},
                                {k: None for k in ("family", "proto", "src", "sport", "state", "status",
                                                   "unreplied", "assured", "mark", "zone", "labels")}])
def test_filters_that_restrict_nothing_match_everything(kw):
    assert Filter(**kw).matches_everything


@pytest.mark.parametrize("kw", [{"proto": "tcp"}, {"mark": "0/1"}, {"status": "ASSURED"}, {"labels": [0]},
                                {"unreplied": False}, {"zone": 0}, {"family": "ipv6"}, {"src": "0.0.0.0/0"},
                                {"sport": (0, 65535)}, {"snat": False}])
def test_filters_that_restrict_something_do_not(kw):
    assert not Filter(**kw).matches_everything


@pytest.mark.parametrize("kw", [
    {"unreplied": True, "status": "SEEN_REPLY"},
    {"assured": False, "status": "ASSURED"},
    {"snat": False, "status": "SRC_NAT|SEEN_REPLY"},
    {"dnat": False, "status": "DST_NAT"},
    {"mark": "0x10/0xf"},
    {"mark": "5/4"},
    {"mark": (5, 0)},
    {"proto": "icmp", "dport": 80},
])
def test_contradictory_filters_raise_instead_of_widening(kw):
    with pytest.raises(ValueError):
        Filter(**kw)


# -- delete refuses a filter that matches everything ---------------------------------------------


def test_delete_refuses_filters_that_match_everything(ns_ct):
    ns_ct.create_many([_udp(i) for i in range(50)])
    for flt in (Filter(), Filter(mark="0/0"), Filter(status=0), Filter(status=[]), Filter(labels=[]),
                Filter(labels=0), Filter(proto=None, mark=None)):
        for dry_run in (False, True):
            with pytest.raises(MatchesEverything):
                ns_ct.delete(flt, dry_run=dry_run)
    with pytest.raises(ValueError):  # all=True is for the whole table, not a restricting filter
        ns_ct.delete(Filter(proto="udp"), all=True)
    assert ns_ct.count() == 50
    result = ns_ct.delete(Filter(mark="0/0"), all=True)
    assert result.deleted == 50 and ns_ct.count() == 0
    ns_ct.create_many([_udp(i) for i in range(7)])
    assert ns_ct.delete(all=True).deleted == 7 and ns_ct.count() == 0


def test_contradictory_mark_matches_what_conntrack8_matches(ns_ct):
    """conntrack -L --mark 0x10/0xf lists nothing; the library refuses the filter rather than widen it."""
    ns_ct.create_many([_udp(i, mark=i % 0x20) for i in range(64)])
    with pytest.raises(ValueError):
        Filter(mark="0x10/0xf")
    assert ns_ct.count() == 64


# -- Ctrl-C during a bulk delete ------------------------------------------------------------------


def test_ctrl_c_during_a_batch_delete_reports_what_was_deleted(netns):
    """SIGINT to this process while a big batch delete runs: the partial result reaches the caller
    and equals what the kernel lost."""
    total = 40000
    armed = threading.Event()

    def on_sigint(signum, frame):
        if armed.is_set():  # only inside delete(): never interrupt pytest itself
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with conntrack.Conntrack(netns.name, features=KernelFeatures.none()) as ct:
            for _attempt in range(5):
                ct.flush()
                assert ct.create_many([_udp(i) for i in range(total)]) == total
                stop = threading.Event()

                def watch(stop: threading.Event = stop) -> None:
                    with conntrack.Conntrack(netns.name) as mine:
                        while not stop.is_set():
                            if mine.count() < total:  # the delete is under way: interrupt it
                                os.kill(os.getpid(), signal.SIGINT)
                                return
                            time.sleep(0.001)

                watcher = threading.Thread(target=watch)
                armed.set()
                watcher.start()
                caught = None
                try:
                    ct.delete(Filter(proto="udp"))
                except DeleteInterrupted as exc:
                    caught = exc
                finally:
                    armed.clear()
                    stop.set()
                    watcher.join(60)
                if caught is None:
                    continue  # the delete finished before the signal landed: try again
                assert isinstance(caught, KeyboardInterrupt)
                lost = total - ct.count()
                result = caught.result
                assert result.method == "batch" and result.vanished == 0
                assert result.deleted == lost
                assert 0 < lost < total, lost
                return
            pytest.fail("SIGINT never landed inside a 40,000-entry batch delete in 5 attempts")
    finally:
        signal.signal(signal.SIGINT, previous)


# -- NLM_F_DUMP_INTR ------------------------------------------------------------------------------


def _inject_dump_intr(monkeypatch, netns_name: str) -> list:
    """Make every dump socket receive an NLMSG_DONE flagged NLM_F_DUMP_INTR right after the kernel's
    first reply.

    A fake for what the kernel cannot do here: ctnetlink's table dump never sets ``cb->seq``, so
    ``nl_dump_check_consistent`` never flags a conntrack dump (checked in nf_conntrack_netlink.c,
    6.x).
    """
    # NLMSG_DONE, NLM_F_MULTI|DUMP_INTR
    return _inject_after_first_reply(monkeypatch, netns_name,
                                     lambda seq, portid: struct.pack("=IHHIIi", 20, 3, 0x2 | 0x10, seq, portid, 0))


def _inject_after_first_reply(monkeypatch, netns_name: str, message) -> list:
    """Make every dump socket receive ``message(seq, portid)`` right after the kernel's first reply.

    The message comes from a real netlink socket in the same namespace (userspace unicast to the
    dump socket's port id), addressed (``nlmsg_pid``) to that port id as the kernel's is, so the C
    dump loop reads it exactly as it would read the kernel's.
    """
    injector = run_in(netns_name, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12))
    injector.bind((0, 0))
    original = _binding.Socket._start_dump
    injected: list = []

    def start_and_inject(self, *request):
        sock = original(self, *request)
        peek = socket.socket(fileno=os.dup(sock.fileno()))
        try:
            head = peek.recv(16, socket.MSG_PEEK)  # the kernel's first reply is queued at the request
            _len, _type, _flags, seq, _pid = struct.unpack("=IHHII", head)
            portid = peek.getsockname()[0]
        finally:
            peek.close()
        injector.sendto(message(seq, portid), (portid, 0))
        injected.append(seq)
        return sock

    monkeypatch.setattr(_binding.Socket, "_start_dump", start_and_inject)
    return injected


def test_an_interrupted_dump_is_reported_and_a_batch_delete_is_not_exact(netns, monkeypatch):
    n = 5000  # several receive buffers' worth, so the injected DONE ends the dump early
    with conntrack.Conntrack(netns.name, features=KernelFeatures.none()) as ct:
        ct.create_many([_udp(i) for i in range(n)])
        injected = _inject_dump_intr(monkeypatch, netns.name)
        with pytest.warns(DumpInterrupted) as told:
            seen = sum(1 for _ in ct.dump(Filter(proto="udp")))
        assert told[0].filename == __file__  # the warning points at the caller's loop
        with pytest.warns(DumpInterrupted) as told:
            rows = sum(1 for _ in ct.dump_tuples(Filter(proto="udp"), fields=("sport",)))
        assert told[0].filename == __file__ and 0 < rows < n
        with pytest.warns(DumpInterrupted):
            counted = ct.count(Filter(proto="udp"))
        result = ct.delete(Filter(proto="udp"))
        assert len(injected) == 4
        assert 0 < seen < n and 0 < counted < n
        assert result.interrupted and not result.exact
        monkeypatch.undo()
        assert result.deleted == n - ct.count()
        assert ct.count() > 0  # what the interrupted dump missed is still there, as reported
        with warnings.catch_warnings():
            warnings.simplefilter("error", DumpInterrupted)
            final = ct.delete(Filter(proto="udp"))
        assert final.exact and not final.interrupted and ct.count() == 0


def test_a_dump_that_fails_half_way_raises_and_leaves_no_thread(netns, monkeypatch):
    """The prefetching worker hands the error to the consumer and is joined before it is raised.
    The error is an NLMSG_ERROR (ENOMEM) in the dump's sequence, as the kernel sends when a dump
    fails part-way; here it is injected (the kernel does not fail on demand)."""
    with conntrack.Conntrack(netns.name, features=KernelFeatures.none()) as ct:
        ct.create_many([_udp(i) for i in range(5000)])
        injected = _inject_after_first_reply(
            monkeypatch, netns.name,
            lambda seq, portid: struct.pack("=IHHIIi", 36, 2, 0, seq, portid, -errno.ENOMEM) + bytes(16))  # NLMSG_ERROR
        for prefetch in (True, False):
            before = threading.active_count()
            seen = 0
            with pytest.raises(OSError) as caught:
                for _ in ct.dump(prefetch=prefetch):
                    seen += 1
            assert caught.value.errno == errno.ENOMEM and "dump" in str(caught.value)
            assert seen < 5000  # the records read with the failed batch are dropped with it
            assert threading.active_count() == before  # joined, not merely told to stop
        assert len(injected) == 2
        monkeypatch.undo()
        assert ct.count(Filter(proto="udp")) == 5000


# -- handles that fail loudly ---------------------------------------------------------------------


def _every_call(ct):
    f = _udp(1)
    return {
        "dump": lambda: ct.dump(), "count": lambda: ct.count(Filter(proto="tcp")), "count()": ct.count,
        "summary": ct.summary, "get": lambda: ct.get(f), "create": lambda: ct.create(f),
        "create_many": lambda: ct.create_many([f]), "update": lambda: ct.update(f, mark=1),
        "delete": lambda: ct.delete(f), "delete(filter)": lambda: ct.delete(Filter(proto="udp")),
        "flush": ct.flush, "stats": ct.stats, "limit": ct.limit, "events": lambda: ct.events(),
    }


def test_every_method_of_a_closed_handle_raises(netns):
    other = conntrack.Conntrack()  # another namespace may get the closed handle's fd number
    a = conntrack.Conntrack(netns.name)
    a.create(_udp(1))
    a.close()
    b = conntrack.Conntrack(netns.name)
    try:
        for name, call in _every_call(a).items():
            with pytest.raises(HandleClosed):
                call()
                pytest.fail("%s on a closed handle did not raise" % name)
        assert b.count() == 1
    finally:
        b.close()
        other.close()


def test_a_closed_handle_never_reads_another_namespace(netns):
    """The issue's case: a's namespace fd number is reused by b; a must not count b's table."""
    other = Netns()
    try:
        a = conntrack.Conntrack(netns.name)
        a.close()
        with conntrack.Conntrack(other.name) as b:
            b.create(Flow(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60))
            assert b.count(Filter(proto="tcp")) == 1
            with pytest.raises(HandleClosed):
                a.count(Filter(proto="tcp"))
            with pytest.raises(HandleClosed):
                list(a.dump())
    finally:
        other.delete()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_dropped_handle_closes_its_descriptors_and_warns(netns):
    gc.collect()
    before = _fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(200):
            conntrack.Conntrack(netns.name).count()
        gc.collect()
    assert _fds() <= before + 2  # 200 handles would hold 400 descriptors without the finalizer
    assert sum(1 for w in caught if issubclass(w.category, ResourceWarning)) == 200
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with conntrack.Conntrack(netns.name) as ct:  # a closed handle never warns
            ct.count()
        del ct
        gc.collect()


def test_another_thread_gets_a_clear_error_and_can_close(ns_ct):
    box: dict = {}

    def use() -> None:
        try:
            ns_ct.count(Filter(proto="udp"))
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=use)
    t.start()
    t.join(60)
    assert not t.is_alive() and isinstance(box.get("error"), WrongOwner)
    closer = threading.Thread(target=ns_ct.close)
    closer.start()
    closer.join(60)
    assert not closer.is_alive() and ns_ct.closed
    with pytest.raises(HandleClosed):
        ns_ct.count()


def test_a_forked_child_gets_a_clear_error(ns_ct):
    ns_ct.create(_udp(1))
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            ns_ct.count(Filter(proto="udp"))
            code = 1
        except WrongOwner:
            code = 0
        except BaseException:
            code = 2
        os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung using the parent's handle")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert ns_ct.count(Filter(proto="udp")) == 1  # the parent's handle still works


def _drop_everything(fd: int) -> None:
    """Attach a classic BPF program that drops every message this socket would receive."""
    insn = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0))  # BPF_RET | BPF_K, 0
    prog = struct.pack("@HP", 1, ctypes.addressof(insn))
    s = socket.socket(fileno=os.dup(fd))
    try:
        s.setsockopt(socket.SOL_SOCKET, 26, prog)  # SO_ATTACH_FILTER
    finally:
        s.close()


def test_a_kernel_that_never_answers_times_out(netns):
    with conntrack.Conntrack(netns.name, timeout=0.5) as ct:
        assert ct.limit() > 0
        _drop_everything(ct._sock.fileno())  # the kernel's answers never reach the socket now
        with pytest.raises(TimedOut):
            ct.limit()
        with pytest.raises(TimedOut):
            ct.create(_udp(1))


def test_a_fifo_or_a_file_is_not_a_network_namespace():
    with tempfile.TemporaryDirectory() as d:
        fifo = os.path.join(d, "fifo")
        os.mkfifo(fifo)
        plain = os.path.join(d, "plain")
        open(plain, "w").close()
        box: dict = {}

        def open_fifo() -> None:
            try:
                conntrack.Conntrack(fifo)
            except BaseException as exc:
                box["error"] = exc

        t = threading.Thread(target=open_fifo, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "Conntrack(fifo) blocked"
        assert isinstance(box["error"], NotANamespace)
        for path in (plain, "/proc/self/ns/mnt"):
            with pytest.raises(NotANamespace, match="not a network namespace"):
                conntrack.Conntrack(path)
        fd = os.open(plain, os.O_RDONLY)
        try:
            with pytest.raises(NotANamespace):
                conntrack.Conntrack(fd)
        finally:
            os.close(fd)


@pytest.mark.parametrize("kind", ["Socket", "EventSocket"])
def test_both_sockets_say_why_they_cannot_enter_a_namespace(kind):
    """ctpy_open's setns() into a descriptor that is not a network namespace: EINVAL from the
    kernel, with the socket named (the handle checks its descriptor before; this is the binding's
    own mapping, the same for both kinds of socket)."""
    with tempfile.TemporaryFile() as plain:
        if kind == "Socket":
            with pytest.raises(OSError, match="cannot open a ctnetlink socket") as caught:
                _binding.Socket(plain.fileno())
        else:
            with pytest.raises(OSError, match="cannot open a ctnetlink event socket") as caught:
                _binding.EventSocket(plain.fileno(), _binding.EV_NEW, 1 << 20)
    assert caught.value.errno == errno.EINVAL


_STUCK = """
import os, sys, threading
import conntrack
from conntrack import _binding
box = {}

def make():  # a namespace owned by this process's user namespace: entering it is allowed
    _binding.unshare_netns()
    box["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

t = threading.Thread(target=make)
t.start()
t.join()
before = os.readlink("/proc/thread-self/ns/net")
try:
    if sys.argv[1] == "events":
        _binding.EventSocket(box["fd"], _binding.EV_NEW, 1 << 20)
    else:
        conntrack.Conntrack(box["fd"])
    print("opened")
except Exception as exc:
    print("%s|%s|%s" % (type(exc).__name__, getattr(exc, "errno", None), exc))
print(os.readlink("/proc/thread-self/ns/net") != before)
"""


@pytest.mark.userns
@pytest.mark.parametrize("kind", ["handle", "events"])
def test_a_thread_that_cannot_come_back_from_the_namespace_is_an_error_that_says_so(netns, kind):
    """Real kernel behaviour: in a new user namespace, a process may enter a network namespace it
    made, but not its own one again (that one belongs to the parent user namespace), so
    ctpy_open's setns() back fails and the thread stays in the other namespace.  Both kinds of
    socket say so (the event socket used to say EIO)."""
    out = subprocess.run(["ip", "netns", "exec", netns.name, "unshare", "--user", "--map-root-user",
                          sys.executable, "-c", _STUCK, kind], capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 2, (out.stdout, out.stderr)
    name, err, text = lines[0].split("|", 2)
    what = "cannot open a ctnetlink event socket" if kind == "events" else "cannot open a ctnetlink socket"
    assert (name, err) == ("ConntrackError", "None"), lines[0]
    assert text.startswith(what + ": the thread entered the network namespace but could not return"), text
    assert lines[1] == "True"  # it did stay there, as the message says


def test_bad_descriptors_and_sizes_are_value_errors(ns_ct):
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    os.close(fd)
    with pytest.raises(ValueError):
        conntrack.Conntrack(fd)
    with pytest.raises(ValueError):
        conntrack.Conntrack(2**40)
    with pytest.raises(ValueError):
        conntrack.Conntrack(-1)
    with pytest.raises(ValueError):
        ns_ct.events(rcvbuf=2**31)
    with pytest.raises(ValueError):
        conntrack.Conntrack(timeout=0)


def test_set_max_as_nobody_names_the_missing_privilege(netns):
    """In the host namespace, as uid nobody (no capabilities): the error is the privilege,
    not "read-only in this namespace".  The value written is the current one (never lowered)."""
    current = sysctl.read().max
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        text = "no error"
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sysctl.set_max(current)
        except BaseException as exc:
            text = "%s|%s" % (type(exc).__name__, exc)
        os.write(w, text.encode()[:4000])
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    assert text.startswith("NoPermission|"), text
    assert "CAP_NET_ADMIN" in text and "read-only in this network namespace" not in text


@pytest.mark.parametrize("values", [
    {"a\nkernel.panic": 1}, {"kernel.panic": 1}, {"net.netfilter.nf_conntrack_max = 5\nkernel.panic": 1},
    {"net.netfilter.nf_conntrack_max": 2.9}, {"net.netfilter.nf_conntrack_max": -5},
    {"net.netfilter.nf_conntrack_max": "12"}, {"net.netfilter.nf_conntrack_max": True},
    {"net.netfilter.nf_conntrack_acct": 2}, {"net.netfilter.nf_conntrack_max=1": 1},
    {"net.netfilter.nf_conntrack_tcp_timeout_established\n": 5},
])
def test_write_dropin_refuses_foreign_keys_and_bad_values(values):
    with tempfile.TemporaryDirectory() as root:
        with pytest.raises((ValueError, TypeError)):
            sysctl.write_dropin(values, root=root)
        d = os.path.join(root, "etc", "sysctl.d")
        assert not os.path.exists(d) or os.listdir(d) == []
        path = sysctl.write_dropin({"net.netfilter.nf_conntrack_max": 1000,
                                    "net.netfilter.nf_conntrack_udp_timeout": 30}, root=root)
        with open(path) as f:
            text = f.read()
        with pytest.raises((ValueError, TypeError)):
            sysctl.write_dropin(dict({"net.netfilter.nf_conntrack_timestamp": 1}, **values), root=root)
        with open(path) as f:
            assert f.read() == text  # nothing written, not even the valid key


def test_dccp_ports_the_kernel_would_drop_are_refused(ns_ct):
    if conntrack.table.dccp_keeps_ports():
        ns_ct.create(Flow(proto="dccp", src="10.0.0.1", dst="10.0.0.2", sport=1000, dport=2000, timeout=60))
        assert [(f.orig.sport, f.orig.dport) for f in ns_ct.dump()] == [(1000, 2000)]
        return
    with pytest.raises(conntrack.Unsupported, match="DCCP"):
        ns_ct.create(Flow(proto="dccp", src="10.0.0.1", dst="10.0.0.2", sport=1000, dport=2000, timeout=60))
    with pytest.raises(conntrack.Unsupported):
        ns_ct.create_many([Flow(proto="dccp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=60)])
    assert ns_ct.count() == 0
    ns_ct.create(Flow(proto="dccp", src="10.0.0.1", dst="10.0.0.2", sport=0, dport=0, timeout=60))
    [f] = list(ns_ct.dump())
    assert (f.proto, f.orig.sport, f.orig.dport) == (conntrack.Proto.dccp, 0, 0)


def test_an_entry_id_pins_the_tuple_and_memory_not_the_entry(ns_ct):
    """What docs/architecture.rst says about ids: a replacement with the same tuple gets the old id
    exactly when it reuses the old entry's memory, and then a delete pinned to the old id removes it."""
    spec = dict(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2)
    outcomes = set()
    for _ in range(20):
        ns_ct.flush()
        ns_ct.create(Flow(timeout=60, mark=1, **spec))
        old = ns_ct.get(Flow(**spec))
        ns_ct.delete(Flow(**spec))  # by tuple: the entry's memory is freed
        ns_ct.create(Flow(timeout=60, mark=2, **spec))
        new = ns_ct.get(Flow(**spec))
        try:
            ns_ct.delete(old)
            deleted = True
        except conntrack.NotFound:
            deleted = False
        assert deleted == (new.id == old.id)
        assert ns_ct.count() == (0 if deleted else 1)
        outcomes.add(deleted)
    assert True in outcomes  # the replacement was deleted at least once (the issue saw 200 of 200)


def test_close_from_another_thread_during_a_bulk_delete_does_not_hang(netns):
    """close() from a second thread while the owner is inside a long call returns at once (the
    table still holds entries when it has returned); the handle closes when that call returns,
    and the call's result is whole."""
    total = 20000
    for _attempt in range(5):
        ct = conntrack.Conntrack(netns.name, features=KernelFeatures.none())
        ct.flush()
        ct.create_many([_udp(i) for i in range(total)])
        left_at_close: list = []

        def close_when_busy(ct=ct, left_at_close=left_at_close) -> None:
            with conntrack.Conntrack(netns.name) as mine:
                deadline = time.monotonic() + 60
                while mine.count() == total and time.monotonic() < deadline:
                    time.sleep(0.001)
                ct.close()
                left_at_close.append(mine.count())

        closer = threading.Thread(target=close_when_busy)
        closer.start()
        result = ct.delete(Filter(proto="udp"))
        closer.join(60)
        assert left_at_close, "close() from another thread hung"
        assert result.deleted == total and ct.closed
        with pytest.raises(HandleClosed):
            ct.count()
        if left_at_close[0] > 0:  # close() returned while the delete was still running
            return
    pytest.fail("close() never landed inside a 20,000-entry delete in 5 attempts")


def test_a_batch_whose_acknowledgements_overflow_counts_what_was_queued_and_is_not_exact(netns):
    """A receive buffer shrunk under the handle (after the socket sized its
    batches for a larger one) makes the kernel drop acknowledgements (ENOBUFS).
    The deletes still happen: the result counts the acknowledgements that were
    queued, never more than the kernel deleted, says it is not exact, and the
    handle's socket stays usable."""
    n = 3000
    with conntrack.Conntrack(netns.name, features=KernelFeatures.none()) as ct:
        ct.create_many([_udp(i) for i in range(n)])
        fd = os.dup(ct._sock.fileno())
        with socket.socket(fileno=fd) as shrink:
            shrink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
        with pytest.raises(conntrack.BulkDeleteError) as raised:
            ct.delete(Filter(proto="udp"))
        assert raised.value.__cause__.errno == errno.ENOBUFS
        result = raised.value.result
        gone = n - ct.count()  # the handle still answers
        assert 0 < result.deleted <= gone and result.exact is False
