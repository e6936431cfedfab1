"""glibc's allocator set up for training on the CPU: large tensors reuse freed heap memory.

Why: glibc serves every block above its mmap threshold (at most 32 MiB by default) with a fresh ``mmap`` and
unmaps it on free, so each activation of a training step (tens to hundreds of MB at batch 16 x 3 views) is
page-faulted and zeroed by the kernel again at every step. Raising the mmap threshold to `THRESHOLD` and never
trimming keeps freed blocks up to that size in the heap for the next step; larger ones (the MLP activations at
518 px) still come and go by mmap, because in the heap their fragmentation doubled the process's memory.
Measured on one thread, CPU time per step and process peak (VmHWM) after 4 steps of batch 16 x 3 views, fp32,
on an Intel Xeon with AMX: N = 256 (224 px) 1.86 -> 1.61 s, 1527 -> 1799 MB; N = 1369 (518 px) 16.2 -> 14.9 s,
4082 -> 5625 MB (with a 1 GiB threshold: 13.7 s but 6.6-7.6 GB, growing over steps). The process keeps its
peak heap instead of returning it between steps.

Set once per process, on Linux with glibc only, and never where the user chose: ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment (glibc's own tunables, read at start) leave it alone, and
``GENERALAD_MALLOC=default`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MALLOC_ENV", "THRESHOLD", "tune_for_training"]

MALLOC_ENV = "GENERALAD_MALLOC"
THRESHOLD = 128 << 20  # blocks up to 128 MiB (every activation at 224 px) come from the heap and stay there
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_NEVER_TRIM = -1  # M_TRIM_THRESHOLD's value that turns trimming off
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_done: list[bool] = []


def tune_for_training() -> bool:
    """Raise glibc's mmap and trim thresholds once for this process; True when they are (now or before) set.

    False, and nothing changed, off Linux/glibc, when the environment sets glibc's malloc tunables itself, or
    with ``GENERALAD_MALLOC=default``."""
    if _done:
        return _done[0]
    _done.append(_apply())
    return _done[0]


def _apply() -> bool:
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "default" or not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in _GLIBC_ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
