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
from storage.feature_store import FeatureStore
from storage.store_layout import COMPLETE_FILE, SHARDS_DIR

SPEC = BackboneSpec(weights="random", image_size=28, init_values=1.0)


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
    result = extract_features(
        tiny_adapter, SPEC, str(tmp_path / "stores"), dtype="float32", shard_size=4, progress=False
    )
    store = FeatureStore(result.url)
    tokens, attn = _direct(tiny_adapter, SPEC)
    assert (store.num_images, store.num_patches, store.embed_dim, store.num_heads) == (11, 4, 384, 6)
    got_tokens, got_attn = store.read(range(11))
    np.testing.assert_allclose(got_tokens.numpy(), tokens, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_attn.numpy(), attn, rtol=0, atol=1e-6)
    assert result.images_extracted == 11 and result.shards_written == 3
    # masks at the evaluation resolution, zero for normal images
    manifest = store.manifest
    masks = store.masks(range(11))
    assert masks.shape == (11, 28, 28) and masks.dtype == np.uint8
    for i, record in enumerate(_records(tiny_adapter)):
        if record.mask_paths:
            expected = preprocess_mask(load_mask([tiny_adapter.root / record.mask_paths[0]], (40, 40)), 28)
            np.testing.assert_array_equal(masks[i], expected)
            assert masks[i].sum() > 0
        else:
            assert masks[i].sum() == 0
    assert list(manifest["image_id"]) == [r.image_id for r in _records(tiny_adapter)]
    # the protocol's split travels with the store
    split = store.split("tiny")
    assert list(split.train_rows) == list(range(6, 11)) and list(split.test_rows) == list(range(6))
    assert list(split.test_labels) == [1, 1, 1, 0, 0, 0] and store.normal_classes == ["tiny"]
    with pytest.raises(DatasetError, match="unknown class 'nope'"):
        store.split("nope")


def test_float16_store_is_within_half_precision_of_float32(tiny_adapter, tmp_path) -> None:
    r16 = extract_features(tiny_adapter, SPEC, str(tmp_path), dtype="float16", progress=False)
    r32 = extract_features(tiny_adapter, SPEC, str(tmp_path), dtype="float32", progress=False)
    assert r16.url != r32.url
    t16, a16 = FeatureStore(r16.url).read(range(11))
    t32, a32 = FeatureStore(r32.url).read(range(11))
    assert torch.allclose(t16, t32, rtol=1e-3, atol=2e-3)
    assert torch.allclose(a16, a32, rtol=1e-3, atol=1e-4)


def test_rerun_of_a_complete_store_does_no_work_and_rewrites_nothing(
    tiny_adapter, tmp_path, monkeypatch
) -> None:
    root = str(tmp_path / "stores")
    first = extract_features(tiny_adapter, SPEC, root, progress=False)
    before = _files(first.url)

    def must_not_load(*args, **kwargs):
        raise AssertionError("the backbone was loaded for a complete store")

    monkeypatch.setattr("storage.extraction.load_backbone", must_not_load)
    second = extract_features(tiny_adapter, SPEC, root, progress=False)
    assert second.url == first.url and second.reused and second.images_extracted == 0
    assert _files(first.url) == before


def test_partial_store_resumes_only_the_missing_shards(tiny_adapter, tmp_path) -> None:
    root = str(tmp_path / "stores")
    full = extract_features(tiny_adapter, SPEC, root, dtype="float32", shard_size=4, progress=False)
    expected = FeatureStore(full.url).read(range(11))[0]
    # a run killed after shards 0 and 2: no marker for shard 1, no completeness marker
    os.remove(Path(full.url) / COMPLETE_FILE)
    os.remove(Path(full.url) / SHARDS_DIR / "00001.json")
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore(full.url)
    resumed = extract_features(tiny_adapter, SPEC, root, dtype="float32", shard_size=4, progress=False)
    assert (resumed.images_extracted, resumed.shards_written, resumed.shards_skipped) == (4, 1, 2)
    assert torch.equal(FeatureStore(full.url).read(range(11))[0], expected)


