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

Self-contained (no bench/common.py); prints a table and writes bench/results/parallel_classes.json.

Usage::

    .venv/bin/python bench/parallel_classes.py [--epochs 5] [--image-size 112] [--rounds 1] [--no-cold]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(_key, _value)

CATEGORIES = ("brick", "grass", "gravel")
OUT = ROOT / "bench" / "results" / "parallel_classes.json"


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-cold", action="store_true", help="only the warm-cluster measurement")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    load_before = _loadavg()
    started = time.perf_counter()
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
            modes = ([False] if not args.no_cold else []) + [True]
            rows = []
            for round_ in range(args.rounds):
                order = (1, 2) if round_ % 2 == 0 else (2, 1)
                for warm in modes:
                    for n in order if warm else order[::-1]:
                        row = _run(jobs, n, warm, run_id=f"bench-{round_}-{n}")
                        rows.append({"round": round_, **row, "loadavg": _loadavg()})
                        print(
                            f"  round {round_} {row['mode']} {n} worker(s): {row['wall_s']:.1f} s", flush=True
                        )

    speedups, paired = {}, {}
    for mode in ("cold", "warm"):
        wall = {(r["round"], r["workers"]): r["wall_s"] for r in rows if r["mode"] == mode}
        one = [s for (_, n), s in wall.items() if n == 1]
        two = [s for (_, n), s in wall.items() if n == 2]
        if one and two:
            speedups[mode] = round(statistics.median(one) / statistics.median(two), 3)
            paired[mode] = [round(wall[(r, 1)] / wall[(r, 2)], 3) for r in range(args.rounds)]

    print(
        f"\nper-class training via train-classes, {len(CATEGORIES)} classes x {args.epochs} epochs, "
        f"{args.image_size} px, {os.cpu_count()} cores"
    )
    print(f"{'round':>5} {'mode':>5} {'workers':>7} {'threads':>7} {'wall s':>8} {'sum task s':>10}  loadavg")
    for r in rows:
        print(
            f"{r['round']:>5} {r['mode']:>5} {r['workers']:>7} {r['torch_threads']:>7} {r['wall_s']:>8.1f} "
            f"{r['sum_task_s']:>10.1f}  {r['loadavg']}"
        )
    for mode, value in speedups.items():
        rounds = ", ".join(f"{x:.2f}" for x in paired[mode])
        print(f"speed-up 2 vs 1 workers ({mode}): {value:.2f}x (median walls); per round: {rounds}")
    print(f"load average before {load_before}, after {_loadavg()}")

    result = {
        "name": "parallel_classes",
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
        "loadavg_after": _loadavg(),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "speedup_2_vs_1": speedups,
        "speedup_2_vs_1_per_round": paired,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
