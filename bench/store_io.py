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

import logging
import os
import time
from pathlib import Path

import numpy as np
from common import (
    base_parser,
    check,
    finish,
    interleaved,
    loadavg,
    median,
    print_table,
    scratch_dir,
    synthetic_store,
)

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


def data_mb(store_bytes: int, images: int, shard: int) -> float:
    return store_bytes / images * shard / 1e6


def shard_split(store, store_dir: Path, rng: np.random.Generator, repeats: int = 3) -> dict[str, float]:
    """Warm milliseconds of the pieces of writing and reading one shard of tokens (best of ``repeats``), and of
    reading 16 random rows through Zarr (``reads="zarr"``) and by byte ranges (the default)."""
    import hashlib

    import zarr

    from storage import urls
    from storage.feature_store import FeatureStore
    from storage.store_layout import shard_checksum

    old = FeatureStore(store.url, reads="zarr", dtype=None)
    new = FeatureStore(store.url, dtype=None)
    tokens = zarr.open_array(str(store_dir / "tokens"), mode="r")
    lo, hi = store.layout.shard_rows(0)
    data = tokens[lo:hi]
    shard_file = max(
        (p for p in (store_dir / "tokens").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    rows = np.sort(rng.choice(store.num_images, size=min(16, store.num_images), replace=False))
    scratch = store_dir.parent / "scratch-write.bin"

    def best(fn) -> float:
        values = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            values.append(time.perf_counter() - start)
        return 1e3 * min(values)

    def write_raw() -> None:
        with open(scratch, "wb") as handle:
            handle.write(memoryview(data).cast("B"))

    assert np.array_equal(old.read(rows)[0].numpy(), new.read(rows)[0].numpy())
    writable = zarr.open_array(str(store_dir / "tokens"), mode="r+")
    marker = str(store_dir.parent / "scratch-marker.json")

    def write_zarr() -> None:
        writable[lo:hi] = data  # the same bytes again

    return {
        "checksum, blake2b of a copy (current)": best(lambda: shard_checksum(data)),
        "checksum, sha256 of a memoryview (proposed)": best(
            lambda: hashlib.sha256(memoryview(np.ascontiguousarray(data)).cast("B")).hexdigest()
        ),
        "write: zarr slice of the shard (tokens)": best(write_zarr),
        "write: shard marker (atomic, fsync)": best(lambda: urls.write_bytes_atomic(marker, b"{}")),
        "write: plain file of the same bytes (page cache)": best(write_raw),
        "read: raw shard file (page cache)": best(lambda: shard_file.read_bytes()),
        "read: zarr slice of the shard": best(lambda: tokens[lo:hi]),
        "read: fp16 -> fp32 cast": best(lambda: data.astype(np.float32)),
        "read: store, byte ranges of the shard (reads='runs')": best(lambda: new.read(range(lo, hi))),
        "16 random rows: zarr orthogonal selection (reads='zarr')": best(lambda: old.read(rows)),
        "16 random rows: byte ranges (reads='runs')": best(lambda: new.read(rows)),
    }


def s3_reads(n_images: int, grid: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of each read on a local moto S3 server, interleaved (see the module docstring)."""
    import fsspec
    from moto.server import ThreadedMotoServer

    from storage.feature_store import FeatureStore

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = fsspec.config.conf.get("s3")
    try:
        host, port = server.get_host_and_port()
        fsspec.config.conf["s3"] = {
            "key": "bench",
            "secret": "bench",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
        }
        os.environ.setdefault(
            "AWS_DEFAULT_REGION", "us-east-1"
        )  # a region name would become a bucket constraint
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("bench-store-io")
        url = "s3://bench-store-io/store.zarr"
        synthetic_store(
            url, classes=("a", "b"), n_train=n_images // 4, n_test_per_class=n_images // 4, grid=grid
        )
        nbytes = sum(fs.du(f"bench-store-io/store.zarr/{name}") for name in ("tokens", "cls_attn"))
        fs.pipe_file("bench-store-io/plain.bin", bytes(nbytes))
        new, old = FeatureStore(url), FeatureStore(url, reads="zarr")
        shards = [new.layout.shard_rows(i) for i in range(new.layout.num_shards)]
        rng = np.random.default_rng(0)

        def training(source) -> None:
            order = rng.permutation(new.num_images)
            for _ in source.iter_batches([np.sort(order[i : i + 16]) for i in range(0, len(order), 16)]):
                pass

        variants = {
            "plain": lambda: fs.cat_file("bench-store-io/plain.bin"),
            "store_sequential": lambda: [new.read(range(lo, hi)) for lo, hi in shards],
            "store_training": lambda: training(new),
            "zarr_sequential": lambda: [old.read(range(lo, hi)) for lo, hi in shards],
            "zarr_training": lambda: training(old),
        }
        times = interleaved(variants, rounds=rounds, warmup=1)
        return {"times": times, "mb": nbytes / 1e6}
    finally:
        if saved is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved
        server.stop()


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--images", type=int, default=None, help="images in the store (96 quick, 256 full)")
    parser.add_argument("--grid", type=int, default=None, help="patch grid side (16 quick, 37 full)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--s3", action="store_true", help="also read the store from a local moto S3 server")
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
        old_store = FeatureStore(str(store_dir), reads="zarr")
        n = store.num_images
        shards = [store.layout.shard_rows(s) for s in range(store.layout.num_shards)]
        rng = np.random.default_rng(0)

        def sequential(source) -> None:
            for lo, hi in shards:
                source.read(range(lo, hi))

        def training(source) -> None:
            order = rng.permutation(n)
            batches = [np.sort(order[i : i + 16]) for i in range(0, n, 16)]
            for _ in source.iter_batches(batches):
                pass

        reads = {
            "plain": lambda: read_plain(plain),
            "store_sequential": lambda: sequential(store),
            "store_training": lambda: training(store),
            "zarr_sequential": lambda: sequential(old_store),
            "zarr_training": lambda: training(old_store),
        }
        targets = {name: plain if name == "plain" else store_dir for name in reads}
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
        parts = shard_split(store, store_dir, rng)

    mb = payload_bytes[0] / 1e6
    rates = {k: [mb / t for t in v] for k, v in times.items()}
    ratio_seq = median([s / p for s, p in zip(rates["store_sequential"], rates["plain"], strict=True)])
    ratio_train = median([s / p for s, p in zip(rates["store_training"], rates["plain"], strict=True)])
    old_seq = median([s / p for s, p in zip(rates["zarr_sequential"], rates["plain"], strict=True)])
    old_train = median([s / p for s, p in zip(rates["zarr_training"], rates["plain"], strict=True)])
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
            [
                "cold read: store through zarr, shard ranges",
                median(rates["zarr_sequential"]),
                " ".join(f"{t:.2f}" for t in times["zarr_sequential"]),
            ],
            [
                "cold read: store through zarr, random batches",
                median(rates["zarr_training"]),
                " ".join(f"{t:.2f}" for t in times["zarr_training"]),
            ],
            ["warm read: plain file (page cache)", mb / warm_plain, f"{warm_plain:.3f}"],
        ],
    )
    print(
        f"store / plain: write {write_ratio:.2f}, sequential read {ratio_seq:.2f}, training-pattern read "
        f"{ratio_train:.2f} (through zarr: {old_seq:.2f}, {old_train:.2f}); manifest + verify + consolidate + marker {complete_s:.2f} s"
    )
    print(
        f"bytes per image {per_image:,.0f} vs N x E x 2 = {ideal:,} ({per_image / ideal:.3f}x; cls_attn adds "
        f"H x N x 2 = {heads * grid * grid * 2:,}), {len(store_files)} files"
    )
    print_table(
        ["piece (warm; one shard of 32 images unless said)", "ms"],
        [[k, v] for k, v in parts.items()],
        title=f"\nwhere the time goes ({data_mb(store_bytes, n, 32):.1f} MB per shard)",
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
            "5 store I/O",
            "store cold read / plain, training pattern (random batches of 16)",
            ratio_train,
            0.3,
            ">=",
            source="issue",
            fmt="{:.2f}",
            note=f"through zarr: {old_train:.2f} (sequential {old_seq:.2f})",
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
    s3 = s3_reads(n_images, grid, max(args.rounds, 3)) if args.s3 else None
    if s3 is not None:
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
        summary.append(
            check(
                "5 store I/O",
                "  S3 store / plain object, training pattern (info)",
                s3_ratios["store_training"],
                fmt="{:.2f}",
                note=f"through zarr {s3_ratios['zarr_training']:.2f}; sequential {s3_ratios['store_sequential']:.2f}",
            )
        )
    payload = {
        "s3": s3,
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
        "ratios": {
            "read_sequential": ratio_seq,
            "read_training": ratio_train,
            "read_sequential_zarr": old_seq,
            "read_training_zarr": old_train,
            "write": write_ratio,
        },
        "bytes_per_image": per_image,
        "ideal_bytes_per_image": ideal,
        "store_files": len(store_files),
        "shard_split_ms": parts,
        "summary": summary,
    }
    return finish(NAME, args, payload, started)


if __name__ == "__main__":
    main()
