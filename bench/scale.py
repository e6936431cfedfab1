"""Scale in simulation: one class of a CIFAR-10-sized store (60,000 images) against a 1,000-image store.

Two stores of random fp16 features in CIFAR-10's shape (10 classes; 5,000 training + 1,000 test images per class,
so one class trains on 5,000 images and is tested on all 10,000 test images) are written through the real
`StoreWriter`, with small N and E so that they fit here (N = 16 patches, E = 32: the 60,000-image store is 62 MB;
at ViT-L/518 it would be 168 GB). The 1,000-image store has the same shape at 1/60 (83 + 17 images per class).

Each run is a fresh child process (this script with ``--child``): `train_from_store` for class 0 with the
cifar10 preset (clean + noise_all, 250 images drawn per epoch) for a few epochs, evaluated after every epoch
(the `reproduce-all` default), so one epoch = the 250-image training pass + the full test pass (the test tokens
are read from the store once and held in memory when they fit the budget, as they do here). It reports its own
peak RSS (VmHWM), the wall time per epoch, and the rows the store served (every `FeatureStore.read` counted),
from which the bytes one class reads follow for any N, E and dtype (README "Scaling out").

Usage::

    .venv/bin/python bench/scale.py [--quick] [--epochs 2]
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
    peak_rss_mb,
    print_table,
    scratch_dir,
    synthetic_store,
)

NAME = "scale"
CLASSES = tuple(f"class{i}" for i in range(10))
GRID, EMBED_DIM, HEADS = 4, 32, 2
# (training images per class, test images per class): CIFAR-10's 60,000 and 1/60 of it
SIZES = {"60,000 images (CIFAR-10)": (5000, 1000), "1,000 images": (83, 17)}


def child(url: str, epochs: int, threads: int) -> None:
    """In a fresh process: train + evaluate class 0 every epoch, counting the rows the store serves."""
    import torch

    from generalad.apps.train_job import train_from_store
    from generalad.method.presets import preset_for
    from storage.feature_store import FeatureStore

    torch.set_num_threads(threads)
    store = FeatureStore(url)
    served = {"rows": 0, "reads": 0}
    read = store.read

    def counted(rows):
        served["rows"] += len(rows)
        served["reads"] += 1
        return read(rows)

    store.read = counted  # iter_batches reads through self.read
    preset = preset_for("cifar10").with_overrides(epochs=epochs)
    split = store.split(CLASSES[0])
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    result = train_from_store(store, CLASSES[0], preset=preset, eval_every_epoch=True, progress=False)
    seconds = time.perf_counter() - start
    info = {
        "images": store.num_images,
        "train_images": len(split.train_rows),
        "test_images": len(split.test_rows),
        "epoch_subset": preset.epoch_subset,
        "epochs": epochs,
        "seconds": seconds,
        "seconds_per_epoch": seconds / epochs,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "rows_served": served["rows"],
        "reads": served["reads"],
        "vm_hwm_before_mb": rss_before,
        "peak_mb": peak_rss_mb(),
    }
    print("RESULT " + json.dumps(info))


def run_child(url: str, epochs: int, threads: int) -> dict:
    env = os.environ | {"PYTHONUNBUFFERED": "1"} | MALLOC_ENV
    command = [sys.executable, __file__, "--child", url, "--epochs", str(epochs), "--threads", str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"scale child failed with exit code {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def write_and_run(epochs: int, threads: int) -> dict[str, dict]:
    """Each store of `SIZES` written (timed), then one class trained + evaluated from it in a child."""
    runs: dict[str, dict] = {}
    with scratch_dir("scale") as tmp:
        for name, (n_train, n_test) in SIZES.items():
            write_start = time.perf_counter()
            url = synthetic_store(
                str(tmp / f"{n_train}.zarr"),
                classes=CLASSES,
                n_train=n_train,
                n_test_per_class=n_test,
                grid=GRID,
                embed_dim=EMBED_DIM,
                num_heads=HEADS,
                shard_size=256,
            )
            write_seconds = time.perf_counter() - write_start
            runs[name] = run_child(url, epochs, threads) | {"write_seconds": write_seconds}
    image_bytes = GRID**2 * (EMBED_DIM + HEADS) * 2  # fp16 tokens + CLS attention of one image
    for run in runs.values():
        run["rows_per_epoch"] = run["rows_served"] / run["epochs"]
        run["bytes_per_epoch"] = run["rows_per_epoch"] * image_bytes
    for run in runs.values():  # what training + evaluation added on top of the opened store and its splits
        run["training_growth_mb"] = run["peak_mb"] - run["vm_hwm_before_mb"]
    return runs


def report(runs: dict[str, dict], threads: int, load_start) -> list[dict]:
    """Prints the runs and what the memory growth says; returns the summary rows."""
    big, small = runs[next(iter(SIZES))], runs[list(SIZES)[1]]
    growth = big["training_growth_mb"] - small["training_growth_mb"]
    metadata = big["vm_hwm_before_mb"] - small["vm_hwm_before_mb"]
    fp32_mb = big["images"] * GRID**2 * EMBED_DIM * 4 / 1e6
    print(f"\nscale, N={GRID**2}, E={EMBED_DIM}, fp16, {threads} threads; load at start {load_start}")
    print_table(
        ["store", "train/test", "rows read/epoch", "s/epoch", "RSS opened MB", "peak MB", "training +MB"],
        [
            [name, f"{r['train_images']}/{r['test_images']}", r["rows_per_epoch"], r["seconds_per_epoch"]]
            + [r["vm_hwm_before_mb"], r["peak_mb"], r["training_growth_mb"]]
            for name, r in runs.items()
        ],
    )
    print(
        f"memory that training + evaluation add: {small['training_growth_mb']:.0f} MB (1,000 images) vs "
        f"{big['training_growth_mb']:.0f} MB (60,000), {growth:+.0f} MB, against {fp32_mb:.0f} MB of features "
        f"(fp32) in the large store; the opened store's manifest + splits (pandas) add {metadata:.0f} MB "
        f"(~{metadata * 1e6 / (big['images'] - small['images']):.0f} B per image, independent of N and E)"
    )
    return [
        check(
            "scale",
            "training-memory growth 1k -> 60k images / the 60k features as fp32",
            growth / fp32_mb,
            0.25,  # streaming keeps ~0, loading the store >= 1 (bench/memory.py's threshold)
            "<=",
            source="bench",
            note=f"+{small['training_growth_mb']:.0f} -> +{big['training_growth_mb']:.0f} MB",
        ),
        check("scale", "  s per epoch at 60k images (incl. 10k test pass, info)", big["seconds_per_epoch"]),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (each with a full test pass)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.epochs, args.threads)
        return {}
    started = time.perf_counter()
    load_start = loadavg()
    runs = write_and_run(args.epochs, args.threads)
    summary = report(runs, args.threads, load_start)
    payload = {
        "config": {"grid": GRID, "embed_dim": EMBED_DIM, "heads": HEADS, "epochs": args.epochs},
        "loadavg_start": load_start,
        "runs": runs,
        "summary": summary,
    }
    return finish(NAME, args, payload, started)


if __name__ == "__main__":
    main()
