"""The extraction that bench/faults.py runs in its own processes (forked from a fork server that imported the
project once), optionally killing itself at a named fault point; and the row a fault's trials add up to."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

IMAGE_SIZE = 112
SHARD_SIZE = 4
BATCH_SIZE = 2
CATEGORY = "brick"
# where an extraction can be made to kill itself: "<fault>" -> the `storage.faultpoints` point it waits for
FAULT_POINTS = ("before-arrays", "mid-shard", "mid-marker", "before-consolidate", "mid-complete")


@dataclass
class FaultResult:
    """One row of the table."""

    fault: str
    trials: int = 0
    survived: int = 0
    values_lost: int = 0
    recomputed_done_shards: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _spec():
    from generalad.backbone import BackboneSpec

    return BackboneSpec(weights="random", seed=0, image_size=IMAGE_SIZE)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def noop() -> None:
    """A process that does nothing (starts the fork server)."""


def wait_for(go: str | None) -> None:
    """Start together: wait until the parent creates the file `go` (no-op when None)."""
    deadline = time.monotonic() + 120
    while go is not None and not os.path.exists(go):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no start signal {go}")
        time.sleep(0.002)


def fault_test(fault: str, shard: int) -> Callable[[str, dict], bool]:
    """Whether a `storage.faultpoints` point (name, where) is the moment of `fault` (shard faults: at `shard`):
    after the group but before the arrays, after a shard's tokens but before its other arrays, between a
    marker's (or COMPLETE.json's) temporary file and its rename, after verification but before consolidation."""
    from storage.store_layout import COMPLETE_FILE, SHARDS_DIR

    marker = f"{SHARDS_DIR}/{shard:05d}.json"
    tests: dict[str, Callable[[str, dict], bool]] = {
        "before-arrays": lambda point, where: point == "group-ready",
        "mid-shard": lambda point, where: (
            point == "array-written" and (where["shard"], where["array"]) == (shard, "tokens")
        ),
        "mid-marker": lambda point, where: point == "temp-written" and where["url"].endswith(marker),
        "before-consolidate": lambda point, where: point == "verified",
        "mid-complete": lambda point, where: point == "temp-written" and where["url"].endswith(COMPLETE_FILE),
    }
    if fault not in tests:
        raise ValueError(f"unknown fault point {fault!r}; known: {', '.join(FAULT_POINTS)}")
    return tests[fault]


def _fault_injected(fault: str | None, shard: int):
    """A context in which this process SIGKILLs itself at `fault` (nothing when None)."""
    if fault is None:
        return contextlib.nullcontext()
    from storage import faultpoints

    test = fault_test(fault, shard)

    def hook(point: str, where: dict) -> None:
        if test(point, where):
            _die()

    return faultpoints.injected(hook)


def extract_child(
    data_root: str, store_root: str, out: str, fault: str | None = None, shard: int = 0, go: str | None = None
):
    """One extraction (what `generalad extract` runs), its result written to `out` as JSON."""
    import torch
    from tqdm.auto import tqdm

    from generalad.data import get_dataset
    from storage.extraction import extract_features

    torch.set_num_threads(1)
    # tqdm's default lock is a multiprocessing semaphore, which a SIGKILLed process leaves behind: use a thread lock
    tqdm.set_lock(threading.RLock())
    adapter = get_dataset("quickstart", data_root, CATEGORY)
    wait_for(go)
    started = time.time()
    with _fault_injected(fault, shard):
        result = extract_features(
            adapter, _spec(), store_root, shard_size=SHARD_SIZE, batch_size=BATCH_SIZE, progress=False
        )
    payload = asdict(result) | {"wall": time.time() - started}
    Path(out).write_text(json.dumps(payload))
