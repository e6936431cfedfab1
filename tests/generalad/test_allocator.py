"""glibc allocator tuning for CPU training: freed activations are reused without new page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from generalad import allocator

# in a fresh process: tune (or not), then allocate, touch and free a 64 MiB tensor ROUNDS times, as a training
# loop does, counting each round's page faults. Tuned, the heap grows for a few rounds (2 to 9 seen: an aligned
# block does not fit the first freed ones until their neighbours coalesce) and then serves every round from
# freed memory; by mmap every round faults every page again.
ROUNDS, STEADY = 32, 4
PAGES = (64 << 20) // 4096
_PROBE = f"""
import json, resource, torch
from generalad.allocator import tune_for_training
tuned = tune_for_training()
faults = []
for _ in range({ROUNDS}):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 << 20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del x
print(json.dumps({{"tuned": tuned, "faults": faults}}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != allocator.MALLOC_ENV}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_reuses_freed_tensors_without_page_faults():
    tuned, default = _probe(), _probe(**{allocator.MALLOC_ENV: "default"})
    assert tuned["tuned"] and not default["tuned"]
    # untuned, a fresh mmap every round: every page faulted again
    assert all(f > PAGES // 2 for f in default["faults"]), default["faults"]
    assert tuned["faults"][0] > PAGES // 2  # the first round grows the heap
    steady = tuned["faults"][-STEADY:]
    assert all(f < PAGES // 20 for f in steady), tuned["faults"]  # then freed heap blocks are reused


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_environment_tunables_are_left_to_the_user():
    probe = _probe(MALLOC_MMAP_THRESHOLD_="65536")  # glibc's own tunable: every block >= 64 KiB by mmap
    assert not probe["tuned"]
    assert all(f > PAGES // 2 for f in probe["faults"])
