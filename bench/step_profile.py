"""The profile split of bench/train_step.py: the self time of one training step by kind of operator.

A ``torch.profiler`` run of one call; each operator is put in the first kind whose name fragments it contains
(`KINDS`), which says what limits the step.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import defaultdict
from collections.abc import Iterator

import torch

__all__ = ["KINDS", "profile_split"]

# operator name fragments -> kind, first match wins (profile split)
KINDS = (
    ("optimizer (AdamW)", ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "sqrt")),
    ("matmul (mm, addmm, bmm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")),
    ("fused attention kernel", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("softmax", ("softmax",)),
    ("dropout", ("dropout", "bernoulli")),
    ("layernorm", ("layer_norm",)),
    ("gelu", ("gelu",)),
    ("loss", ("binary_cross_entropy", "log_sigmoid", "sigmoid")),
    (
        "distortions (randn, sort, gather)",
        ("randn", "normal", "sort", "topk", "gather", "scatter", "randint", "rand", "argsort"),
    ),
    ("copies, cat, fill, alloc", ("copy_", "aten::cat", "empty", "fill_", "zero_", "clone", "contiguous")),
    (
        "other elementwise",
        (
            "aten::add",
            "aten::mul",
            "aten::sub",
            "aten::div",
            "aten::sum",
            "aten::mean",
            "aten::where",
            "aten::ne",
            "aten::eq",
        ),
    ),
)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block (C++ log lines), Python's sys.stderr included."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def profile_split(step, device: torch.device) -> dict[str, float]:
    """Self time of one call of ``step`` by kind of operator (fractions of the total self time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with _quiet_stderr(), profile(activities=activities) as prof:  # kineto logs start/stop lines on fd 2
        step()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        name = event.key.lower()
        kind = next((k for k, frags in KINDS if any(f.lower() in name for f in frags)), "other")
        totals[kind] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return dict(sorted(((k, v / whole) for k, v in totals.items()), key=lambda kv: -kv[1]))
