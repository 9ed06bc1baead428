"""An asyncio agent: follow the connections of one service, export counts for
Prometheus, and stay whole across an overflow by resyncing."""

import asyncio
import sys
from typing import Dict, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from conntrack import Conntrack, EventType, Filter, Flow, FlowTuple, Proto
from conntrack.events import DEFAULT_RCVBUF

SERVICE = Filter(proto="tcp", dst="10.9.0.2", dport=443)


class ServiceAgent:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.flows: Dict[Tuple[int, Proto, FlowTuple], Flow] = {}  # the live view, by Flow.key (ids can collide)
        self.subscribed = asyncio.Event()
        self.opened = Counter("service_connections_opened", "NEW events", registry=registry)
        self.closed = Counter("service_connections_closed", "DESTROY events", registry=registry)
        self.lost = Counter("service_events_lost", "events the kernel dropped", registry=registry)
        self.resyncs = Counter("service_resyncs", "snapshots taken after a loss", registry=registry)
        active = Gauge("service_connections_active", "entries in the view", registry=registry)
        active.set_function(lambda: len(self.flows))

    async def run(self, ct: Conntrack, service: Filter = SERVICE, idle: Optional[float] = None,
                  rcvbuf: int = DEFAULT_RCVBUF) -> None:
        fresh: Dict[Tuple[int, Proto, FlowTuple], Flow] = {}
        # NEW and DESTROY only: no UPDATE flood.  resync=True: after an
        # OVERFLOW the stream yields a snapshot of the service's entries.
        async with ct.aevents(service, types=EventType.NEW | EventType.DESTROY, resync=True,
                              idle_timeout=idle, rcvbuf=rcvbuf) as stream:
            stream.resync()  # start whole: the entries that exist already, then the events
            self.subscribed.set()
            async for ev in stream:
                if ev.type == EventType.NEW:
                    self.flows[ev.flow.key] = ev.flow
                    self.opened.inc()
                elif ev.type == EventType.DESTROY:
                    self.flows.pop(ev.flow.key, None)  # may be gone already after a resync
                    self.closed.inc()
                elif ev.type == EventType.OVERFLOW:
                    self.lost.inc(ev.lost or 0)
                elif ev.type == EventType.SNAPSHOT_BEGIN:
                    fresh = {}
                elif ev.type == EventType.SNAPSHOT:
                    fresh[ev.flow.key] = ev.flow
                elif ev.type == EventType.SNAPSHOT_END:
                    # the events queued during the snapshot come next and apply on top of it
                    self.flows = fresh
                    self.resyncs.inc()


async def main(port: int, idle: Optional[float]) -> None:
    registry = CollectorRegistry()
    start_http_server(port, registry=registry)
    agent = ServiceAgent(registry)
    with Conntrack() as ct:
        await agent.run(ct, idle=idle)
    value = registry.get_sample_value
    print("active %d, opened %d, lost %d, resyncs %d" % (
        value("service_connections_active"), value("service_connections_opened_total"),
        value("service_events_lost_total"), value("service_resyncs_total")))


if __name__ == "__main__":
    # service_agent.py [METRICS_PORT [IDLE_SECONDS]]
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9467,
                     float(sys.argv[2]) if len(sys.argv) > 2 else None))
