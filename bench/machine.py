"""What the benchmarks' numbers depend on: the CPU, its SIMD flags, library versions, peak memory.

Re-exported by `bench/common.py`; the benchmarks import these from there.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "cpu_model",
    "cpu_flags",
    "machine",
    "proc_status_kb",
    "peak_rss_mb",
    "reset_peak_rss",
    "MALLOC_ENV",
]

# glibc: serve every block >= 64 KiB by mmap and give it back on free, so that the peak RSS of a child process
# started with these follows live memory instead of heap fragmentation (tens of MB of noise otherwise)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (or platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD flags that decide fp32/bf16 matmul speed (avx2, avx512*, amx*)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx2", "avx512", "amx", "fma")))
    except OSError:
        pass
    return []


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, library versions, torch threads."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for name in ("timm", "zarr", "numpy", "distributed"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = getattr(module, "__version__", None)
    return info


def proc_status_kb(field: str) -> int | None:
    """A kB field of /proc/self/status (``VmHWM``: peak resident memory, ``VmRSS``: now), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM) in MB, or None off Linux."""
    kb = proc_status_kb("VmHWM")
    return None if kb is None else kb / 1024


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
