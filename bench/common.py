"""Shared helpers of the benchmarks in `bench/`: timing, medians, load, machine facts, result JSON, data.

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
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "RESULTS_DIR",
    "SHARED_DATA",
    "loadavg",
    "machine",
    "median",
    "interleaved",
    "peak_rss_mb",
    "reset_peak_rss",
    "paired_ratios",
    "matmul_flops_per_second",
    "check",
    "base_parser",
    "finish",
    "print_table",
    "scratch_dir",
    "instrumented_extraction",
    "grid_adapter",
    "cifar_adapter",
    "synthetic_store",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
# ../shared/data next to the project (absent on a fresh clone elsewhere: the benches then generate images)
SHARED_DATA = Path(os.environ.get("GENERALAD_BENCH_DATA", ROOT.parent / "shared" / "data"))


# ----------------------------------------------------------------------------------------------- machine
def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


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


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM) in MB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


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


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick, --threads, --out."""
    parser = argparse.ArgumentParser(
        description=(doc or "").strip().split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (part of the ~2 minute bench-quick)"
    )
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
    out = args.out or RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=_json_default))
    print(f"[{name}] {result['seconds']:.1f} s, load {result['loadavg_end']}, wrote {_display(out)}")
    return result


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


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder on the same disk as the system temp dir, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"generalad-bench-{prefix}-") as path:
        yield Path(path)


@contextlib.contextmanager
def instrumented_extraction(split: dict[str, float]) -> Iterator[None]:
    """Time the parts of `storage.extraction.extract_features` by wrapping what it calls (restored afterwards):
    model build, backbone forward (main thread), file decode + resize (background thread, overlaps the forward),
    shard writes, and the final verify + consolidate + COMPLETE marker. Adds seconds into ``split``."""
    import storage.extraction as extraction

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                split[name] = split.get(name, 0.0) + time.perf_counter() - start

        return wrapper

    saved = {name: getattr(extraction, name) for name in ("load_backbone", "_decode", "StoreWriter")}

    def load_backbone(spec):
        backbone = timed("build model", saved["load_backbone"])(spec)
        backbone.forward = timed("forward + capture (main thread)", backbone.forward)
        return backbone

    class Writer(saved["StoreWriter"]):
        def __init__(self, *a, **k):
            timed("create store", super().__init__)(*a, **k)

        def write_shard(self, *a, **k):
            return timed("write shards", super().write_shard)(*a, **k)

        def mark_complete(self, *a, **k):
            return timed("verify + consolidate + marker", super().mark_complete)(*a, **k)

    extraction.load_backbone = load_backbone
    extraction._decode = timed("decode + resize + mask (background thread)", saved["_decode"])
    extraction.StoreWriter = Writer
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(extraction, name, value)


