"""The layout of a Zarr v3 feature store: its file names, array shapes, shard checksums and small metadata files.

Layout of one store (one group per store key):

    <root>/<dataset>[-<category>]/<backbone>-<size>-<dtype>-<hash12>.zarr/
        zarr.json             group attributes: schema version, key, fingerprint, shapes
        tokens/               (n_images, N, E)  float16|float32, chunk = 1 image, shard = `shard_size` images
        cls_attn/             (n_images, H, N)  same dtype and sharding
        masks/                (n_images, S, S)  uint8 0/1 at the evaluation resolution (datasets with masks)
        manifest.parquet      the dataset manifest, row i = image i of every array
        splits.parquet        the one-class protocol per normal class: (normal_class, row, role, label)
        _shards/NNNNN.json    per-shard marker with checksums, written after the shard's bytes
        COMPLETE.json         written last, after every shard was verified

The writer and the reader of this layout are `storage.feature_store.StoreWriter` and `FeatureStore`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from generalad.method.split import OneClassSplit
from storage import urls

__all__ = [
    "COMPLETE_FILE",
    "DEFAULT_SHARD_SIZE",
    "MANIFEST_FILE",
    "SHARDS_DIR",
    "SPLITS_FILE",
    "StoreLayout",
    "is_complete",
    "read_json",
    "read_parquet",
    "shard_checksum",
    "splits_frame",
    "write_parquet",
]

DEFAULT_SHARD_SIZE = 32
COMPLETE_FILE = "COMPLETE.json"
MANIFEST_FILE = "manifest.parquet"
SPLITS_FILE = "splits.parquet"
SHARDS_DIR = "_shards"


@dataclass(frozen=True)
class StoreLayout:
    """Shapes of a store's arrays."""

    num_images: int
    num_patches: int
    embed_dim: int
    num_heads: int
    image_size: int
    dtype: str
    has_masks: bool
    shard_size: int = DEFAULT_SHARD_SIZE

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.shard_size)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_images)


def shard_checksum(*arrays: np.ndarray) -> str:
    """The checksum a shard marker holds: BLAKE2b-128 over the bytes of the shard's arrays, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def read_json(url: str) -> dict | None:
    """A small JSON file of the store (a marker, COMPLETE.json), or None when it is not there."""
    fs, path = urls.filesystem(url)
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def write_parquet(url: str, frame: pd.DataFrame) -> None:
    """`frame` as a Parquet file at `url`, in one atomic write (one PUT on an object store)."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    urls.write_bytes_atomic(url, sink.getvalue().to_pybytes())


def read_parquet(url: str) -> pd.DataFrame:
    """A Parquet file of the store (manifest, splits) as a DataFrame."""
    fs, path = urls.filesystem(url)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle).to_pandas()


def splits_frame(splits: dict[str, OneClassSplit]) -> pd.DataFrame:
    """One-class splits in long form: one row per (normal class, row, role) with the test label."""
    parts = []
    for name, split in splits.items():
        n_train, n_test = len(split.train_rows), len(split.test_rows)
        parts.append(
            pd.DataFrame(
                {
                    "normal_class": name,
                    "row": np.concatenate([split.train_rows, split.test_rows]).astype(np.int64),
                    "role": ["train"] * n_train + ["test"] * n_test,
                    "label": np.concatenate([np.zeros(n_train, np.int8), split.test_labels]).astype(np.int8),
                }
            )
        )
    columns = ["normal_class", "row", "role", "label"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def is_complete(url: str) -> bool:
    """Whether the store at `url` was published (COMPLETE.json exists): only then may it be read."""
    return urls.exists(urls.join(url, COMPLETE_FILE))
