"""Seconds per named phase of a piece of work, for callers that want to know where its time goes.

`storage.extraction.extract_features(..., timings=...)` uses it; a benchmark or a log line reads the totals.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager

__all__ = ["PhaseTimer"]

_UNTIMED = contextlib.nullcontext()


class PhaseTimer:
    """Adds the wall seconds of each ``with timer("phase"):`` block into ``totals[phase]``.

    Blocks may run in several threads at once (the total of a phase is then summed over them, so phases that
    run in a background thread overlap the others). With ``totals=None`` every block is a no-op that reads no
    clock, so code can time its phases unconditionally.
    """

    def __init__(self, totals: dict[str, float] | None = None) -> None:
        self.totals = totals
        self._lock = threading.Lock()

    def __call__(self, phase: str) -> AbstractContextManager[None]:
        return _UNTIMED if self.totals is None else self._timed(phase)

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            with self._lock:  # `+=` on a dict entry is not atomic across threads
                self.totals[phase] = self.totals.get(phase, 0.0) + seconds
