"""The dump layer: batches of records read from a :class:`_binding.Dump`.

``batches(dump)`` reads in the caller's thread, or (``prefetch=True``) in a
second thread while the caller turns the previous batch into flows: the C
dump loop releases the GIL while it waits for the kernel, so the kernel's
work overlaps the caller's.  Whatever the kernel flagged (NLM_F_DUMP_INTR)
is on ``dump.interrupted`` once a batch has been handed over.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

from ._binding import Batch, Dump

#: Batches read ahead by the prefetching thread.
PREFETCH_DEPTH = 4


def batches(dump: Dump, prefetch: bool = True) -> Iterator[Batch]:
    """The non-empty batches of *dump*; its socket is closed when the dump
    ends, fails or is abandoned."""
    return _prefetched(dump) if prefetch else _sequential(dump)


def _sequential(dump: Dump) -> Iterator[Batch]:
    """The dump read in the caller's thread, one batch at a time."""
    try:
        while True:
            b = dump.read()
            if b.n:
                yield b
            if dump.done:
                break
    finally:
        dump.close()


def _prefetched(dump: Dump) -> Iterator[Batch]:
    """The dump read by a worker thread, handed over through a queue.

    The worker owns the dump and closes it itself, so its socket is never
    freed under a C call, however the caller's generator ends (closed,
    interrupted, or collected on another thread): the caller only sets a
    stop flag, which the worker sees within one batch.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_DEPTH)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            while not stop.is_set():
                b = dump.read()  # sets dump.interrupted before the batch is handed over
                if b.n and not put(b):
                    return
                if dump.done:
                    break
            put(None)
        except BaseException as exc:  # handed to the consumer, never lost
            put(exc)
        finally:
            dump.close()

    worker = threading.Thread(target=work, name="conntrack-dump", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is None or isinstance(item, BaseException):
                worker.join()  # it only closes its socket now: an ended dump leaves no thread behind
                if item is None:
                    return
                raise item
            yield item
    finally:
        stop.set()  # the worker notices within one batch and closes the socket
