"""Per-class training through the flows (Prefect + DaskTaskRunner) with 1 and 2 Dask workers.

What `reproduce-all`'s training step costs on this machine, by cluster size. Real feature stores: the offline
quickstart set (categories brick, grass, gravel; generated), random-init ViT-S at `--image-size` px (112 by
default: 64 patches), extracted once before anything is timed. Then, for n_workers in 1 and 2, the
`train-classes` subflow (flows/reproduce.py) runs one `train-class` task per category, `--epochs` epochs each,
evaluation every epoch, torch threads per task as `flows.runtime.plan_dask` sizes them (cores // workers):

- cold: the subflow makes its own LocalCluster (as `reproduce-all` does): cluster start, worker imports of torch
  and the project, and training, all timed;
- warm: a LocalCluster made from the same plan is started and its workers import the project first (untimed);
  the subflow then runs on it by address: only the Prefect fan-out and the training are timed.

Speed-up = 1-worker wall time / 2-worker wall time of the same mode. `sum task s` adds the tasks' own
train + eval seconds (from the report rows): the work, whatever ran in parallel. Rounds alternate the order of
the sizes; the load average (`os.getloadavg`) is recorded before and after, since the 2 cores are shared.

Prints a table and writes bench/results/parallel_classes.json. ``--quick``: 1 epoch at 56 px (a smoke run).

Usage::

    .venv/bin/python bench/parallel_classes.py [--quick] [--epochs 5] [--image-size 112] [--rounds 1] [--no-cold]
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, base_parser, finish, loadavg, median, offline_environment, print_table, quick_or_full

sys.path.insert(0, str(ROOT))  # the project, where it is not installed
offline_environment()

NAME = "parallel_classes"
CATEGORIES = ("brick", "grass", "gravel")


def _build_stores(work: Path, image_size: int) -> list[str]:
    """Quickstart stores of every category (random-init ViT-S), extracted once; their URLs."""
    from generalad.backbone import BackboneSpec
    from generalad.data import generate_quickstart, get_dataset
    from storage.extraction import extract_features

    root = generate_quickstart(work / "data" / "quickstart")
    spec = BackboneSpec(name="vit_small_patch14_dinov2", weights="random", image_size=image_size)
    urls = []
    for category in CATEGORIES:
        adapter = get_dataset("quickstart", root, category=category)
        urls.append(extract_features(adapter, spec, str(work / "stores"), progress=False).url)
    return urls


def _warm_cluster(plan):
    """A LocalCluster as the plan says, every worker having imported what a class task needs."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(**plan.runner_kwargs()["cluster_kwargs"])
    with Client(cluster) as client:
        client.run(lambda: __import__("flows.train") and None)
    return cluster


def _run(jobs, n_workers: int, warm: bool, run_id: str) -> dict:
    """One training phase: the train-classes subflow over `jobs`; wall seconds and the tasks' own seconds."""
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from flows.reproduce import train_classes
    from flows.runtime import plan_dask
    from flows.train import ClassResult

    plan = plan_dask(len(jobs), n_workers=n_workers)
    cluster = _warm_cluster(plan) if warm else None
    runner = (
        DaskTaskRunner(address=cluster.scheduler_address) if warm else DaskTaskRunner(**plan.runner_kwargs())
    )

    @flow(name="bench-parallel-classes")
    def phase():
        started = time.perf_counter()
        outcomes = train_classes.with_options(task_runner=runner)(jobs, run_id, plan.torch_threads)
        return time.perf_counter() - started, outcomes

    try:
        seconds, outcomes = phase()
    finally:
        if cluster is not None:
            cluster.close()
    failed = [f"{job.label}: {outcome}" for job, outcome in outcomes if not isinstance(outcome, ClassResult)]
    if failed:
        raise RuntimeError(f"class tasks failed: {failed}")
    task_seconds = 0.0
    for _, result in outcomes:
        row = next(r for r in result.metrics if r.metric == "image_auroc" and r.selection == "last")
        task_seconds += (row.train_seconds or 0.0) + (row.eval_seconds or 0.0)
    return {
        "mode": "warm" if warm else "cold",
        "workers": n_workers,
        "torch_threads": plan.torch_threads,
        "wall_s": round(seconds, 2),
        "sum_task_s": round(task_seconds, 2),
    }


