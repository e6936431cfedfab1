"""Question 7: per-class training throughput with 1 and 2 Dask workers (plain `distributed`, no Prefect).

One feature store of random fp16 features with K classes (one-vs-rest) is written once. One
`distributed.LocalCluster` of 2 worker processes (1 task slot each, bound to 127.0.0.1) is started and every
worker warmed up (imports torch and the project; start-up reported, not counted). Then, for 1 worker (tasks
pinned to the first worker) and for 2 workers, `client.map` runs `generalad.apps.train_job.train_from_store` for each
of the K classes (semantic preset, 2 epochs of 16 images, scoring
at the end). Torch threads per task follow the project's plan (`flows.runtime.plan_dask`): cores // workers,
so 1 worker x 2 threads against 2 workers x 1 thread on 2 cores. Throughput = classes per second of wall time
from the first submit to the last result (cluster start-up reported separately). Verdict: 2-worker throughput /
1-worker throughput (>= 1.0: running classes in parallel must not lose).

Prefect-level fan-out (flows, task runner, local server) is measured elsewhere (`bench/parallel_classes.py`).

Quick: N = 64 (112 px), 4 classes; full: N = 256 (224 px), 4 classes.

Usage::

    .venv/bin/python bench/dask_classes.py [--quick] [--classes 4] [--grid 16] [--workers 1 2]
"""

from __future__ import annotations

import logging
import os
import sys
import time

import cloudpickle
from common import (
    base_parser,
    check,
    finish,
    loadavg,
    median,
    print_table,
    quick_or_full,
    scratch_dir,
    synthetic_store,
)

NAME = "dask_classes"
# functions of this module travel to the workers by value (the workers cannot import bench/ modules)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def warm_worker() -> int:
    """Import what a task needs, so the timed part does not pay for imports."""
    import torch  # noqa: F401

    import generalad.apps.train_job  # noqa: F401

    return os.getpid()


def train_class(url: str, normal_class: str, preset: dict, threads: int) -> dict:
    """One class on a worker: open the store, train, score; returns timing."""
    import torch

    from generalad.apps.train_job import train_from_store
    from generalad.method.presets import Preset
    from storage.feature_store import FeatureStore

    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = train_from_store(
        FeatureStore(url), normal_class, preset=Preset.from_dict(preset), progress=False
    )
    steps = sum(h["steps"] for h in result.history)
    return {"class": normal_class, "seconds": time.perf_counter() - start, "steps": steps, "pid": os.getpid()}


def run_config(client, workers: list[str], url: str, classes: list[str], preset: dict, cores: int) -> dict:
    """Train every class on the given workers (tasks pinned to them), torch threads = cores // len(workers)."""
    threads = max(1, cores // len(workers))
    start = time.perf_counter()
    futures = client.map(
        train_class,
        [url] * len(classes),
        classes,
        [preset] * len(classes),
        [threads] * len(classes),
        pure=False,
        workers=workers,
        allow_other_workers=False,
    )
    tasks = client.gather(futures)
    wall = time.perf_counter() - start
    return {
        "workers": len(workers),
        "torch_threads": threads,
        "wall_s": wall,
        "classes_per_s": len(classes) / wall,
        "tasks": tasks,
    }


def parse_args(argv: list[str] | None):
    parser = base_parser(__doc__)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--grid", type=int, default=None, help="patch grid side (8 quick, 16 full)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--rounds", type=int, default=None, help="passes over the worker counts (1 quick, 2 full)"
    )
    return quick_or_full(parser.parse_args(argv), grid=(8, 16), rounds=(1, 2))


def measure(url: str, classes: list[str], preset: dict, args) -> tuple[float, list[dict]]:
    """One cluster of max(workers) warmed-up workers; every worker count in turn (A B, B A, ...): (start-up s,
    runs)."""
    from distributed import Client, LocalCluster

    begin = time.perf_counter()
    with (
        LocalCluster(
            n_workers=max(args.workers),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(warm_worker)
        startup = time.perf_counter() - begin
        addresses = sorted(client.scheduler_info()["workers"])
        order = list(args.workers) + list(reversed(args.workers)) * (args.rounds - 1)
        # cores the benchmark may use: torch threads per task = cores // workers
        runs = [run_config(client, addresses[:w], url, classes, preset, args.threads) for w in order]
    return startup, runs


def print_runs(runs: list[dict], rate: dict, first: int) -> None:
    print_table(
        ["workers x torch threads", "wall s", "classes/s", "median s/class", "speed-up"],
        [
            [
                f"{r['workers']} x {r['torch_threads']}",
                r["wall_s"],
                r["classes_per_s"],
                median([t["seconds"] for t in r["tasks"]]),
                r["classes_per_s"] / rate[first],
            ]
            for r in runs
        ],
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started, load_start = time.perf_counter(), loadavg()
    from generalad.method.presets import preset_for

    classes = [f"c{i}" for i in range(args.classes)]
    preset = preset_for("cifar10").with_overrides(epochs=2, epoch_subset=16).to_dict()
    with scratch_dir("dask") as tmp:
        url = synthetic_store(
            str(tmp / "store.zarr"), classes=classes, n_train=16, n_test_per_class=8, grid=args.grid
        )
        startup, runs = measure(url, classes, preset, args)
    by_workers = {w: [r for r in runs if r["workers"] == w] for w in args.workers}
    rate = {w: median([r["classes_per_s"] for r in rs]) for w, rs in by_workers.items()}
    first, last, grid = args.workers[0], args.workers[-1], args.grid
    print(
        f"\nparallel classes on Dask, {len(classes)} classes, N={grid * grid}, E=384, semantic preset 2 epochs x "
        f"1 step, {args.threads} cores; cluster start-up {startup:.1f} s (not counted); load at start {load_start}"
    )
    print_runs(runs, rate, first)
    summary = [
        check(
            "7 parallel classes",
            f"classes/s, {last} Dask workers / {first} worker",
            rate[last] / rate[first],
            1.0,
            ">=",
            source="bench",
            fmt="{:.2f}",
            note=f"N={grid * grid}, {len(classes)} classes",
        )
    ]
    payload = {
        "config": {"classes": len(classes), "grid": grid, "preset": preset, "cores": args.threads},
        "loadavg_start": load_start,
        "startup_s": startup,
        "runs": runs,
        "classes_per_s": rate,
        "summary": summary,
    }
    return finish(NAME, args, payload, started)


if __name__ == "__main__":
    main()
