"""Question 5: feature-store I/O against plain sequential file I/O on the same disk, and bytes per image.

A store of random fp16 features (ViT-S width E = 384, N patches, 6 attention heads) is written through the real
`StoreWriter` (shards of 32 images: cast, checksum, Zarr write, per-shard marker), and a plain file of exactly
the same number of bytes is written next to it in 4 MiB blocks. Both count the time to ``fsync`` their files.
Reads are cold: before each read every file of the store, or the plain file, is evicted from the page cache with
``posix_fadvise(DONTNEED)`` (per file, nothing global). Three reads are interleaved per round:

- plain: the file in 4 MiB blocks;
- store, sequential: `FeatureStore.read` of each shard's row range, as float32 tensors (what scoring reads);
- store, training pattern: `FeatureStore.iter_batches` over random sorted batches of 16 rows covering every image
  once, with its read-ahead thread (what a training epoch reads).

MB/s counts the bytes on disk (fp16). Bytes per image = every file of the store / images, against N x E x 2.

Quick: N = 256 (224 px), 96 images (19 MB); full: N = 1369 (518 px), 256 images (270 MB).

Usage::

    .venv/bin/python bench/store_io.py [--quick] [--images 256] [--grid 37] [--rounds 2]
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from common import base_parser, check, finish, loadavg, median, print_table, scratch_dir, synthetic_store

NAME = "store_io"
BLOCK = 4 << 20


def _files(path: Path) -> list[Path]:
    return [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]


def _fsync(path: Path) -> None:
    for file in _files(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def evict(path: Path) -> None:
    """Drop the page-cache pages of every file under ``path`` (after fsync, so they are clean)."""
    for file in _files(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_plain(path: Path, nbytes: int) -> float:
    """Seconds to write ``nbytes`` in 4 MiB blocks and fsync."""
    block = np.random.default_rng(1).integers(0, 256, BLOCK, dtype=np.uint8).tobytes()
    start = time.perf_counter()
    with open(path, "wb") as handle:
        left = nbytes
        while left > 0:
            left -= handle.write(block[: min(BLOCK, left)])
        handle.flush()
        os.fsync(handle.fileno())
    return time.perf_counter() - start


def read_plain(path: Path) -> float:
    buffer = bytearray(BLOCK)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--images", type=int, default=None, help="images in the store (96 quick, 256 full)")
    parser.add_argument("--grid", type=int, default=None, help="patch grid side (16 quick, 37 full)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    n_images = args.images or (96 if args.quick else 256)
    grid = args.grid or (16 if args.quick else 37)
    embed_dim, heads = 384, 6
    load_start = loadavg()

    import torch

    from storage.feature_store import FeatureStore

    torch.set_num_threads(args.threads)
    write_times: list[float] = []
    payload_bytes = [0]

    def on_write(seconds: float, nbytes: int) -> None:
        write_times.append(seconds)
        payload_bytes[0] += nbytes

    with scratch_dir("store-io") as tmp:
        store_dir = tmp / "store.zarr"
        start = time.perf_counter()
        synthetic_store(
            str(store_dir),
            classes=("a", "b"),
            n_train=n_images // 4,
            n_test_per_class=n_images // 4,
            grid=grid,
            embed_dim=embed_dim,
            num_heads=heads,
            on_write=on_write,
        )
        total_call = time.perf_counter() - start
        fsync_start = time.perf_counter()
        _fsync(store_dir)
        store_write = sum(write_times) + time.perf_counter() - fsync_start
        complete_s = total_call - sum(
            write_times
        )  # manifest, splits, verify, consolidate, marker + data setup
        store_files = _files(store_dir)
        store_bytes = sum(p.stat().st_size for p in store_files)
        plain = tmp / "plain.bin"
        plain_write = write_plain(plain, payload_bytes[0])

        store = FeatureStore(str(store_dir))
        n = store.num_images
        shards = [store.layout.shard_rows(s) for s in range(store.layout.num_shards)]
        rng = np.random.default_rng(0)

        def store_sequential() -> None:
            for lo, hi in shards:
                store.read(range(lo, hi))

        def store_training() -> None:
            order = rng.permutation(n)
            batches = [np.sort(order[i : i + 16]) for i in range(0, n, 16)]
            for _ in store.iter_batches(batches):
                pass

        reads = {
            "plain": lambda: read_plain(plain),
            "store_sequential": store_sequential,
            "store_training": store_training,
        }
        targets = {"plain": plain, "store_sequential": store_dir, "store_training": store_dir}
        times: dict[str, list[float]] = {k: [] for k in reads}
        for r in range(args.rounds):
            for name in reads if r % 2 == 0 else reversed(list(reads)):
                evict(targets[name])
                start = time.perf_counter()
                reads[name]()
                times[name].append(time.perf_counter() - start)
        # warm read of the plain file, for scale (page cache, no disk)
        read_plain(plain)
        warm_plain = read_plain(plain)

    mb = payload_bytes[0] / 1e6
    rates = {k: [mb / t for t in v] for k, v in times.items()}
    ratio_seq = median([s / p for s, p in zip(rates["store_sequential"], rates["plain"], strict=True)])
    ratio_train = median([s / p for s, p in zip(rates["store_training"], rates["plain"], strict=True)])
    write_ratio = plain_write / store_write
    per_image = store_bytes / n
    ideal = grid * grid * embed_dim * 2

    print(
        f"\nstore I/O, {n} images, N={grid * grid}, E={embed_dim}, fp16, shards of 32; {mb:.1f} MB of features; "
        f"load at start {load_start}"
    )
    print_table(
        ["operation", "MB/s (median)", "rounds (s)"],
        [
            ["write: plain file, 4 MiB blocks + fsync", mb / plain_write, f"{plain_write:.2f}"],
            ["write: StoreWriter.write_shard + fsync", mb / store_write, f"{store_write:.2f}"],
            ["cold read: plain file", median(rates["plain"]), " ".join(f"{t:.2f}" for t in times["plain"])],
            [
                "cold read: store, shard ranges -> fp32",
                median(rates["store_sequential"]),
                " ".join(f"{t:.2f}" for t in times["store_sequential"]),
            ],
            [
                "cold read: store, random batches of 16",
                median(rates["store_training"]),
                " ".join(f"{t:.2f}" for t in times["store_training"]),
            ],
            ["warm read: plain file (page cache)", mb / warm_plain, f"{warm_plain:.3f}"],
        ],
    )
    print(
        f"store / plain: write {write_ratio:.2f}, sequential read {ratio_seq:.2f}, training-pattern read "
        f"{ratio_train:.2f}; manifest + verify + consolidate + marker {complete_s:.2f} s"
    )
    print(
        f"bytes per image {per_image:,.0f} vs N x E x 2 = {ideal:,} ({per_image / ideal:.3f}x; cls_attn adds "
        f"H x N x 2 = {heads * grid * grid * 2:,}), {len(store_files)} files"
    )
    summary = [
        check(
            "5 store I/O",
            "store cold read / plain cold read, MB/s (shard ranges)",
            ratio_seq,
            0.5,
            ">=",
            source="bench",
            fmt="{:.2f}",
            note=f"plain {median(rates['plain']):.0f} MB/s",
        ),
        check(
            "5 store I/O", "  same, training pattern (random batches of 16) (info)", ratio_train, fmt="{:.2f}"
        ),
        check(
            "5 store I/O",
            "store write / plain write, MB/s (incl. fsync)",
            write_ratio,
            0.5,
            ">=",
            source="bench",
            fmt="{:.2f}",
            note=f"plain {mb / plain_write:.0f} MB/s",
        ),
        check("5 store I/O", "bytes per image / (N x E x 2)", per_image / ideal, 1.05, "<=", source="bench"),
    ]
    payload = {
        "config": {
            "images": n,
            "grid": grid,
            "embed_dim": embed_dim,
            "heads": heads,
            "dtype": "float16",
            "shard_size": 32,
            "feature_mb": mb,
        },
        "loadavg_start": load_start,
        "write_s": {
            "plain": plain_write,
            "store": store_write,
            "store_write_shard_calls": write_times,
            "store_other": complete_s,
        },
        "read_s": times,
        "read_mb_per_s": rates,
        "warm_plain_read_mb_per_s": mb / warm_plain,
        "ratios": {"read_sequential": ratio_seq, "read_training": ratio_train, "write": write_ratio},
        "bytes_per_image": per_image,
        "ideal_bytes_per_image": ideal,
        "store_files": len(store_files),
        "summary": summary,
    }
    return finish(NAME, args, payload, started)


if __name__ == "__main__":
    main()