def parse_args(argv: list[str] | None):
    parser = base_parser(__doc__, threads=False, quick_help="1 epoch at 56 px (a smoke run)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per class (1 quick, 5 full)")
    parser.add_argument("--image-size", type=int, default=None, help="56 quick, 112 full")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-cold", action="store_true", help="only the warm-cluster measurement")
    return quick_or_full(parser.parse_args(argv), epochs=(1, 5), image_size=(56, 112))


def run_rounds(jobs, args) -> list[dict]:
    """Every round: cold then warm, each over 1 and 2 workers in alternating order."""
    modes = ([False] if not args.no_cold else []) + [True]
    rows = []
    for round_ in range(args.rounds):
        order = (1, 2) if round_ % 2 == 0 else (2, 1)
        for warm in modes:
            for n in order if warm else order[::-1]:
                row = _run(jobs, n, warm, run_id=f"bench-{round_}-{n}")
                rows.append({"round": round_, **row, "loadavg": loadavg()})
                print(f"  round {round_} {row['mode']} {n} worker(s): {row['wall_s']:.1f} s", flush=True)
    return rows


def measure(args) -> list[dict]:
    """Stores of every category (extracted once, untimed), then the timed rounds, under a Prefect API."""
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        from flows.runtime import ensure_prefect_api

        with ensure_prefect_api():
            import torch

            from flows.train import ClassJob

            torch.set_num_threads(1)
            logging.getLogger("distributed").setLevel(logging.ERROR)
            urls = _build_stores(Path(tmp), args.image_size)
            jobs = [
                ClassJob(url, category, overrides={"epochs": args.epochs})
                for url, category in zip(urls, CATEGORIES, strict=True)
            ]
            return run_rounds(jobs, args)


def speedups(rows: list[dict], rounds: int) -> tuple[dict, dict]:
    """Per mode: median 1-worker wall / median 2-worker wall, and the same ratio per round."""
    medians, paired = {}, {}
    for mode in ("cold", "warm"):
        wall = {(r["round"], r["workers"]): r["wall_s"] for r in rows if r["mode"] == mode}
        one = [s for (_, n), s in wall.items() if n == 1]
        two = [s for (_, n), s in wall.items() if n == 2]
        if one and two:
            medians[mode] = round(median(one) / median(two), 3)
            paired[mode] = [round(wall[(r, 1)] / wall[(r, 2)], 3) for r in range(rounds)]
    return medians, paired


def print_rows(rows: list[dict], medians: dict, paired: dict, args) -> None:
    print(
        f"\nper-class training via train-classes, {len(CATEGORIES)} classes x {args.epochs} epochs, "
        f"{args.image_size} px, {os.cpu_count()} cores"
    )
    print_table(
        ["round", "mode", "workers", "threads", "wall s", "sum task s", "loadavg"],
        [
            [r[k] for k in ("round", "mode", "workers", "torch_threads", "wall_s", "sum_task_s")]
            + [r["loadavg"]]
            for r in rows
        ],
    )
    for mode, value in medians.items():
        rounds = ", ".join(f"{x:.2f}" for x in paired[mode])
        print(f"speed-up 2 vs 1 workers ({mode}): {value:.2f}x (median walls); per round: {rounds}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    load_before, started = loadavg(), time.perf_counter()
    rows = measure(args)
    medians, paired = speedups(rows, args.rounds)
    print_rows(rows, medians, paired, args)
    print(f"load average before {load_before}, after {loadavg()}")
    payload = {
        "config": {
            "classes": list(CATEGORIES),
            "epochs": args.epochs,
            "image_size": args.image_size,
            "weights": "random",
            "backbone": "vit_small_patch14_dinov2",
            "rounds": args.rounds,
        },
        "cores": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "speedup_2_vs_1": medians,
        "speedup_2_vs_1_per_round": paired,
    }
    return finish(NAME, args, payload, started)


if __name__ == "__main__":
    main()
