"""Adapters on the small real copies in ../shared/data (skipped where that folder is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from generalad.data import check_dataset, get_dataset

pytestmark = pytest.mark.realdata


def test_mvtec_ad_grid(shared_data: Path) -> None:
    ds = get_dataset("mvtec_ad", shared_data / "mvtec_ad", "grid")
    manifest = ds.manifest()
    assert len(manifest) == 39
    assert (manifest["split"] == "train").sum() == 25
    test = manifest[manifest["split"] == "test"]
    assert len(test) == 14 and (test["label"] == 0).sum() == 3 and (test["label"] == 1).sum() == 11
    assert all(len(m) == 1 for m in test.loc[test["label"] == 1, "mask_paths"])
    split = ds.one_class_split(manifest, "grid")
    assert len(split.train_rows) == 25 and split.test_labels.sum() == 11
    for record in [r for r in ds.records() if r.label == 1][:3]:
        img = ds.load_image(record)
        mask = np.asarray(ds.load_mask(record, img.size))
        assert img.size == (1024, 1024) and 0 < (mask > 0).mean() < 0.5
    assert "total" in check_dataset("mvtec_ad", shared_data / "mvtec_ad")


def test_cifar10_folders(shared_data: Path) -> None:
    ds = get_dataset("cifar10", shared_data / "cifar10")
    manifest = ds.manifest()
    assert ds.source == "folders" and len(manifest) == 15000
    split = ds.one_class_split(manifest, "cat")
    assert len(split.train_rows) == 500 and len(split.test_rows) == 10000 and split.test_labels.sum() == 9000
    records = ds.records()
    for record in records[:: len(records) // 5]:
        img = ds.load_image(record)
        assert img.mode == "RGB" and img.size == (32, 32)


def test_fmnist_idx_gz(shared_data: Path) -> None:
    ds = get_dataset("fmnist", shared_data / "fashion_mnist")
    manifest = ds.manifest()
    assert len(manifest) == 70000 and manifest["image_id"].iloc[0] == "t10k-images-idx3-ubyte#00000"
    split = ds.one_class_split(manifest, "Sneaker")
    assert len(split.train_rows) == 6000 and len(split.test_rows) == 10000 and split.test_labels.sum() == 9000
    records = ds.records()
    img = ds.load_image(records[0])
    assert img.mode == "L" and img.size == (28, 28) and np.asarray(img).max() > 0


def test_intel_view_folders(shared_data: Path) -> None:
    ds = get_dataset("view", shared_data / "intel_view")
    manifest = ds.manifest()
    assert len(manifest) == 3958 and (manifest["split"] == "train").sum() == 1800
    split = ds.one_class_split(manifest, "forest")
    assert len(split.train_rows) == 300 and len(split.test_rows) == 2158
    for record in ds.records()[::600]:
        assert ds.load_image(record).mode == "RGB"
