"""glibc allocator tuning for CPU training: freed activations are reused without new page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from generalad import allocator

# in a fresh process: tune (or not), allocate, touch and free a 64 MiB tensor as a training loop does (the heap
# settles after a few rounds: aligned blocks do not fit the first freed ones), then count a round's page faults
_PROBE = """
import json, resource, torch
from generalad.allocator import tune_for_training
tuned = tune_for_training()
for _ in range(8):
    x = torch.ones(16 << 20); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = torch.ones(16 << 20)
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
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
    pages = (64 << 20) // 4096
    assert tuned["tuned"] and not default["tuned"]
    assert default["faults"] > pages // 2  # a fresh mmap: every page faulted again
    assert tuned["faults"] < pages // 20  # the freed heap block reused


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_environment_tunables_are_left_to_the_user():
    probe = _probe(MALLOC_MMAP_THRESHOLD_="65536")  # glibc's own tunable: every block >= 64 KiB by mmap
    assert not probe["tuned"]
    assert probe["faults"] > (64 << 20) // 4096 // 2
