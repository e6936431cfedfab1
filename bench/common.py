"""Shared helpers of the benchmarks in `bench/`: timing, medians, ratios, load, options, result JSON, tables.

Machine facts come from `bench/machine.py` and the data the benchmarks run on from `bench/inputs.py`; both are
re-exported here, so every benchmark imports from this module only.

Every benchmark script is a module with a ``main(argv) -> dict`` that prints a table, writes
``bench/results/<name>.json`` and returns the same dict; ``bench/run_all.py`` calls them one after the other and
collects their ``summary`` rows (question, metric, value, target, holds).

The machine these run on is shared and small (2 cores), so absolute times are noisy. Every speed a benchmark
reports as a verdict is therefore a RATIO of two things measured in the same process, interleaved (A B B A ...),
and reported as the median of per-round ratios; ``os.getloadavg()`` is recorded beside each result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from inputs import ROOT, SHARED_DATA, cifar_adapter, grid_adapter, synthetic_store
from machine import MALLOC_ENV, cpu_flags, cpu_model, machine, peak_rss_mb, proc_status_kb, reset_peak_rss

__all__ = [
    "ROOT",
    "RESULTS_DIR",
    "SHARED_DATA",
    "loadavg",
    "LoadSampler",
    "machine",
    "cpu_model",
    "cpu_flags",
    "median",
    "interleaved",
    "proc_status_kb",
    "peak_rss_mb",
    "reset_peak_rss",
    "MALLOC_ENV",
    "paired_ratios",
    "matmul_flops_per_second",
    "check",
    "base_parser",
    "quick_or_full",
    "finish",
    "write_json",
    "print_table",
    "scratch_dir",
    "offline_environment",
    "grid_adapter",
    "cifar_adapter",
    "synthetic_store",
]

RESULTS_DIR = ROOT / "bench" / "results"


# ----------------------------------------------------------------------------------------------- machine
def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


class LoadSampler:
    """Samples the 1-minute load average every ``period`` seconds in a daemon thread (``with LoadSampler():``)."""

    def __init__(self, period: float = 2.0):
        self.period, self.samples = period, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load-sampler")

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mark(self) -> int:
        """A position in the samples: `stats(since=mark)` then covers what came after it."""
        return len(self.samples)

    def stats(self, since: int = 0) -> dict[str, float]:
        part = self.samples[since:] or self.samples[-1:]
        return {"min": min(part), "median": statistics.median(part), "max": max(part)}


# ----------------------------------------------------------------------------------------------- timing
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def interleaved(
    variants: dict[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each variant, run in alternating order (A B C, C B A, A B C ...) so drift in the machine's
    load hits every variant alike. ``warmup`` untimed calls of each variant come first.

    ``clock`` is wall time by default; ``time.thread_time`` measures the CPU seconds of the calling thread, which
    on a shared, oversubscribed machine is far steadier than wall time for single-threaded work (torch with one
    thread computes on the calling thread), at the price of not seeing waits.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start = clock()
            variants[name]()
            times[name].append(clock() - start)
    return times


def paired_ratios(times: dict[str, list[float]], numerator: str, denominator: str) -> list[float]:
    """Per-round ratios ``times[numerator][i] / times[denominator][i]`` (pairs measured side by side)."""
    return [a / b for a, b in zip(times[numerator], times[denominator], strict=True)]


def matmul_flops_per_second(size: int = 2048, *, repeats: int = 3, device: str = "cpu", dtype=None) -> float:
    """float32 (or ``dtype``) FLOP/s of a size x size matmul, 2 * size^3 FLOPs, best of ``repeats`` after a warm-up.

    The best (not the median) is the machine's attainable matmul rate: interference only ever slows a run down.
    """
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        if i:  # the first call is a warm-up
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


# ----------------------------------------------------------------------------------------------- results
def check(
    question: str,
    metric: str,
    value: float | None,
    target: float | None = None,
    op: str | None = None,
    *,
    source: str = "issue",
    fmt: str = "{:.3f}",
    note: str = "",
) -> dict[str, Any]:
    """One summary row: a measured ratio, its target (``op`` is ">=" or "<="), and whether it holds.

    ``source`` says where the target comes from: "issue" (the benchmark's brief) or "bench" (set here, stated).
    """
    holds = None
    if value is not None and target is not None and op is not None:
        holds = bool(value >= target) if op == ">=" else bool(value <= target)
    return {
        "question": question,
        "metric": metric,
        "value": value,
        "shown": "—" if value is None else fmt.format(value),
        "target": None if target is None else f"{op} {fmt.format(target)}",
        "target_source": source if target is not None else None,
        "holds": holds,
        "note": note,
    }


def base_parser(
    doc: str | None,
    *,
    threads: bool = True,
    quick_help: str = "small sizes (part of the ~2 minute bench-quick)",
) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick, --threads (unless ``threads=False``), --out."""
    parser = argparse.ArgumentParser(
        description=(doc or "").strip().split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if threads:
        parser.add_argument(
            "--threads",
            type=int,
            default=min(2, os.cpu_count() or 1),
            help="torch threads (default: min(2, cores))",
        )
    parser.add_argument(
        "--out", type=Path, default=None, help="result JSON (default bench/results/<name>.json)"
    )
    return parser


def quick_or_full(args: argparse.Namespace, **defaults: tuple[Any, Any]) -> argparse.Namespace:
    """Fill each option left unset (None) with its (quick, full) default, by ``args.quick``; returns ``args``."""
    for name, (quick, full) in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def finish(name: str, args: argparse.Namespace, payload: dict[str, Any], started: float) -> dict[str, Any]:
    """Add the common fields (mode, args, machine, load, seconds), write the JSON, print where, return it."""
    result = {
        "name": name,
        "mode": "quick" if getattr(args, "quick", False) else "full",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine(),
        "loadavg_end": loadavg(),
        "seconds": time.perf_counter() - started,
        **payload,
    }
    out = write_json(args.out or RESULTS_DIR / f"{name}.json", result)
    print(f"[{name}] {result['seconds']:.1f} s, load {result['loadavg_end']}, wrote {_display(out)}")
    return result


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON at ``path`` (folders created; numpy scalars and paths as plain values)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None) -> None:
    """A plain fixed-width table; numbers right-aligned, text left-aligned."""
    cells = [[str(c) for c in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]
    if title:
        print(title)

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric, strict=True)
        )

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def offline_environment() -> None:
    """No hub downloads, no Prefect analytics (for benchmarks that run flows or children; unless set already)."""
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder on the same disk as the system temp dir, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"generalad-bench-{prefix}-") as path:
        yield Path(path)