# ----------------------------------------------------------------------------------------------- data
def _limited(adapter, n_train: int | None, n_test: int | None):
    """The same adapter class restricted to its first ``n_train`` training and ``n_test`` test records (half of
    them normal, the rest anomalous, where the labels are known), so small runs still use the real code path."""
    if n_train is None and n_test is None:
        return adapter
    base = type(adapter)

    class Limited(base):  # type: ignore[misc, valid-type]
        def records(self):
            records = sorted(super().records(), key=lambda r: r.image_id)
            train = [r for r in records if r.split == "train"][: n_train or None]
            test = [r for r in records if r.split == "test"]
            if n_test is not None:
                normal = [r for r in test if r.label == 0]
                other = [r for r in test if r.label != 0]
                half = min(len(normal), max(1, n_test // 2))
                test = normal[:half] + other[: n_test - half]
            return train + test

    Limited.__name__ = Limited.__qualname__ = base.__name__
    return Limited(adapter.root, adapter.category, **adapter.options)


def grid_adapter(tmp: Path, *, n_train: int | None = None, n_test: int | None = None):
    """MVTec-AD `grid` from ../shared/data (1024x1024 greyscale PNGs with masks), or, when that is absent, a
    generated MVTec-layout category of 1024x1024 PNGs (the `quickstart` generator); returns (adapter, source)."""
    from generalad.data import generate_quickstart, get_dataset

    root = SHARED_DATA / "mvtec_ad"
    if (root / "grid" / "train" / "good").is_dir():
        adapter, source = get_dataset("mvtec_ad", root, category="grid"), f"{_short(root)}/grid"
    else:
        generated = generate_quickstart(
            tmp / "quickstart", n_train=25, n_test_good=3, n_test_defect=11, image_size=1024
        )
        adapter, source = get_dataset("quickstart", generated, category="brick"), "generated quickstart/brick"
    return _limited(adapter, n_train, n_test), source


def cifar_adapter(
    tmp: Path, normal_classes: Sequence[str], *, n_train: int, n_test_per_class: int, n_other_train: int = 1
):
    """A CIFAR-10 folder-layout subset in ``tmp`` (symlinks to ../shared/data/cifar10, or generated 32x32 JPEGs):
    ``n_train`` training images of each normal class, ``n_other_train`` of every other class (the adapter wants
    all ten), ``n_test_per_class`` test images of every class. Returns (adapter, source)."""
    import numpy as np
    from PIL import Image

    from generalad.data import get_dataset
    from generalad.data.cifar import CIFAR10_CLASSES

    real = SHARED_DATA / "cifar10"
    root = tmp / "cifar10"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in CIFAR10_CLASSES:
            count = (
                (n_train if name in normal_classes else n_other_train)
                if split == "train"
                else n_test_per_class
            )
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            files = sorted((real / split / name).glob("*.jpg"))[:count] if real.is_dir() else []
            for i in range(count):
                target = folder / f"{i:04d}.jpg"
                if i < len(files):
                    target.symlink_to(files[i].resolve())
                else:
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                        target, quality=75
                    )
    source = f"{_short(real)} (symlinked subset)" if real.is_dir() else "generated 32x32 JPEGs"
    return get_dataset("cifar10", root), source


def _short(path: Path) -> str:
    try:
        return os.path.relpath(path, ROOT)
    except ValueError:
        return str(path)


def synthetic_store(
    url: str,
    *,
    classes: Sequence[str],
    n_train: int,
    n_test_per_class: int,
    grid: int,
    embed_dim: int = 384,
    num_heads: int = 6,
    dtype: str = "float16",
    shard_size: int = 32,
    seed: int = 0,
    on_write: Callable[[float, int], None] | None = None,
) -> str:
    """Write a complete feature store of random features through the real `StoreWriter`, without a backbone.

    A one-vs-rest dataset: ``n_train`` training and ``n_test_per_class`` test images per class, ``grid`` x ``grid``
    patches of width ``embed_dim``. Random values come from one pre-generated block (tiled), so generating them
    costs little; ``on_write(seconds, nbytes)`` is called with the wall time of each ``write_shard`` call.
    """
    import numpy as np
    import timm

    from generalad.data.base import Record, manifest_frame
    from generalad.data.oneclass import one_vs_rest_split
    from storage.feature_store import StoreLayout, StoreWriter
    from storage.fingerprint import SCHEMA_VERSION, StoreFingerprint, manifest_hash

    records = []
    for name in classes:
        for split, count in (("train", n_train), ("test", n_test_per_class)):
            for i in range(count):
                rel = f"{split}/{name}/{i:05d}.npy"
                records.append(Record(rel, rel, split, name, -1))
    manifest = manifest_frame(records)
    splits = {c: one_vs_rest_split(manifest, c, list(classes), what="synthetic") for c in classes}
    num_patches = grid * grid
    fingerprint = StoreFingerprint(
        dataset="bench_synthetic",
        category=None,
        backbone="vit_small_patch14_dinov2",
        weights=f"synthetic:{seed}",
        image_size=grid * 14,
        layers=(-1,),
        final_norm=True,
        preprocessing="synthetic",
        attention_capture="synthetic",
        dtype=dtype,
        timm_version=timm.__version__,
        manifest_hash=manifest_hash(manifest),
        schema_version=SCHEMA_VERSION,
    )
    layout = StoreLayout(
        num_images=len(manifest),
        num_patches=num_patches,
        embed_dim=embed_dim,
        num_heads=num_heads,
        image_size=grid * 14,
        dtype=dtype,
        has_masks=False,
        shard_size=shard_size,
    )
    writer = StoreWriter(url, fingerprint, layout, manifest, splits, protocol="bench_synthetic_one_vs_rest")
    rng = np.random.default_rng(seed)
    block = rng.standard_normal((shard_size, num_patches, embed_dim), dtype=np.float32).astype(dtype)
    attn = rng.random((shard_size, num_heads, num_patches), dtype=np.float32).astype(dtype)
    for shard in range(layout.num_shards):
        start, stop = layout.shard_rows(shard)
        tokens = np.roll(block, shard, axis=1)[: stop - start]  # distinct bytes per shard
        began = time.perf_counter()
        writer.write_shard(shard, tokens, attn[: stop - start])
        if on_write is not None:
            on_write(time.perf_counter() - began, tokens.nbytes + attn[: stop - start].nbytes)
    writer.mark_complete({"synthetic": True})
    return url
