"""The issue's acceptance check on real data: the MVTec-AD grid subset in ../shared/data (skipped when absent)
through the `generalad extract` command, random-init ViT-S at 56 px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from generalad.cli import main
from storage.feature_store import FeatureStore


def _extract(shared_data: Path, store_root: Path, capsys) -> str:
    # the default ViT-S by its name, not the tiny test ViT: this is the command exactly as a user runs it on
    # real data (a timm name the CLI knows without any test-only registration), with that model's dims below
    args = [
        "extract",
        "--dataset", "mvtec_ad",
        "--root", str(shared_data / "mvtec_ad"),
        "--category", "grid",
        "--backbone", "vit_small_patch14_dinov2",
        "--weights", "random",
        "--image-size", "56",
        "--store", str(store_root),
        "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]  # the store path is the last line


def test_mvtec_grid_store_is_complete_and_a_rerun_rewrites_nothing(shared_data, tmp_path, capsys) -> None:
    url = _extract(shared_data, tmp_path, capsys)
    group = zarr.open_group(url, mode="r")
    assert group["tokens"].shape == (39, 16, 384)
    assert group["cls_attn"].shape == (39, 6, 16)
    assert group["masks"].shape == (39, 56, 56)
    store = FeatureStore(url)
    manifest = store.manifest
    assert len(manifest) == 39 and (manifest["split"] == "train").sum() == 25
    masks = store.masks(range(39))
    anomalous = manifest["label"].to_numpy() == 1
    assert anomalous.sum() == 11
    assert (masks[anomalous].reshape(11, -1).max(axis=1) == 1).all()  # every defect keeps some mask pixels
    assert masks[~anomalous].sum() == 0
    split = store.split("grid")
    assert len(split.train_rows) == 25 and len(split.test_rows) == 14 and split.test_labels.sum() == 11
    tokens, _ = store.read(range(39))
    assert np.isfinite(tokens.numpy()).all()

    before = {p: p.stat().st_mtime_ns for p in Path(url).rglob("*") if p.is_file()}
    assert _extract(shared_data, tmp_path, capsys) == url
    after = {p: p.stat().st_mtime_ns for p in Path(url).rglob("*") if p.is_file()}
    assert after == before
