"""The CPU kernels and byte-range store reads against the paths before them: same results, time per epoch.

1. Results unchanged in distribution: image AUROC over seeds on real data, each seed trained three times: with
   the new paths (``generalad.method.kernels``, ``FeatureStore(reads="runs")``) in fp32 and in bf16 autocast, and
   with the old ones in fp32 (`generalad.method.kernels.reference_kernels`, ``reads="zarr"``). Data: MVTec-AD grid from ../shared/data and
   the generated quickstart brick, features from a random-weight ViT-S at a small size (tiny settings; the
   numbers are a sanity check of equivalence, not of the method). The two paths draw different dropout masks,
   so a seed's two AUROCs differ a little; what must hold is the same mean within the seeds' spread.
2. Time per epoch of an industrial-sized class at 224 px (54 training images, 3 steps of 16, the industrial
   preset) from a fp16 store on disk: the old path in fp32 (``GENERALAD_KERNELS=reference``,
   ``GENERALAD_STORE_READS=zarr``, ``GENERALAD_MALLOC=default``), the new one in fp32 and in bf16, each run in a
   fresh process, interleaved per round (median of per-round ratios), wall clock and process CPU time (all
   threads: the read-ahead thread too).

Usage::

    .venv/bin/python bench/fast_paths.py [--quick] [--seeds 5] [--epochs 10] [--rounds 3]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (
    SHARED_DATA,
    base_parser,
    check,
    finish,
    loadavg,
    median,
    print_table,
    scratch_dir,
    synthetic_store,
)

NAME = "fast_paths"


def _datasets(tmp: Path) -> dict:
    from generalad.data import generate_quickstart, get_dataset

    out = {}
    grid = SHARED_DATA / "mvtec_ad"
    if (grid / "grid" / "train" / "good").is_dir():
        out["mvtec_ad/grid"] = (get_dataset("mvtec_ad", grid, category="grid"), "grid")
    quick = generate_quickstart(
        tmp / "quickstart", n_train=24, n_test_good=6, n_test_defect=10, image_size=112
    )
    out["quickstart/brick"] = (get_dataset("quickstart", quick, category="brick"), "brick")
    return out


def _auroc(store, normal_class: str, preset, seed: int, old: bool, precision: str = "fp32") -> float:
    from generalad.apps.train_job import train_from_store
    from generalad.method.kernels import reference_kernels
    from storage.feature_store import FeatureStore

    source = FeatureStore(store.url, reads="zarr" if old else "runs")
    with reference_kernels(old):
        result = train_from_store(
            source, normal_class, preset=preset, seed=seed, progress=False, precision=precision
        )
    return next(
        m["value"] for m in result.metrics if m["metric"] == "image_auroc" and m["selection"] == "last"
    )


def equivalence(tmp: Path, seeds: int, epochs: int, size: int) -> list[dict]:
    from generalad.backbone import BackboneSpec
    from generalad.method.presets import preset_for
    from storage.extraction import extract_features
    from storage.feature_store import FeatureStore

    spec = BackboneSpec(weights="random", image_size=size, init_values=1.0)
    rows = []
    for name, (adapter, normal_class) in _datasets(tmp).items():
        store = FeatureStore(extract_features(adapter, spec, str(tmp / "stores"), progress=False).url)
        preset = preset_for("mvtec_ad").with_overrides(epochs=epochs)
        new = [_auroc(store, normal_class, preset, s, old=False) for s in range(seeds)]
        old = [_auroc(store, normal_class, preset, s, old=True) for s in range(seeds)]
        bf16 = [_auroc(store, normal_class, preset, s, old=False, precision="bf16") for s in range(seeds)]
        rows.append({"data": name, "new": new, "old": old, "new_bf16": bf16})
    return rows


# one training run in a fresh process (the allocator setting is per process), timed from inside: prints JSON
_EPOCH_PROBE = """
import json, statistics, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
from generalad.apps.train_job import train_from_store
from generalad.method.presets import preset_for
from storage.feature_store import FeatureStore
url, epochs, seed, precision = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5]
preset = preset_for("mvtec_ad").with_overrides(epochs=epochs)
cpu = time.process_time()
result = train_from_store(FeatureStore(url), "a", preset=preset, seed=seed, progress=False, precision=precision)
cpu = (time.process_time() - cpu) / epochs  # scoring included; dominated by the epochs
print(json.dumps({"wall": statistics.median(h["seconds"] for h in result.history), "cpu": cpu}))
"""

# the paths timed: environment switches restore the path before the kernels, byte-range reads and allocator
EPOCH_VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "old": (
        {"GENERALAD_KERNELS": "reference", "GENERALAD_STORE_READS": "zarr", "GENERALAD_MALLOC": "default"},
        "fp32",
    ),
    "new": ({}, "fp32"),
    "new_bf16": ({}, "bf16"),
}


def epoch_times(tmp: Path, rounds: int, epochs: int, threads: int) -> dict[str, dict[str, list[float]]]:
    """Per-epoch wall and CPU seconds (median over a run's epochs) per round and variant, each run in a fresh
    process, the variants' order reversed every other round."""
    url = synthetic_store(str(tmp / "g16.zarr"), classes=("a", "b"), n_train=54, n_test_per_class=49, grid=16)
    out: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in EPOCH_VARIANTS}
    names = list(EPOCH_VARIANTS)
    clean = {k: v for k, v in os.environ.items() if k not in EPOCH_VARIANTS["old"][0]}  # no caller's switches
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            env, precision = EPOCH_VARIANTS[name]
            argv = [sys.executable, "-c", _EPOCH_PROBE, url, str(epochs), str(r), str(threads), precision]
            done = subprocess.run(argv, env={**clean, **env}, capture_output=True, text=True, check=True)
            timing = json.loads(done.stdout.strip().splitlines()[-1])
            out[name]["wall"].append(timing["wall"])
            out[name]["cpu"].append(timing["cpu"])
    return out


