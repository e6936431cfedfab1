"""The I/O that bench/store_io.py times: plain files in 4 MiB blocks, fsync and page-cache eviction of every file
under a path, and the feature store's two read patterns (shard after shard, as scoring reads; random sorted
batches of 16 covering every image once, as a training epoch reads), and the warm pieces of one shard's write
and read (`shard_split`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

__all__ = [
    "BLOCK",
    "files_under",
    "fsync_all",
    "evict",
    "write_plain",
    "read_plain",
    "shard_ranges",
    "read_shards",
    "read_training",
    "data_mb",
    "shard_split",
]

BLOCK = 4 << 20


def files_under(path: Path) -> list[Path]:
    """Every file under ``path`` (sorted), or ``[path]`` when it is a file."""
    return [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]


def fsync_all(path: Path) -> None:
    for file in files_under(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def evict(path: Path) -> None:
    """Drop the page-cache pages of every file under ``path`` (after fsync, so they are clean)."""
    for file in files_under(path):
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
    """Seconds to read the file in 4 MiB blocks, unbuffered."""
    buffer = bytearray(BLOCK)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass
    return time.perf_counter() - start


def shard_ranges(store) -> list[tuple[int, int]]:
    """The (first, end) rows of each of the store's shards."""
    return [store.layout.shard_rows(s) for s in range(store.layout.num_shards)]


def read_shards(source, shards: list[tuple[int, int]]) -> None:
    """Every shard's rows in order, as float32 tensors (what scoring reads)."""
    for lo, hi in shards:
        source.read(range(lo, hi))


def read_training(source, rng: np.random.Generator) -> None:
    """Random sorted batches of 16 rows covering every image once, through the read-ahead (a training epoch)."""
    order = rng.permutation(source.num_images)
    batches = [np.sort(order[i : i + 16]) for i in range(0, len(order), 16)]
    for _ in source.iter_batches(batches):
        pass


def data_mb(store_bytes: int, images: int, shard: int) -> float:
    """MB of one shard of ``shard`` images, at the store's bytes per image on disk."""
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
