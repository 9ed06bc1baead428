"""The event stream under asyncio, exact loss counts and resync, on the real kernel.

No test here measures time: "the loop stays responsive" is shown by work
that only a running loop can do (a ticker task starts the traffic the
stream waits for; ticks counted while a dump runs in a thread).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import os
import threading
import time
from collections import Counter

from helpers import TCP_PAIR, host_max_at_least

import conntrack
from conntrack import EventType, Filter, Flow

DEADLINE = 120.0  # generous: the host is busy and may run under emulation


def _udp(i: int, net: str = "10.0.0.0") -> Flow:
    return Flow(proto="udp", src=ipaddress.ip_address(net) + i + 1, dst="10.9.0.1", sport=1, dport=53, timeout=600)


def test_async_stream_follows_real_traffic_while_a_ticker_ticks(ns_ct):
    ns = ns_ct.ns
    ns.track()
    threads_before = threading.active_count()

    async def main():
        ticks = 0
        proc = None
        started = asyncio.Event()

        established_at = None

        async def ticker():
            # the traffic starts, and its entries are deleted, only if the
            # loop runs while the stream waits for events
            nonlocal ticks, proc
            deleted = False
            while True:
                await asyncio.sleep(0.01)
                ticks += 1
                if ticks == 5:
                    proc = ns.python(TCP_PAIR)
                    started.set()
                if established_at is not None and ticks >= established_at + 5 and not deleted:
                    ns_ct.delete(Filter(proto="tcp", dst="127.0.0.1"))  # DESTROY events
                    deleted = True

        seen = []
        loop = asyncio.get_running_loop()
        async with ns_ct.aevents(Filter(proto="tcp", dst="127.0.0.1")) as stream:
            tick_task = asyncio.create_task(ticker())
            try:
                async for ev in stream:
                    # between two reads the reader is not registered (it would spin the loop)
                    assert loop.remove_reader(stream.fileno()) is False
                    assert threading.active_count() == threads_before  # no thread behind async for
                    seen.append((ev, ticks))
                    if ev.type == EventType.UPDATE and ev.flow.state == conntrack.TCPState.ESTABLISHED:
                        established_at = ticks
                    if ev.type == EventType.DESTROY:
                        break
            finally:
                tick_task.cancel()
                if proc is not None:
                    proc.stdin.close()
                    proc.wait(10)
            assert started.is_set()
            return seen, ticks

    seen, ticks = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    kinds = [e.type for e, _ in seen]
    assert kinds[0] == EventType.NEW and seen[0][0].flow.state == conntrack.TCPState.SYN_SENT
    assert EventType.UPDATE in kinds and kinds[-1] == EventType.DESTROY
    assert conntrack.TCPState.ESTABLISHED in [e.flow.state for e, _ in seen if e.type == EventType.UPDATE]
    established = next(t for e, t in seen if e.type == EventType.UPDATE
                       and e.flow.state == conntrack.TCPState.ESTABLISHED)
    assert seen[0][1] >= 5 and seen[-1][1] >= established + 5  # the ticker ran while the stream waited


def test_overflow_lost_plus_received_equals_the_burst_exactly(ns_ct):
    n = 20000
    with ns_ct.events(rcvbuf=64 * 1024, idle_timeout=0, types=EventType.NEW) as stream:
        ns_ct.create_many(_udp(i) for i in range(n))
        events = list(stream)  # the kernel queued or dropped every event during create_many
    overflows = [e for e in events if e.type == EventType.OVERFLOW]
    received = sum(e.type == EventType.NEW for e in events)
    assert overflows and received < n
    assert received + sum(e.lost for e in overflows) == n
    assert stream.lost == sum(e.lost for e in overflows) and stream.overflows == len(overflows)


def test_async_overflow_counts_add_up_while_reading_concurrently(netns):
    # A small buffer (the kernel rounds it up to a few kilobytes): one create_many batch of
    # 4096 inserts queues more events than it holds, whatever the reader does meanwhile.
    n = 20000

    async def main():
        def make_burst():
            with conntrack.Conntrack(netns.name) as writer:  # a handle belongs to its thread
                writer.create_many(_udp(i) for i in range(n))

        with conntrack.Conntrack(netns.name) as ct:
            async with ct.aevents(rcvbuf=8 * 1024, types=EventType.NEW) as stream:
                loop = asyncio.get_running_loop()
                burst = loop.run_in_executor(None, make_burst)
                accounted = asyncio.Event()
                counts = {"received": 0, "lost": 0}

                async def consume():
                    async for ev in stream:
                        if ev.type == EventType.OVERFLOW:
                            counts["lost"] += ev.lost
                        elif ev.flow.proto == conntrack.Proto.tcp:
                            return
                        else:
                            counts["received"] += 1
                        if counts["received"] + counts["lost"] >= n:
                            accounted.set()

                consumer = asyncio.ensure_future(consume())
                await burst
                # Every burst event reached the queue or was counted as dropped: once all are
                # accounted for, the queue has run dry and a last event gets through.
                await accounted.wait()
                ct.create(Flow(proto="tcp", src="10.200.0.1", dst="10.200.0.2", sport=1, dport=2, timeout=60))
                await consumer
                return counts["received"], counts["lost"], stream.lost

    received, lost, total = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert lost > 0 and total == lost
    assert received + lost == n


def test_resync_after_overflow_equals_a_dump_with_the_same_filter(ns_ct):
    flt = Filter(proto="udp", src="10.0.0.0/16")
    with ns_ct.events(flt, rcvbuf=64 * 1024, idle_timeout=0, resync=True) as stream:
        ns_ct.create_many(_udp(i) for i in range(15000))
        ns_ct.create_many(_udp(i, "10.5.0.0") for i in range(3000))  # not in the filter
        events = list(stream)
    kinds = [e.type for e in events]
    first = kinds.index(EventType.OVERFLOW)
    begin = kinds.index(EventType.SNAPSHOT_BEGIN)
    end = kinds.index(EventType.SNAPSHOT_END)
    assert first < begin < end and kinds[begin + 1:end] == [EventType.SNAPSHOT] * (end - begin - 1)
    snapshot = [e.flow for e in events[begin + 1:end]]
    dumped = list(ns_ct.dump(flt))
    assert len(dumped) == 15000
    assert Counter(f.key for f in snapshot) == Counter(f.key for f in dumped)
    assert {f.id for f in snapshot} == {f.id for f in dumped}


def test_manual_resync_under_asyncio_and_a_view_by_id(ns_ct):
    """A consumer keeping a view by entry id is whole again after a resync."""
    flt = Filter(proto="udp")

    async def main():
        view = {}
        async with ns_ct.aevents(flt, rcvbuf=64 * 1024, idle_timeout=0,
                                 types=EventType.NEW | EventType.DESTROY) as stream:
            ns_ct.create_many(_udp(i) for i in range(12000))
            ns_ct.delete(Filter(src="10.0.0.0/24"))
            fresh = None
            async for ev in stream:
                if ev.type == EventType.OVERFLOW:
                    stream.resync()
                elif ev.type == EventType.SNAPSHOT_BEGIN:
                    fresh = {}
                elif ev.type == EventType.SNAPSHOT:
                    fresh[ev.flow.id] = ev.flow
                elif ev.type == EventType.SNAPSHOT_END:
                    view = fresh
                elif ev.type == EventType.NEW:
                    view[ev.flow.id] = ev.flow
                elif ev.type == EventType.DESTROY:
                    view.pop(ev.flow.id, None)
            return view, stream.overflows

    view, overflows = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert overflows >= 1
    assert set(view) == {f.id for f in ns_ct.dump(flt)} and len(view) == 12000 - 255  # 10.0.0.1 .. 10.0.0.255


def _create_big(ct: conntrack.Conntrack, n: int) -> None:
    """n entries; a test elsewhere on the host may lower the global limit for a moment
    (ENOMEM, table full): wait for it to come back and start again."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            ct.create_many(_udp(i) for i in range(n))
            return
        except conntrack.ConntrackOSError as exc:
            if exc.errno != errno.ENOMEM or time.monotonic() > deadline:
                raise
        ct.flush()
        while ct.limit() < n and time.monotonic() < deadline:
            time.sleep(0.5)