def parse_args(argv: list[str] | None):
    parser = base_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=None, help="seeds per data set (3 quick, 5 full)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of the AUROC runs (5 quick, 10 full)"
    )
    parser.add_argument("--size", type=int, default=112, help="image size of the AUROC runs' features")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of the epoch timing (2 quick, 3 full)"
    )
    return parser.parse_args(argv)


def auroc_report(aurocs: list[dict]) -> list[dict]:
    """Prints mean AUROC new, old and new in bf16 per data set; returns the summary rows (difference of the
    means / spread over seeds, new vs old and bf16 vs fp32)."""
    table, summary = [], []
    for row in aurocs:
        new, old, bf16 = row["new"], row["old"], row["new_bf16"]
        spread = statistics.pstdev(new + old) or 1e-9
        diff, low = statistics.mean(new) - statistics.mean(old), statistics.mean(bf16) - statistics.mean(new)
        table.append(
            [row["data"], statistics.mean(new), statistics.mean(old), statistics.mean(bf16), diff, spread]
        )
        for label, value, note in (
            ("new - old", diff, f"new {statistics.mean(new):.3f}, old {statistics.mean(old):.3f}"),
            ("bf16 - fp32", low, f"bf16 {statistics.mean(bf16):.3f}, fp32 {statistics.mean(new):.3f}"),
        ):
            summary.append(
                check(
                    "12 equivalence",
                    f"|mean AUROC {label}| / spread over seeds, {row['data']}",
                    abs(value) / spread,
                    1.0,
                    "<=",
                    source="bench",
                    fmt="{:.2f}",
                    note=note,
                )
            )
    headers = ["data", "mean AUROC new", "mean AUROC old", "new, bf16", "new - old", "std over new+old runs"]
    print_table(headers, table)
    return summary


def epoch_report(times: dict[str, dict[str, list[float]]]) -> tuple[float, float, list[dict]]:
    """Old / new time per epoch, wall and process CPU (median of per-round ratios), fp32 and bf16, printed; and
    summary rows."""

    def ratio(new: str, clock: str) -> float:
        return median([o / n for o, n in zip(times["old"][clock], times[new][clock], strict=True)])

    ratio_wall, ratio_cpu = ratio("new", "wall"), ratio("new", "cpu")
    bf16_wall, bf16_cpu = ratio("new_bf16", "wall"), ratio("new_bf16", "cpu")
    print(
        f"\nper epoch, 224 px industrial class (54 train images): old fp32 / new fp32 = {ratio_wall:.2f} (wall), "
        f"{ratio_cpu:.2f} (process CPU); old fp32 / new bf16 = {bf16_wall:.2f} (wall), {bf16_cpu:.2f} (CPU); "
        f"wall s, median of rounds: old {median(times['old']['wall']):.2f}, new {median(times['new']['wall']):.2f},"
        f" new bf16 {median(times['new_bf16']['wall']):.2f}"
    )
    summary = [
        check(
            "12 epoch",
            "old / new time per epoch, 224 px industrial, fp32 (wall)",
            ratio_wall,
            1.7,
            ">=",
            fmt="{:.2f}",
        ),
        check("12 epoch", "  same, process CPU time (info)", ratio_cpu, fmt="{:.2f}"),
        check(
            "12 epoch",
            "old fp32 / new bf16 per epoch (wall; CPUs with bf16 units)",
            bf16_wall,
            3.0,
            ">=",
            fmt="{:.2f}",
        ),
        check("12 epoch", "  same, process CPU time (info)", bf16_cpu, fmt="{:.2f}"),
    ]
    return ratio_wall, ratio_cpu, summary


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    seeds, epochs = args.seeds or (3 if args.quick else 5), args.epochs or (5 if args.quick else 10)
    rounds = args.rounds or (2 if args.quick else 3)
    import torch

    torch.set_num_threads(args.threads)
    load_start = loadavg()
    with scratch_dir("fast-paths") as tmp:
        aurocs = equivalence(tmp, seeds, epochs, args.size)
        times = epoch_times(tmp, rounds, epochs=2, threads=args.threads)
    print(
        f"\nimage AUROC, new vs old paths, {seeds} seeds, {epochs} epochs, {args.size} px; load {load_start}"
    )
    summary = auroc_report(aurocs)
    ratio_wall, ratio_cpu, epoch_rows = epoch_report(times)
    summary += epoch_rows
    payload = {
        "config": {"seeds": seeds, "epochs": epochs, "size": args.size, "rounds": rounds},
        "loadavg_start": load_start,
        "auroc": aurocs,
        "epoch_seconds": times,
        "ratio_wall": ratio_wall,
        "ratio_cpu": ratio_cpu,
        "summary": summary,
    }
    return finish(NAME, args, payload, started)


if __name__ == "__main__":
    main()
