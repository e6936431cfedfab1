"""Question 5: feature-store I/O against plain sequential file I/O on the same disk, and bytes per image.

A store of random fp16 features (ViT-S width E = 384, N patches, 6 attention heads) is written through the real
`StoreWriter` (shards of 32 images: cast, checksum, Zarr write, per-shard marker), and a plain file of exactly
the same number of bytes is written next to it in 4 MiB blocks. Both count the time to ``fsync`` their files.
Reads are cold: before each read every file of the store, or the plain file, is evicted from the page cache with
``posix_fadvise(DONTNEED)`` (per file, nothing global). Five reads are interleaved per round:

- plain: the file in 4 MiB blocks;
- store, sequential: `FeatureStore.read` of each shard's row range, as float32 tensors (what scoring reads);
- store, training pattern: `FeatureStore.iter_batches` over random sorted batches of 16 rows covering every image
  once, with its read-ahead thread (what a training epoch reads);
- both again with ``FeatureStore(reads="zarr")``, the read path before byte-range reads (`storage.row_reads`).

MB/s counts the bytes on disk (fp16). Bytes per image = every file of the store / images, against N x E x 2.

Quick: N = 256 (224 px), 96 images (19 MB); full: N = 1369 (518 px), 256 images (270 MB).

``--s3``: the same store and an equally large plain object on an S3 API served locally (moto's server on
127.0.0.1, stopped afterwards), read through s3fs: whole-object read of the plain object against the store's
sequential and training-pattern reads, byte ranges and through Zarr, interleaved.

Usage::

    .venv/bin/python bench/store_io.py [--quick] [--images 256] [--grid 37] [--rounds 2] [--s3]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import base_parser, check, finish, loadavg, median, print_table, scratch_dir, synthetic_store
from store_reads import (
    data_mb,
    evict,
    files_under,
    fsync_all,
    read_plain,
    read_shards,
    read_training,
    shard_ranges,
    shard_split,
    write_plain,
)
from store_s3 import s3_reads

NAME = "store_io"
EMBED_DIM, HEADS = 384, 6  # ViT-S width, 6 attention heads


@dataclass(frozen=True)
class Written:
    """The store written through `StoreWriter` and the plain file of the same bytes next to it."""

    store_dir: Path
    plain: Path
    write_times: list[float]  # seconds of each `write_shard` call
    payload_bytes: int  # bytes the shards carried
    store_write: float  # the shard writes + fsync of every store file
    complete_s: float  # manifest, splits, verify, consolidate, marker + data setup
    store_files: int
    store_bytes: int  # every file of the store, on disk
    plain_write: float


@dataclass(frozen=True)
class Measured:
    written: Written
    images: int
    times: dict[str, list[float]]  # cold reads, seconds per round
    warm_plain: float
    parts: dict[str, float]  # `shard_split`


def parse_args(argv: list[str] | None):
    parser = base_parser(__doc__)
    parser.add_argument("--images", type=int, default=None, help="images in the store (96 quick, 256 full)")
    parser.add_argument("--grid", type=int, default=None, help="patch grid side (16 quick, 37 full)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--s3", action="store_true", help="also read the store from a local moto S3 server")
    return parser.parse_args(argv)


def write_both(tmp: Path, n_images: int, grid: int) -> Written:
    """The store through the real writer (fsync counted), then a plain file of the same payload bytes."""
    write_times: list[float] = []
    payload_bytes = [0]

    def on_write(seconds: float, nbytes: int) -> None:
        write_times.append(seconds)
        payload_bytes[0] += nbytes

    store_dir = tmp / "store.zarr"
    start = time.perf_counter()
    synthetic_store(
        str(store_dir),
        classes=("a", "b"),
        n_train=n_images // 4,
        n_test_per_class=n_images // 4,
        grid=grid,
        embed_dim=EMBED_DIM,
        num_heads=HEADS,
        on_write=on_write,
    )
    total_call = time.perf_counter() - start
    fsync_start = time.perf_counter()
    fsync_all(store_dir)
    store_write = sum(write_times) + time.perf_counter() - fsync_start
    store_files = files_under(store_dir)
    plain = tmp / "plain.bin"
    return Written(
        store_dir=store_dir,
        plain=plain,
        write_times=write_times,
        payload_bytes=payload_bytes[0],
        store_write=store_write,
        complete_s=total_call - sum(write_times),
        store_files=len(store_files),
        store_bytes=sum(p.stat().st_size for p in store_files),
        plain_write=write_plain(plain, payload_bytes[0]),
    )


def cold_reads(w: Written, store, old_store, rounds: int, rng: np.random.Generator) -> dict[str, list[float]]:
    """Seconds of the five reads, interleaved per round, each after evicting what it reads from the page cache."""
    shards = shard_ranges(store)
    reads = {
        "plain": lambda: read_plain(w.plain),
        "store_sequential": lambda: read_shards(store, shards),
        "store_training": lambda: read_training(store, rng),
        "zarr_sequential": lambda: read_shards(old_store, shards),
        "zarr_training": lambda: read_training(old_store, rng),
    }
    targets = {name: w.plain if name == "plain" else w.store_dir for name in reads}
    times: dict[str, list[float]] = {k: [] for k in reads}
    for r in range(rounds):
        for name in reads if r % 2 == 0 else reversed(list(reads)):
            evict(targets[name])
            start = time.perf_counter()
            reads[name]()
            times[name].append(time.perf_counter() - start)
    return times


def measure(n_images: int, grid: int, rounds: int) -> Measured:
    from storage.feature_store import FeatureStore

    with scratch_dir("store-io") as tmp:
        w = write_both(tmp, n_images, grid)
        store = FeatureStore(str(w.store_dir))
        old_store = FeatureStore(str(w.store_dir), reads="zarr")
        rng = np.random.default_rng(0)
        times = cold_reads(w, store, old_store, rounds, rng)
        # warm read of the plain file, for scale (page cache, no disk)
        read_plain(w.plain)
        warm_plain = read_plain(w.plain)
        parts = shard_split(store, w.store_dir, rng)
    return Measured(w, store.num_images, times, warm_plain, parts)


def ratios_of(m: Measured, rates: dict[str, list[float]]) -> dict[str, float]:
    """Store / plain MB/s of each read (median of per-round ratios), and plain / store write seconds."""

    def vs_plain(name: str) -> float:
        return median([s / p for s, p in zip(rates[name], rates["plain"], strict=True)])

    return {
        "read_sequential": vs_plain("store_sequential"),
        "read_training": vs_plain("store_training"),
        "read_sequential_zarr": vs_plain("zarr_sequential"),
        "read_training_zarr": vs_plain("zarr_training"),
        "write": m.written.plain_write / m.written.store_write,
    }


def print_results(m: Measured, grid: int, rates, ratios: dict[str, float], load_start) -> None:
    w, times, mb = m.written, m.times, m.written.payload_bytes / 1e6
    per_image, ideal = w.store_bytes / m.images, grid * grid * EMBED_DIM * 2
    print(
        f"\nstore I/O, {m.images} images, N={grid * grid}, E={EMBED_DIM}, fp16, shards of 32; {mb:.1f} MB of "
        f"features; load at start {load_start}"
    )

    def cold(label: str, name: str) -> list:
        return [f"cold read: {label}", median(rates[name]), " ".join(f"{t:.2f}" for t in times[name])]

    print_table(
        ["operation", "MB/s (median)", "rounds (s)"],
        [
            ["write: plain file, 4 MiB blocks + fsync", mb / w.plain_write, f"{w.plain_write:.2f}"],
            ["write: StoreWriter.write_shard + fsync", mb / w.store_write, f"{w.store_write:.2f}"],
            cold("plain file", "plain"),
            cold("store, shard ranges -> fp32", "store_sequential"),
            cold("store, random batches of 16", "store_training"),
            cold("store through zarr, shard ranges", "zarr_sequential"),
            cold("store through zarr, random batches", "zarr_training"),
            ["warm read: plain file (page cache)", mb / m.warm_plain, f"{m.warm_plain:.3f}"],
        ],
    )
    print(
        f"store / plain: write {ratios['write']:.2f}, sequential read {ratios['read_sequential']:.2f}, "
        f"training-pattern read {ratios['read_training']:.2f} (through zarr: {ratios['read_sequential_zarr']:.2f}, "
        f"{ratios['read_training_zarr']:.2f}); manifest + verify + consolidate + marker {w.complete_s:.2f} s"
    )
    print(
        f"bytes per image {per_image:,.0f} vs N x E x 2 = {ideal:,} ({per_image / ideal:.3f}x; cls_attn adds "
        f"H x N x 2 = {HEADS * grid * grid * 2:,}), {w.store_files} files"
    )
    print_table(
        ["piece (warm; one shard of 32 images unless said)", "ms"],
        [[k, v] for k, v in m.parts.items()],
        title=f"\nwhere the time goes ({data_mb(w.store_bytes, m.images, 32):.1f} MB per shard)",
    )


def summary_rows(m: Measured, grid: int, rates, ratios: dict[str, float]) -> list[dict]:
    mb, per_image = m.written.payload_bytes / 1e6, m.written.store_bytes / m.images
    return [
        check(
            "5 store I/O",
            "store cold read / plain cold read, MB/s (shard ranges)",
            ratios["read_sequential"],
            0.5,
            ">=",
            source="bench",
            fmt="{:.2f}",
            note=f"plain {median(rates['plain']):.0f} MB/s",
        ),
        check(
            "5 store I/O",
            "store cold read / plain, training pattern (random batches of 16)",
            ratios["read_training"],
            0.3,
            ">=",
            source="issue",
            fmt="{:.2f}",
            note=f"through zarr: {ratios['read_training_zarr']:.2f} (sequential {ratios['read_sequential_zarr']:.2f})",
        ),
        check(
            "5 store I/O",
            "store write / plain write, MB/s (incl. fsync)",
            ratios["write"],
            0.5,
            ">=",
            source="bench",
            fmt="{:.2f}",
            note=f"plain {mb / m.written.plain_write:.0f} MB/s",
        ),
        check(
            "5 store I/O",
            "bytes per image / (N x E x 2)",
            per_image / (grid * grid * EMBED_DIM * 2),
            1.05,
            "<=",
            source="bench",
        ),
    ]


def s3_part(n_images: int, grid: int, rounds: int) -> tuple[dict, dict]:
    """The ``--s3`` reads, their table, and their summary row."""
    s3 = s3_reads(n_images, grid, rounds)
    s3_ratios = {
        name: median([p / t for t, p in zip(values, s3["times"]["plain"], strict=True)])
        for name, values in s3["times"].items()
        if name != "plain"
    }
    print_table(
        ["S3 (moto on 127.0.0.1), store read / plain object read, MB/s", "ratio (median of rounds)"],
        [[name, value] for name, value in s3_ratios.items()],
        title=f"\nS3: {s3['mb']:.1f} MB, plain object {s3['mb'] / median(s3['times']['plain']):.0f} MB/s",
    )
    row = check(
        "5 store I/O",
        "  S3 store / plain object, training pattern (info)",
        s3_ratios["store_training"],
        fmt="{:.2f}",
        note=f"through zarr {s3_ratios['zarr_training']:.2f}; sequential {s3_ratios['store_sequential']:.2f}",
    )
    return s3, row


def payload_of(m: Measured, grid: int, rates, ratios, s3, load_start, summary: list[dict]) -> dict:
    w, mb = m.written, m.written.payload_bytes / 1e6
    return {
        "s3": s3,
        "config": {
            "images": m.images,
            "grid": grid,
            "embed_dim": EMBED_DIM,
            "heads": HEADS,
            "dtype": "float16",
            "shard_size": 32,
            "feature_mb": mb,
        },
        "loadavg_start": load_start,
        "write_s": {
            "plain": w.plain_write,
            "store": w.store_write,
            "store_write_shard_calls": w.write_times,
            "store_other": w.complete_s,
        },
        "read_s": m.times,
        "read_mb_per_s": rates,
        "warm_plain_read_mb_per_s": mb / m.warm_plain,
        "ratios": ratios,
        "bytes_per_image": w.store_bytes / m.images,
        "ideal_bytes_per_image": grid * grid * EMBED_DIM * 2,
        "store_files": w.store_files,
        "shard_split_ms": m.parts,
        "summary": summary,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    n_images = args.images or (96 if args.quick else 256)
    grid = args.grid or (16 if args.quick else 37)
    load_start = loadavg()

    import torch

    torch.set_num_threads(args.threads)
    m = measure(n_images, grid, args.rounds)
    mb = m.written.payload_bytes / 1e6
    rates = {k: [mb / t for t in v] for k, v in m.times.items()}
    ratios = ratios_of(m, rates)
    print_results(m, grid, rates, ratios, load_start)
    summary = summary_rows(m, grid, rates, ratios)
    s3 = None
    if args.s3:
        s3, row = s3_part(n_images, grid, max(args.rounds, 3))
        summary.append(row)
    return finish(NAME, args, payload_of(m, grid, rates, ratios, s3, load_start, summary), started)


if __name__ == "__main__":
    main()