def test_corrupted_shard_is_caught_before_the_store_is_marked_complete(tiny_adapter, tmp_path) -> None:
    from storage.feature_store import StoreWriter
    from storage.store_layout import StoreLayout

    url, fingerprint = plan_store(tiny_adapter, SPEC, str(tmp_path), dtype="float32")
    layout = StoreLayout(11, 4, 384, 6, 28, "float32", True, shard_size=8)
    manifest = tiny_adapter.manifest()
    writer = StoreWriter(
        url, fingerprint, layout, manifest, {"tiny": tiny_adapter.one_class_split(manifest, "tiny")}
    )
    rng = np.random.default_rng(0)
    for shard, n in ((0, 8), (1, 3)):
        writer.write_shard(shard, rng.random((n, 4, 384)), rng.random((n, 6, 4)), np.zeros((n, 28, 28)))
    import zarr

    zarr.open_group(urls.zarr_store(url), mode="r+")["tokens"][9] = 0.0  # bytes changed after the marker
    with pytest.raises(StoreError, match="shard 1 does not match its checksum"):
        writer.mark_complete()
    assert not (Path(url) / COMPLETE_FILE).exists()


def test_undecodable_image_names_the_file_and_publishes_nothing(tiny_adapter, tiny_root, tmp_path) -> None:
    bad = tiny_root / "test" / "good" / "test002.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    with pytest.raises(ImageError, match="test002.png"):
        extract_features(tiny_adapter, SPEC, str(tmp_path / "stores"), progress=False)
    assert not list((tmp_path / "stores").rglob(COMPLETE_FILE))


def test_mask_of_another_size_names_the_mask(tiny_adapter, tiny_root, tmp_path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tiny_root / "masks" / "test001.png")
    with pytest.raises(ImageError, match="test001.png"):
        extract_features(tiny_adapter, SPEC, str(tmp_path / "stores"), progress=False)


def test_memory_url_store_round_trip(tiny_adapter) -> None:
    result = extract_features(
        tiny_adapter, SPEC, "memory://generalad-test/stores", dtype="float32", progress=False
    )
    assert result.url.startswith("memory://")
    store = FeatureStore(result.url)
    tokens, _ = _direct(tiny_adapter, SPEC)
    np.testing.assert_allclose(store.read([3, 0, 7])[0].numpy(), tokens[[3, 0, 7]], atol=1e-5)
    again = extract_features(
        tiny_adapter, SPEC, "memory://generalad-test/stores", dtype="float32", progress=False
    )
    assert again.reused


def test_iter_batches_yields_requested_rows_in_order(tiny_adapter, tmp_path) -> None:
    store = FeatureStore(
        extract_features(tiny_adapter, SPEC, str(tmp_path), dtype="float32", progress=False).url
    )
    everything = store.read(range(11))[0]
    batches = [[10, 2], [0, 1, 2, 3], [7]]
    for rows, (tokens, attn) in zip(batches, store.iter_batches(batches), strict=True):
        assert torch.equal(tokens, everything[rows]) and attn.shape == (len(rows), 6, 4)


@pytest.mark.parametrize(
    "change",
    [
        {"dtype": "float32"},
        {"spec": dataclasses.replace(SPEC, image_size=42)},
        {"spec": dataclasses.replace(SPEC, seed=1)},
        {"spec": dataclasses.replace(SPEC, layers=(-2,))},
        {"spec": dataclasses.replace(SPEC, name="vit_small_patch14_reg4_dinov2")},
    ],
)
def test_store_key_changes_with_every_input(tiny_adapter, tmp_path, change) -> None:
    base_url, base = plan_store(tiny_adapter, SPEC, str(tmp_path))
    url, changed = plan_store(
        tiny_adapter, change.get("spec", SPEC), str(tmp_path), dtype=change.get("dtype", "float16")
    )
    assert changed.key != base.key and url != base_url


def test_store_key_changes_with_the_manifest(tiny_adapter, tiny_root, tmp_path) -> None:
    _, before = plan_store(tiny_adapter, SPEC, str(tmp_path))
    (tiny_root / "train" / "good" / "train000.png").rename(tiny_root / "train" / "good" / "train999.png")
    _, after = plan_store(tiny_adapter, SPEC, str(tmp_path))
    assert after.key != before.key
