"""Read-ahead in a background thread: overlap I/O or decoding with the consumer's compute, in bounded memory."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")


_END = object()


def prefetched(jobs: Iterable[Callable[[], T]], depth: int = 2) -> Iterator[T]:
    """Run zero-argument callables in a background thread, `depth` ahead of the consumer, yielding results in order.

    Memory is bounded by `depth` results. An exception in a job is re-raised in the consumer.
    """
    results: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for job in jobs:
                if stop.is_set():
                    return
                results.put((True, job()))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            results.put((False, exc))
            return
        results.put((True, _END))

    thread = threading.Thread(target=produce, name="generalad-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = results.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        # unblock the producer if it waits on a full queue
        while thread.is_alive():
            try:
                results.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
