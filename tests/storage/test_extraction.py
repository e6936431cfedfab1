"""Extraction into the feature store: values equal a direct backbone run, reruns do no work, partial stores resume,
bad images publish nothing, and the store key moves with every input."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from generalad.backbone import BackboneSpec, load_backbone
from generalad.data.images import load_mask
from generalad.data.preprocess import preprocess_image, preprocess_mask
from generalad.errors import DatasetError, ImageError, StoreError
from storage import urls
from storage.extraction import extract_features, plan_store
from storage.feature_store import COMPLETE_FILE, SHARDS_DIR, FeatureStore
from tests.fixtures.stores import TINY_CLASS, TINY_EMBED_DIM, TINY_HEADS, TINY_PATCHES, TINY_SPEC


def _direct(adapter, spec: BackboneSpec) -> tuple[np.ndarray, np.ndarray]:
    """The backbone run directly on the preprocessed images, in manifest order (the independent reference)."""
    backbone = load_backbone(spec)
    images = torch.stack(
        [preprocess_image(adapter.load_image(r), spec.image_size) for r in _records(adapter)]
    )
    with torch.inference_mode():
        tokens, attn = backbone(images)
    return tokens.numpy(), attn.numpy()


def _records(adapter):
    from generalad.data.base import manifest_record

    return [manifest_record(row) for row in adapter.manifest().itertuples(index=False)]


def _files(root: str) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}


def test_float32_store_holds_exactly_the_backbone_output(tiny_adapter, tmp_path) -> None:
    n = len(tiny_adapter.manifest())  # 8 images: shards of 3, 3 and 2
    result = extract_features(
        tiny_adapter, TINY_SPEC, str(tmp_path / "stores"), dtype="float32", shard_size=3, progress=False
    )
    store = FeatureStore(result.url)
    tokens, attn = _direct(tiny_adapter, TINY_SPEC)
    assert (store.num_images, store.num_patches, store.embed_dim, store.num_heads) == (
        n,
        TINY_PATCHES,
        TINY_EMBED_DIM,
        TINY_HEADS,
    )
    got_tokens, got_attn = store.read(range(n))
    np.testing.assert_allclose(got_tokens.numpy(), tokens, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_attn.numpy(), attn, rtol=0, atol=1e-6)
    assert result.images_extracted == n and result.shards_written == 3
    # masks at the evaluation resolution, zero for normal images
    manifest = store.manifest
    masks = store.masks(range(n))
    side = TINY_SPEC.image_size
    assert masks.shape == (n, side, side) and masks.dtype == np.uint8
    for i, record in enumerate(_records(tiny_adapter)):
        if record.mask_paths:
            size = tiny_adapter.load_image(record).size
            expected = preprocess_mask(load_mask([tiny_adapter.root / record.mask_paths[0]], size), side)
            np.testing.assert_array_equal(masks[i], expected)
            assert masks[i].sum() > 0
        else:
            assert masks[i].sum() == 0
    assert list(manifest["image_id"]) == [r.image_id for r in _records(tiny_adapter)]
    # the protocol's split travels with the store: train = the train images, test = the rest, with their labels
    split = store.split(TINY_CLASS)
    train = manifest["split"].to_numpy() == "train"
    assert list(split.train_rows) == list(np.flatnonzero(train)) and train.sum() == 3
    assert list(split.test_rows) == list(np.flatnonzero(~train))
    assert list(split.test_labels) == [1, 1, 1, 0, 0] and store.normal_classes == [TINY_CLASS]
    with pytest.raises(DatasetError, match="unknown class 'nope'"):
        store.split("nope")


def test_float16_store_is_within_half_precision_of_float32(tiny_adapter, tmp_path) -> None:
    r16 = extract_features(tiny_adapter, TINY_SPEC, str(tmp_path), dtype="float16", progress=False)
    r32 = extract_features(tiny_adapter, TINY_SPEC, str(tmp_path), dtype="float32", progress=False)
    assert r16.url != r32.url
    t16, a16 = FeatureStore(r16.url).read(range(8))
    t32, a32 = FeatureStore(r32.url).read(range(8))
    assert torch.allclose(t16, t32, rtol=1e-3, atol=2e-3)
    assert torch.allclose(a16, a32, rtol=1e-3, atol=1e-4)


def test_rerun_of_a_complete_store_does_no_work_and_rewrites_nothing(
    tiny_adapter, tmp_path, monkeypatch
) -> None:
    root = str(tmp_path / "stores")
    first = extract_features(tiny_adapter, TINY_SPEC, root, progress=False)
    before = _files(first.url)

    def must_not_load(*args, **kwargs):
        raise AssertionError("the backbone was loaded for a complete store")

    monkeypatch.setattr("storage.extraction.load_backbone", must_not_load)
    second = extract_features(tiny_adapter, TINY_SPEC, root, progress=False)
    assert second.url == first.url and second.reused and second.images_extracted == 0
    assert _files(first.url) == before


def test_partial_store_resumes_only_the_missing_shards(tiny_adapter, tmp_path) -> None:
    root = str(tmp_path / "stores")
    full = extract_features(tiny_adapter, TINY_SPEC, root, dtype="float32", shard_size=3, progress=False)
    expected = FeatureStore(full.url).read(range(8))[0]
    # a run killed after shards 0 and 2: no marker for shard 1, no completeness marker
    os.remove(Path(full.url) / COMPLETE_FILE)
    os.remove(Path(full.url) / SHARDS_DIR / "00001.json")
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore(full.url)
    resumed = extract_features(tiny_adapter, TINY_SPEC, root, dtype="float32", shard_size=3, progress=False)
    assert (resumed.images_extracted, resumed.shards_written, resumed.shards_skipped) == (3, 1, 2)
    assert torch.equal(FeatureStore(full.url).read(range(8))[0], expected)


def test_corrupted_shard_is_caught_before_the_store_is_marked_complete(tiny_adapter, tmp_path) -> None:
    from storage.feature_store import StoreLayout, StoreWriter

    url, fingerprint = plan_store(tiny_adapter, TINY_SPEC, str(tmp_path), dtype="float32")
    side, patches = TINY_SPEC.image_size, TINY_PATCHES
    layout = StoreLayout(8, patches, TINY_EMBED_DIM, TINY_HEADS, side, "float32", True, shard_size=5)
    manifest = tiny_adapter.manifest()
    splits = {TINY_CLASS: tiny_adapter.one_class_split(manifest, TINY_CLASS)}
    writer = StoreWriter(url, fingerprint, layout, manifest, splits)
    rng = np.random.default_rng(0)
    for shard, n in ((0, 5), (1, 3)):
        writer.write_shard(
            shard,
            rng.random((n, patches, TINY_EMBED_DIM)),
            rng.random((n, TINY_HEADS, patches)),
            np.zeros((n, side, side)),
        )
    import zarr

    zarr.open_group(urls.zarr_store(url), mode="r+")["tokens"][6] = 0.0  # bytes changed after the marker
    with pytest.raises(StoreError, match="shard 1 does not match its checksum"):
        writer.mark_complete()
    assert not (Path(url) / COMPLETE_FILE).exists()


def test_undecodable_image_names_the_file_and_publishes_nothing(tiny_adapter, tmp_path) -> None:
    bad = tiny_adapter.root / "bottle" / "test" / "good" / "001.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    with pytest.raises(ImageError, match="good/001.png"):
        extract_features(tiny_adapter, TINY_SPEC, str(tmp_path / "stores"), progress=False)
    assert not list((tmp_path / "stores").rglob(COMPLETE_FILE))


def test_mask_of_another_size_names_the_mask(tiny_adapter, tmp_path) -> None:
    from PIL import Image

    mask = tiny_adapter.root / "bottle" / "ground_truth" / "broken_large" / "001_mask.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(mask)
    with pytest.raises(ImageError, match="broken_large/001_mask.png"):
        extract_features(tiny_adapter, TINY_SPEC, str(tmp_path / "stores"), progress=False)


def test_memory_url_store_round_trip(tiny_adapter) -> None:
    result = extract_features(
        tiny_adapter, TINY_SPEC, "memory://generalad-test/stores", dtype="float32", progress=False
    )
    assert result.url.startswith("memory://")
    store = FeatureStore(result.url)
    tokens, _ = _direct(tiny_adapter, TINY_SPEC)
    np.testing.assert_allclose(store.read([3, 0, 7])[0].numpy(), tokens[[3, 0, 7]], atol=1e-5)
    again = extract_features(
        tiny_adapter, TINY_SPEC, "memory://generalad-test/stores", dtype="float32", progress=False
    )
    assert again.reused


def test_iter_batches_yields_requested_rows_in_order(tiny_adapter, tmp_path) -> None:
    store = FeatureStore(
        extract_features(tiny_adapter, TINY_SPEC, str(tmp_path), dtype="float32", progress=False).url
    )
    everything = store.read(range(8))[0]
    batches = [[7, 2], [0, 1, 2, 3], [5]]
    for rows, (tokens, attn) in zip(batches, store.iter_batches(batches), strict=True):
        assert torch.equal(tokens, everything[rows]) and attn.shape == (len(rows), TINY_HEADS, TINY_PATCHES)


@pytest.mark.parametrize(
    "change",
    [
        {"dtype": "float32"},
        {"spec": dataclasses.replace(TINY_SPEC, image_size=42)},
        {"spec": dataclasses.replace(TINY_SPEC, seed=1)},
        {"spec": dataclasses.replace(TINY_SPEC, layers=(-2,))},
        {"spec": dataclasses.replace(TINY_SPEC, name="tiny_vit_base_patch14_reg4_dinov2_test")},
    ],
)
def test_store_key_changes_with_every_input(tiny_adapter, tmp_path, change) -> None:
    base_url, base = plan_store(tiny_adapter, TINY_SPEC, str(tmp_path))
    url, changed = plan_store(
        tiny_adapter, change.get("spec", TINY_SPEC), str(tmp_path), dtype=change.get("dtype", "float16")
    )
    assert changed.key != base.key and url != base_url


def test_store_key_changes_with_the_manifest(tiny_adapter, tmp_path) -> None:
    _, before = plan_store(tiny_adapter, TINY_SPEC, str(tmp_path))
    train = tiny_adapter.root / "bottle" / "train" / "good"
    (train / "000.png").rename(train / "099.png")
    _, after = plan_store(tiny_adapter, TINY_SPEC, str(tmp_path))
    assert after.key != before.key
