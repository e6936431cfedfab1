"""Question 6: peak memory of a training run on a store of 1x and of 8x the images (it must stay flat).

Two stores of random fp16 features are written through the real `StoreWriter` (one-vs-rest, classes a and b;
the 8x store has eight times the training AND the test images of the 1x store). Each run is a separate child
process (this script with ``--child``): `generalad.apps.train_job.train_from_store` for class a with the semantic preset
(clean + noise_all, 1 epoch of 16 drawn images), then scoring of every test image from the store, which streams
the whole 8x test set through the discriminator in batches of 64. Peak RSS is the child's own ``VmHWM``
(/proc/self/status at exit); ``ru_maxrss`` from ``os.wait4`` is recorded too, but on Linux it also counts the
parent's RSS at fork time, so it is only meaningful when the parent is small.

A third child is a positive control: the same run on the 8x store after reading every row into memory
(`InMemoryFeatures` of `FeatureStore.read` of all rows), i.e. what a loading implementation would do. The verdict
is the growth of peak RSS from 1x to 8x divided by the growth of the features (as float32): about 0 when
streaming, 1 or more when loading. Children run with glibc's mmap threshold at 64 KiB, so freed blocks go back
to the system and peak RSS follows live memory rather than heap fragmentation (tens of MB of noise otherwise).
Note that ``import torch`` alone (a CUDA build) is about 0.7 GB of RSS.

Quick: N = 64 (112 px), E = 384, 1x = 128 images (6 MB), 8x = 1024 images (50 MB); full: 1x = 256 images,
8x = 2048 images (100 MB of fp16 features, 200 MB as float32).

``--needs``: what a run needs. An industrial-sized class (54 training, 97 test images, ViT-S width, the
industrial preset: 3 views, batch 16, one epoch) at 224 px (N = 256) and 518 px (N = 1369), each in a child
with the CPU kernels and one with torch's (``GENERALAD_KERNELS=reference``, the path before them). Reported:
peak RSS minus the child's RSS after its imports and before it opens the store (the interpreter baseline).

Usage::

    .venv/bin/python bench/memory.py [--quick] [--grid 8] [--base-images 128] [--needs]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import (
    MALLOC_ENV,
    base_parser,
    check,
    finish,
    loadavg,
    print_table,
    proc_status_kb,
    scratch_dir,
    synthetic_store,
)

NAME = "memory"
CONTROL = "8x, every row loaded first (control)"


def child(url: str, mode: str, threads: int) -> None:
    """Run in a fresh process: train + score class a streaming from the store (``stream``; ``needs``: with the
    industrial preset), or the same run on every row loaded into memory first (``load``, the control)."""
    import numpy as np
    import torch

    from generalad.apps.train_job import train_from_store
    from generalad.method.experiment import run_one_class
    from generalad.method.feature_source import InMemoryFeatures
    from generalad.method.presets import preset_for
    from storage.feature_store import FeatureStore

    torch.set_num_threads(threads)
    baseline = proc_status_kb("VmRSS")
    store = FeatureStore(url)
    if mode == "needs":
        preset, mode = preset_for("mvtec_ad").with_overrides(epochs=1), "stream"
    else:
        preset = preset_for("cifar10").with_overrides(epochs=1, epoch_subset=16)
    start = time.perf_counter()
    if mode == "stream":
        result = train_from_store(store, "a", preset=preset, progress=False)
    else:
        memory = InMemoryFeatures(*store.read(np.arange(store.num_images)))
        result = run_one_class(memory, store.split("a"), preset, progress=False)
    info = {
        "mode": mode,
        "images": store.num_images,
        "test_images": len(result.scores),
        "seconds": time.perf_counter() - start,
        "vm_hwm_kb": proc_status_kb("VmHWM"),
        "baseline_kb": baseline,
    }
    print("RESULT " + json.dumps(info))


def run_child(url: str, mode: str, threads: int, extra_env: dict[str, str] | None = None) -> dict:
    """Start a child, wait for it with ``os.wait4``, return its report and peak RSS."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"} | MALLOC_ENV | (extra_env or {})
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", url, "--mode", mode, "--threads", str(threads)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child ({mode}) failed with exit code {proc.returncode}:\n{out}")
    report = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    # VmHWM is the child's own high-water mark (reset by exec); ru_maxrss from wait4 also counts the parent's
    # RSS at fork time on Linux, so it only means something when the parent is small
    maxrss = usage.ru_maxrss / 1024
    peak = report["vm_hwm_kb"] / 1024 if report.get("vm_hwm_kb") else maxrss
    return report | {"ru_maxrss_mb": maxrss, "peak_mb": peak, "baseline_mb": report["baseline_kb"] / 1024}


