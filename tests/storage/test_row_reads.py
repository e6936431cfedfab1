"""Byte-range batch reads (`storage.row_reads`): exactly the rows Zarr returns, for the training loop's batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from generalad.data.base import Record, manifest_frame
from generalad.method.split import OneClassSplit
from generalad.method.training import epoch_batches
from storage import row_reads
from storage.feature_store import FeatureStore, StoreWriter
from storage.fingerprint import SCHEMA_VERSION, StoreFingerprint, manifest_hash
from storage.store_layout import StoreLayout

N, E, H = 12, 10, 3


def _write_store(url: str, n_images: int = 70, shard_size: int = 8, dtype: str = "float16") -> np.ndarray:
    """A complete store of random features (partial last shard); returns the tokens written."""
    records = [Record(f"i{i:03d}", f"i{i:03d}.png", "train", "c", 0) for i in range(n_images)]
    manifest: pd.DataFrame = manifest_frame(records)
    splits = {"c": OneClassSplit("c", np.arange(n_images), np.arange(0), np.zeros(0, np.int8))}
    fingerprint = StoreFingerprint(
        dataset="test", category=None, backbone="b", weights="random:0", image_size=14, layers=(-1,),
        final_norm=True, preprocessing="p", attention_capture="a", dtype=dtype, timm_version="t",
        manifest_hash=manifest_hash(manifest), schema_version=SCHEMA_VERSION,
    )  # fmt: skip
    layout = StoreLayout(n_images, N, E, H, 14, dtype, False, shard_size)
    writer = StoreWriter(url, fingerprint, layout, manifest, splits)
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((n_images, N, E)).astype(dtype)
    attn = rng.random((n_images, H, N)).astype(dtype)
    for shard in range(layout.num_shards):
        lo, hi = layout.shard_rows(shard)
        writer.write_shard(shard, tokens[lo:hi], attn[lo:hi])
    writer.mark_complete()
    return tokens


@pytest.fixture(params=["local", "memory"])
def store_url(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store.zarr")
    return f"memory://row-reads-{tmp_path.name}/store.zarr"


def test_training_batches_read_exactly_the_rows_of_the_zarr_reader(store_url):
    tokens = _write_store(store_url)
    runs, old = FeatureStore(store_url), FeatureStore(store_url, reads="zarr")
    assert runs._readers["tokens"] is not None and old._readers["tokens"] is None
    batches = epoch_batches(np.arange(70), batch_size=16, epoch_subset=None, rng=np.random.default_rng(3))
    batches += [
        np.array([69, 3, 3, 40, 0]),
        np.arange(8, 24),
        np.array([], dtype=np.int64),
    ]  # unsorted, repeats
    for rows, (a_tok, a_att), (b_tok, b_att) in zip(
        batches, runs.iter_batches(batches), old.iter_batches(batches), strict=True
    ):
        assert torch.equal(a_tok, b_tok) and torch.equal(a_att, b_att)
        assert a_tok.dtype == torch.float32 and a_tok.shape == (len(rows), N, E)
        np.testing.assert_array_equal(a_tok.numpy(), tokens[rows].astype(np.float32))


def test_stored_dtype_and_gap_merging(store_url):
    tokens = _write_store(store_url)
    raw = FeatureStore(store_url, dtype=None)
    rows = [1, 2, 5, 30, 31, 63, 64]
    assert raw.read(rows)[0].dtype == torch.float16
    np.testing.assert_array_equal(raw.read(rows)[0].numpy(), tokens[rows])
    array = raw._tokens  # gaps read through: one request per shard touched
    merged = row_reads.ShardRows.of(f"{store_url}/tokens", array, gap_bytes=1 << 30)
    assert len(merged._runs(np.array(rows))) == 4  # shards 0, 3, 7, 8
    split = row_reads.ShardRows.of(f"{store_url}/tokens", array, gap_bytes=0)
    assert len(split._runs(np.array(rows))) == 5  # 1-2, 5, 30-31, 63, 64
    np.testing.assert_array_equal(merged.read(np.array(rows)), tokens[rows])


def test_other_layouts_fall_back_to_zarr(tmp_path):
    import zarr

    compressed = zarr.create_array(
        str(tmp_path / "z"), shape=(10, 4), chunks=(1, 4), shards=(5, 4), dtype="float32"
    )
    compressed[:] = np.arange(40, dtype=np.float32).reshape(10, 4)
    assert row_reads.ShardRows.of(str(tmp_path / "z"), compressed) is None  # zstd by default
    raw = zarr.create_array(
        str(tmp_path / "r"), shape=(10, 4), chunks=(1, 4), shards=(5, 4), dtype="float32", compressors=None
    )
    raw[:5] = np.arange(20, dtype=np.float32).reshape(5, 4)  # shard 1 never written
    reader = row_reads.ShardRows.of(str(tmp_path / "r"), raw)
    assert reader is not None
    got = row_reads.read_rows(reader, raw, np.array([7, 1]))
    np.testing.assert_array_equal(got, raw[[7, 1]])  # fill values for the missing shard, through Zarr
    with pytest.raises(row_reads.NotRaw):
        reader.read(np.array([1, 7]))


def test_bad_reads_option(store_url):
    _write_store(store_url, n_images=8)
    with pytest.raises(Exception, match="reads must be"):
        FeatureStore(store_url, reads="fast")