def test_loop_stays_responsive_while_a_200k_dump_runs_in_a_thread(ns_ct):
    n = 200_000
    with host_max_at_least(n + 1000):
        _run_responsive(ns_ct, n)


def _run_responsive(ns_ct: conntrack.Conntrack, n: int) -> None:
    _create_big(ns_ct, n)

    async def main():
        ticks_while_dumping = 0
        done = False

        async def ticker():
            nonlocal ticks_while_dumping
            while not done:
                await asyncio.sleep(0.005)
                if not done:
                    ticks_while_dumping += 1

        def dump_all():
            with conntrack.Conntrack(ns_ct.ns.name) as ct:  # a handle belongs to its thread
                return list(ct.dump())

        t = asyncio.create_task(ticker())
        flows = await asyncio.to_thread(dump_all)
        done = True
        await t
        return len(flows), ticks_while_dumping

    count, ticks = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert count == n
    assert ticks >= 10  # the loop ran again and again while the thread dumped


def test_stream_lifetime_and_errors(ns_ct):
    stream = ns_ct.events(idle_timeout=0)
    fd = stream.fileno()
    assert fd >= 0 and not stream.closed
    stream.close()
    stream.close()
    assert stream.closed and list(stream) == []
    try:
        stream.fileno()
    except ValueError as exc:
        assert "closed" in str(exc)
    else:
        raise AssertionError("fileno() on a closed stream")

    async def closed_async():
        return [ev async for ev in stream]

    assert asyncio.run(closed_async()) == []


def test_a_stream_dropped_without_close_releases_its_descriptors(ns_ct):
    def fds():
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    stream = ns_ct.events(Filter(proto="tcp"), resync=True)  # an event socket and a namespace descriptor
    assert fds() == before + 2
    del stream
    gc.collect()
    assert fds() == before


def _syscall(tid: int) -> str:
    with open("/proc/self/task/%d/syscall" % tid) as f:
        return f.read().split()[0]


def test_the_c_reader_releases_the_gil_while_it_waits(ns_ct):
    """cffi releases the GIL around every call into the extension (API mode).
    Here the main thread can only go on, read the reader thread's syscall and
    make the event that ends the wait if the thread blocked in C left it the GIL."""
    waiting = {"x86_64": {"7", "271"}, "aarch64": {"73"}}.get(os.uname().machine)  # poll, ppoll
    stream = ns_ct.events(Filter(proto="udp"))
    got = []
    tid = []

    def read():
        tid.append(threading.get_native_id())
        got.append(next(stream))  # blocks in poll() inside C: nothing is queued yet

    t = threading.Thread(target=read)
    t.start()
    deadline = time.monotonic() + DEADLINE
    while not tid and time.monotonic() < deadline:
        time.sleep(0.01)
    while time.monotonic() < deadline:
        call = _syscall(tid[0])
        if (call in waiting) if waiting else call not in ("running", "202"):
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the reader thread never blocked in poll")
    ns_ct.create(_udp(1))
    t.join(DEADLINE)
    stream.close()
    assert [e.type for e in got] == [EventType.NEW]
