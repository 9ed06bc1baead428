"""Events from the real kernel: NEW, UPDATE, DESTROY, filters, overflow."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from helpers import TCP_PAIR

import conntrack
from conntrack import EventType, Filter, Flow

MARKER_DST = "10.254.255.254"


def marker(i: int, **kw) -> Flow:
    """The i-th end marker: an entry no test makes otherwise."""
    return Flow(proto="tcp", src="10.254.%d.%d" % (i // 250, i % 250 + 1), dst=MARKER_DST, sport=1, dport=9,
                timeout=60, **kw)


class Listener:
    """Collect a namespace's events in a thread until an end marker's NEW event arrives.

    ``Conntrack.events()`` has subscribed when it returns, so the test may make events at once.
    The test ends with :meth:`finish`, which creates marker entries (matching the listener's
    filter: ``marker_kw``) until one is seen; one socket's events come in the order the kernel
    made them, so every event before the marker has arrived.  Conditions, not times: the
    deadlines are only for failures (emulated kernels run 10-25x slower).
    """

    def __init__(self, ns_name, marker_kw=None, **kw):
        self.events = []  # markers included
        self.markers = []  # the marker flows created, in order
        self.marker_kw = marker_kw or {}
        self.seen_marker = threading.Event()
        self.ct = conntrack.Conntrack(ns_name)
        self.stream = self.ct.events(idle_timeout=120.0, **kw)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for ev in self.stream:
            self.events.append(ev)
            if ev.flow is not None and str(ev.flow.orig.dst) == MARKER_DST:
                self.seen_marker.set()
                return

    def finish(self, ct, deadline=120.0, keep_markers=False):
        """Create markers until one arrives (one lost in an overflow is followed by another)."""
        end = time.monotonic() + deadline
        while not self.seen_marker.is_set() and self.thread.is_alive() and time.monotonic() < end:
            self.markers.append(marker(len(self.markers), **self.marker_kw))
            ct.create(self.markers[-1])
            self.seen_marker.wait(min(0.5 * len(self.markers), 5.0))
        self.thread.join(max(1.0, end - time.monotonic()))
        assert not self.thread.is_alive(), "the event stream is still running after %.0f s" % deadline
        self.stream.close()
        self.ct.close()
        assert self.seen_marker.is_set(), "no marker event arrived in %.0f s: %d events" % (deadline, len(self.events))
        if keep_markers:
            return self.events
        return [e for e in self.events if e.flow is None or str(e.flow.orig.dst) != MARKER_DST]


def _udp(i, **kw):
    return Flow(proto="udp", src="10.0.%d.%d" % (i // 250, i % 250 + 1), dst="10.9.0.1", sport=1, dport=53,
                timeout=60, **kw)


def test_new_update_destroy_of_injected_entries(ns_ct):
    listener = Listener(ns_ct.ns.name)
    ns_ct.create_many(_udp(i) for i in range(200))
    f = ns_ct.get(_udp(7))
    ns_ct.update(f, mark=5)
    ns_ct.delete(Filter(src="10.0.0.0/28"))
    events = listener.finish(ns_ct)
    kinds = Counter(e.type for e in events)
    assert kinds == {EventType.NEW: 200, EventType.UPDATE: 1, EventType.DESTROY: 15}
    [update] = [e for e in events if e.type == EventType.UPDATE]
    assert update.flow.mark == 5 and update.flow.orig == f.orig
    assert {e.flow.key for e in events if e.type == EventType.NEW} == {_udp(i).key for i in range(200)}


def test_filters_and_types_apply_before_python(ns_ct):
    listener = Listener(ns_ct.ns.name, marker_kw={"mark": 1}, filter=Filter(mark=1),
                        types=EventType.NEW | EventType.DESTROY)
    ns_ct.create_many(_udp(i, mark=i % 2) for i in range(100))
    ns_ct.update(ns_ct.get(_udp(1)), timeout=30)  # an UPDATE of a mark=1 entry: not subscribed
    ns_ct.flush()
    events = listener.finish(ns_ct)
    assert all(e.flow.mark == 1 for e in events)
    assert Counter(e.type for e in events) == {EventType.NEW: 50, EventType.DESTROY: 50}


def test_real_tcp_connection_events(ns_ct):
    ns_ct.ns.track()
    listener = Listener(ns_ct.ns.name, filter=Filter(proto="tcp"))
    proc = ns_ct.ns.python(TCP_PAIR)
    try:
        cport, sport = map(int, proc.stdout.readline().split())
    finally:
        proc.stdin.close()
        proc.wait(60)
    events = listener.finish(ns_ct)
    mine = [e for e in events if e.flow.orig.sport == cport and e.flow.orig.dport == sport]
    assert mine[0].type == EventType.NEW and mine[0].flow.state == conntrack.TCPState.SYN_SENT
    states = [e.flow.state for e in mine if e.type == EventType.UPDATE]
    assert conntrack.TCPState.ESTABLISHED in states


def test_overflow_is_reported_and_the_stream_goes_on(ns_ct):
    # a receive buffer far too small for a burst: the kernel drops events
    listener = Listener(ns_ct.ns.name, rcvbuf=64 * 1024)
    ns_ct.create_many(_udp(i) for i in range(20000))
    events = listener.finish(ns_ct, keep_markers=True)  # markers until one gets through
    kinds = Counter(e.type for e in events)
    assert kinds[EventType.OVERFLOW] >= 1
    assert kinds[EventType.NEW] < 20000 + len(listener.markers)  # some were lost, and we said so
    assert [e.type for e in events].index(EventType.OVERFLOW) < len(events) - 1
    assert events[-1].type == EventType.NEW and events[-1].flow.orig == listener.markers[-1].orig


def test_overflow_comes_after_the_events_queued_before_the_loss(ns_ct):
    # the kernel drops events from the moment the queue is full until it is empty:
    # no event yielded after an OVERFLOW may predate the gap
    listener = Listener(ns_ct.ns.name, rcvbuf=64 * 1024, types=EventType.NEW)
    ns_ct.create_many(_udp(i) for i in range(20000))
    events = listener.finish(ns_ct, keep_markers=True)
    # markers come after the 20000 in the kernel's order too (a lost one leaves a gap)
    index = {_udp(i).key: i for i in range(20000)}
    index.update((m.key, 20000 + k) for k, m in enumerate(listener.markers))
    order = [None if e.type == EventType.OVERFLOW else index[e.flow.key] for e in events]
    assert None in order
    # Around each marker, from the last event before the previous marker to the
    # first event after this one, some events must be missing: the gap.
    segment = []  # the last event before the previous marker, then the events since
    for k, j in enumerate(order):
        if j is not None:
            segment.append(j)
            continue
        following = next((x for x in order[k + 1:] if x is not None), None)
        run = segment + ([following] if following is not None else [])
        assert any(b - a > 1 for a, b in zip(run, run[1:])), \
            "an OVERFLOW with no gap around it: events %s, marker at %d" % (run[-12:], k)
        segment = segment[-1:]


def test_subscribed_when_events_is_called(ns_ct):
    stream = ns_ct.events(idle_timeout=1.0)
    ns_ct.create(_udp(1))  # before the first next()
    assert [e.type for e in stream] == [EventType.NEW]


def test_idle_timeout_holds_while_non_matching_events_flow(ns_ct):
    stop = threading.Event()
    created = [0]

    def noise():  # non-matching events, until the stream has ended (or 20000 of them)
        with conntrack.Conntrack(ns_ct.ns.name) as other:
            while not stop.is_set() and created[0] < 20000:
                other.create(_udp(created[0]))
                created[0] += 1
                time.sleep(0.01)

    t = threading.Thread(target=noise)
    t.start()
    try:
        while created[0] == 0 and t.is_alive():
            time.sleep(0.01)
        before = created[0]
        assert list(ns_ct.events(Filter(mark=99), idle_timeout=0.5)) == []
        # it ended while the noise went on: events that do not match do not reset the idle clock
        assert t.is_alive() and created[0] > before
    finally:
        stop.set()
        t.join()


def test_destroy_events_pass_a_labels_filter(ns_ct):
    ns_ct.ns.keep_labels()
    listener = Listener(ns_ct.ns.name, marker_kw={"labels": {9}}, filter=Filter(labels={9}))
    ns_ct.create(_udp(1, labels={9}))
    ns_ct.delete(Filter(src=_udp(1).orig.src))
    events = listener.finish(ns_ct)
    assert [e.type for e in events] == [EventType.NEW, EventType.DESTROY]


def test_bad_arguments(ns_ct):
    with pytest.raises(ValueError, match="types"):
        ns_ct.events(types=EventType.OVERFLOW)
    with pytest.raises(ValueError, match="rcvbuf"):
        ns_ct.events(rcvbuf=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        ns_ct.events(idle_timeout=float("nan"))