def needs(args: argparse.Namespace, started: float) -> dict:
    """Peak RSS above the interpreter baseline of an industrial-sized class at 224 and 518 px, both kernels."""
    load_start = loadavg()
    rows = []
    with scratch_dir("memory-needs") as tmp:
        for grid in args.needs_grids:
            url = synthetic_store(
                str(tmp / f"g{grid}.zarr"), classes=("a", "b"), n_train=54, n_test_per_class=49, grid=grid
            )
            for kernels in ("cpu kernels", "reference"):
                env = {"GENERALAD_KERNELS": "reference"} if kernels == "reference" else {}
                run = run_child(url, "needs", args.threads, env)
                rows.append({"px": grid * 14, "N": grid * grid, "kernels": kernels, **run})
                print(
                    f"{grid * 14} px, {kernels}: peak {run['peak_mb']:.0f} MB, baseline {run['baseline_mb']:.0f} MB"
                )
    for row in rows:
        row["needed_mb"] = row["peak_mb"] - row["baseline_mb"]
    print(
        f"\nwhat a run needs: 54 train + 98 test images, industrial preset, 1 epoch; load at start {load_start}"
    )
    print_table(
        ["px", "kernels", "baseline RSS MB", "peak RSS MB", "peak - baseline MB", "s"],
        [[r["px"], r["kernels"], r["baseline_mb"], r["peak_mb"], r["needed_mb"], r["seconds"]] for r in rows],
    )
    summary = [
        check("6 memory", f"  peak RSS - baseline, {r['px']} px, {r['kernels']} (info, MB)", r["needed_mb"])
        for r in rows
    ]
    return finish(
        f"{NAME}_needs", args, {"loadavg_start": load_start, "runs": rows, "summary": summary}, started
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument("--grid", type=int, default=8, help="patch grid side (8 = 112 px)")
    parser.add_argument("--base-images", type=int, default=None, help="images in the 1x store (128 / 256)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    parser.add_argument("--needs", action="store_true", help="peak RSS above the baseline at 224 and 518 px")
    parser.add_argument(
        "--needs-grids", type=int, nargs="+", default=[16, 37], help="patch grid sides of --needs (16 37)"
    )
    return parser.parse_args(argv)


def flat_runs(grid: int, per_class: int, threads: int) -> dict[str, dict]:
    """The 1x and 8x stores streamed, and the 8x store loaded first (the control), each in its own child."""
    runs: dict[str, dict] = {}
    with scratch_dir("memory") as tmp:
        urls = {}
        for factor in (1, 8):
            urls[factor] = synthetic_store(
                str(tmp / f"x{factor}.zarr"),
                classes=("a", "b"),
                n_train=per_class * factor,
                n_test_per_class=per_class * factor,
                grid=grid,
            )
        runs["1x"] = run_child(urls[1], "stream", threads)
        runs["8x"] = run_child(urls[8], "stream", threads)
        runs[CONTROL] = run_child(urls[8], "load", threads)
    return runs


def flat_report(runs: dict[str, dict], grid: int, threads: int, load_start) -> dict:
    """Prints the runs and the verdict; returns the ratios and the summary rows."""
    ratio = runs["8x"]["peak_mb"] / runs["1x"]["peak_mb"]
    fp32_mb = {k: r["images"] * grid**2 * 384 * 4 / 1e6 for k, r in runs.items()}
    extra_fp32 = fp32_mb["8x"] - fp32_mb["1x"]
    retained = (runs["8x"]["peak_mb"] - runs["1x"]["peak_mb"]) / extra_fp32
    retained_control = (runs[CONTROL]["peak_mb"] - runs["1x"]["peak_mb"]) / extra_fp32
    print(f"\nmemory, N={grid**2}, E=384, fp16 stores, {threads} threads; load at start {load_start}")
    print_table(
        ["run", "store images", "features as fp32 MB", "test images scored", "peak RSS (VmHWM) MB", "s"],
        [
            [name, r["images"], fp32_mb[name], r["test_images"], r["peak_mb"], r["seconds"]]
            for name, r in runs.items()
        ],
    )
    print(
        f"peak RSS 8x / 1x = {ratio:.3f}; of the {extra_fp32:.0f} MB more features (as fp32) the 8x run keeps "
        f"{retained:.1%} resident, the loading control {retained_control:.1%} (streaming: ~0 %, loading: >= 100 %)"
    )
    summary = [
        check(
            "6 memory",
            "peak-RSS growth 1x -> 8x / growth of the features (fp32)",
            retained,
            0.25,  # streaming keeps ~0 (allocator noise ~10 MB), loading >= 1: 0.25 separates them
            "<=",
            source="bench",
            fmt="{:.3f}",
            note=f"{runs['1x']['peak_mb']:.0f} -> {runs['8x']['peak_mb']:.0f} MB; control {retained_control:.2f}",
        ),
        check("6 memory", "  peak RSS 8x / 1x (info)", ratio),
    ]
    return {
        "ratio": ratio,
        "retained_fraction": retained,
        "retained_fraction_control": retained_control,
        "summary": summary,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        child(args.child, args.mode, args.threads)
        return {}
    started = time.perf_counter()
    if args.needs:
        return needs(args, started)
    base = args.base_images or (128 if args.quick else 256)
    per_class = base // 4  # train and test of classes a and b
    load_start = loadavg()
    runs = flat_runs(args.grid, per_class, args.threads)
    payload = {
        "config": {"grid": args.grid, "embed_dim": 384, "base_images": base, "factor": 8},
        "loadavg_start": load_start,
        "runs": runs,
        **flat_report(runs, args.grid, args.threads, load_start),
    }
    return finish(NAME, args, payload, started)


if __name__ == "__main__":
    main()
