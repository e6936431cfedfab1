"""Where torch runs and in what precision: one resolution of `--device` and one context per `--precision`.

Devices: ``auto`` (the default everywhere) is the current CUDA device when one is visible, else the CPU;
``cpu``; ``cuda`` (the current CUDA device); ``cuda:N``. ``meta`` is accepted too: a shape-only device that the
tests use to check that every tensor of a pipeline lands on the requested device.

Precisions (README "Devices and precision"):

- ``fp32``: plain float32, the paper's setting and the default.
- ``tf32``: float32 tensors, matmuls and convolutions on TF32 tensor cores (CUDA only; on a CPU it is fp32
  exactly, since PyTorch has no TF32 there).
- ``bf16``: autocast to bfloat16 (CUDA and CPU; weights and the optimiser stay float32).
- ``fp16``: autocast to float16 with dynamic loss scaling (CUDA only: a clear error on a CPU).

Example:
    >>> device = resolve_device("auto")          # cuda:0 on a GPU machine, cpu otherwise
    >>> with autocast(device, "bf16"):
    ...     out = model(x)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from generalad.errors import ConfigError

__all__ = [
    "DEVICE_HELP",
    "PRECISIONS",
    "DEFAULT_PRECISION",
    "cuda_count",
    "resolve_device",
    "device_label",
    "check_precision",
    "autocast",
    "grad_scaler",
    "make_generator",
    "pin_if_cuda",
    "memory_budget",
    "HOLD_BYTES_ENV",
]

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
DEFAULT_PRECISION = "fp32"
DEVICE_HELP = "auto (CUDA when visible, else CPU; the default), cpu, cuda or cuda:N"
_DEVICE_RE = re.compile(r"auto|cpu|meta|cuda(:\d+)?")


def cuda_count() -> int:
    """How many CUDA devices this process sees (0 without CUDA). One place to fake a count in tests."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device that ``device`` names, with the index made explicit for CUDA.

    Raises:
        ConfigError: an unknown name, CUDA asked for on a machine without it, or an index out of range.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = (device or "auto").strip().lower()
    if not _DEVICE_RE.fullmatch(name):
        raise ConfigError(f"device must be {DEVICE_HELP}; got {device!r}")
    count = cuda_count()
    if name == "auto":
        name = "cuda" if count else "cpu"
    if name in ("cpu", "meta"):
        return torch.device(name)
    if count == 0:
        raise ConfigError(
            f"device {device!r} asked for CUDA, but this machine has none: use --device cpu or auto"
        )
    index = torch.cuda.current_device() if name == "cuda" else int(name.split(":")[1])
    if index >= count:
        raise ConfigError(
            f"device {device!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def device_label(device: torch.device, precision: str = DEFAULT_PRECISION) -> str:
    """What reports record in their `device` column: ``cpu``, ``cuda:0``; ``/<precision>`` appended when the
    training precision is not fp32 (``cuda:0/bf16``), since it changes the numbers."""
    base = str(device)
    return base if precision == DEFAULT_PRECISION else f"{base}/{precision}"


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` when ``device`` can run it; ConfigError otherwise (fp16 on a CPU, an unknown name)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"precision fp16 needs a CUDA device (fp16 autocast with loss scaling), not {device}; "
            "use bf16 on a CPU"
        )
    return precision


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def autocast(device: torch.device, precision: str = DEFAULT_PRECISION) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in for ``precision`` on ``device`` (see the module docstring)."""
    check_precision(precision, device)
    if precision in ("bf16", "fp16") and device.type in ("cpu", "cuda"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    if device.type == "cuda":
        # explicit both ways: fp32 must not pick up a TF32 setting left on by someone else
        return _tf32(precision == "tf32")
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, precision: str = DEFAULT_PRECISION) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16 training (small fp16 gradients underflow without it); None otherwise."""
    check_precision(precision, device)
    return torch.amp.GradScaler("cuda") if precision == "fp16" else None


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded generator on ``device`` (on the CPU for ``meta``, which has none; meta ops ignore its values)."""
    return torch.Generator(device="cpu" if device.type == "meta" else device).manual_seed(seed)


def pin_if_cuda(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Page-locked host memory when the tensor is headed for a GPU, so `.to(device, non_blocking=True)` overlaps."""
    return tensor.pin_memory() if device.type == "cuda" and tensor.device.type == "cpu" else tensor


HOLD_BYTES_ENV = "GENERALAD_HOLD_BYTES"


def memory_budget(device: torch.device) -> int:
    """Bytes a task may keep resident on ``device`` for reuse: per-epoch test features, and on the CPU a training
    step's attention weights for its backward (`generalad.method.kernels`); each takes up to this much on its
    own, so the two together may hold twice it.

    ``$GENERALAD_HOLD_BYTES`` when set; on CUDA half of the free device memory; on the CPU a quarter of the
    physical memory shared among one task per core (the Dask plan runs that many at once); meta: unbounded.
    """
    import os

    env = os.environ.get(HOLD_BYTES_ENV)
    if env:
        try:
            return max(0, int(float(env)))
        except ValueError:
            raise ConfigError(f"{HOLD_BYTES_ENV} must be a byte count, got {env!r}") from None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    if device.type == "meta":
        return 1 << 62
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(physical // (4 * max(1, cores)))
