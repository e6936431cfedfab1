"""Named points of the feature store's write path where a fault can be injected (crash-consistency checks).

The writer calls `reach(point, **where)` between the steps whose interruption the next writer must repair:

- ``group-ready``: the store's group and attributes exist, its arrays may not (`StoreWriter` opening a store);
- ``array-written``: one array of a shard is written (``where``: shard, array), the shard's other arrays and its
  marker may not be;
- ``temp-written``: `urls.write_bytes_atomic` wrote and synced its temporary file (``where``: url; local files
  only), the rename that publishes it has not happened (shard markers, COMPLETE.json, manifest, splits);
- ``verified``: every shard was read back against its marker; metadata not consolidated, no COMPLETE.json yet.

Nothing listens by default, and a point then costs one global read. Inside ``with injected(hook):``,
``hook(point, where)`` runs at every point reached in this process (any thread), e.g. to SIGKILL the process
there (bench/faults.py) or to raise, and then check that a rerun completes the store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["POINTS", "FaultHook", "injected", "reach"]

POINTS = ("group-ready", "array-written", "temp-written", "verified")

FaultHook = Callable[[str, dict[str, Any]], None]

_hook: FaultHook | None = None


def reach(point: str, **where: Any) -> None:
    """Called by the store's writer at `point`; runs the injected hook, if any."""
    if _hook is not None:
        _hook(point, where)


@contextlib.contextmanager
def injected(hook: FaultHook) -> Iterator[None]:
    """Run `hook(point, where)` at every point reached while the context is open (the previous hook after)."""
    global _hook
    previous, _hook = _hook, hook
    try:
        yield
    finally:
        _hook = previous
