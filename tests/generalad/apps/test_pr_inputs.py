"""Prediction inputs, thresholds, the backbone recorded in model.json, and atomic output folders (no backbone run)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from generalad.apps.fit_folder import folder_dataset
from generalad.apps.predict_inputs import collect_images, output_names
from generalad.apps.predictor import ModelMismatchError, backbone_spec_for_model
from generalad.apps.staging import staged_dir
from generalad.apps.thresholds import threshold_from_scores
from generalad.errors import ConfigError, DatasetError


def _png(path, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def test_collect_images_recurses_sorted_skips_hidden_and_other_files(tmp_path):
    folder = tmp_path / "shots"
    _png(folder / "b.png")
    _png(folder / "a.png")
    _png(folder / "sub" / "c.jpg")
    _png(folder / ".hidden" / "d.png")
    _png(folder / ".e.png")
    (folder / "notes.txt").write_text("x")
    single = _png(tmp_path / "single.png")
    images, skipped = collect_images([folder, single, folder / "a.png"])
    assert [i.name for i in images] == ["shots/a.png", "shots/b.png", "shots/sub/c.jpg", "single.png"]
    assert skipped == 1  # notes.txt; the same file given twice is scored once


def test_collect_images_errors_name_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "readme.md").write_text("x")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match="empty.*no image"):
        collect_images([tmp_path / "empty"])
    with pytest.raises(DatasetError, match="only_text"):
        collect_images([tmp_path / "only_text"])
    with pytest.raises(DatasetError, match="x.txt is not an image"):
        collect_images([tmp_path / "x.txt"])
    with pytest.raises(DatasetError, match="does not exist"):
        collect_images([tmp_path / "missing.png"])
    with pytest.raises(DatasetError, match="no images"):
        collect_images([])


def test_names_of_same_named_folders_and_overlays_are_unique(tmp_path):
    _png(tmp_path / "a" / "good" / "0.png")
    _png(tmp_path / "b" / "good" / "0.png")
    images, _ = collect_images([tmp_path / "a" / "good", tmp_path / "b" / "good"])
    assert [i.name for i in images] == ["good/0.png", "good-2/0.png"]
    assert output_names(["x/a.jpg", "x/a.png", "x/b.bmp"]) == ["x/a.jpg.png", "x/a.png.png", "x/b.png"]


def test_threshold_is_the_quantile_of_normal_scores():
    scores = [0.1, 0.4, 0.2, 0.3]
    assert threshold_from_scores(scores) == 0.4  # default: the maximum
    assert threshold_from_scores(scores, 0.5) == pytest.approx(np.quantile(scores, 0.5))
    for bad, match in (([], "at least one"), ([0.1, np.nan], "NaN"), ([0.1], "quantile")):
        with pytest.raises(ConfigError, match=match):
            threshold_from_scores(bad, 1.5 if match == "quantile" else 1.0)


FEATURES = {"backbone": "vit_small_patch14_dinov2", "image_size": 56, "layers": [-1]}


def test_backbone_spec_rebuilds_random_init_with_its_seed_and_layerscale():
    spec = backbone_spec_for_model(FEATURES | {"weights": "random:7"})
    assert (spec.weights, spec.seed, spec.init_values, spec.image_size, spec.layers) == (
        "random",
        7,
        None,
        56,
        (-1,),
    )
    spec = backbone_spec_for_model(FEATURES | {"weights": "random:3:init_values=1"})
    assert spec.seed == 3 and spec.init_values == 1.0
    with pytest.raises(ModelMismatchError, match="random init"):
        backbone_spec_for_model(FEATURES | {"weights": "random:0"}, weights="w.safetensors")


def test_backbone_spec_needs_what_model_json_lacks(tmp_path):
    with pytest.raises(ModelMismatchError, match="records no weights, image_size"):
        backbone_spec_for_model({"backbone": "vit_small_patch14_dinov2", "layers": [-1]})
    file_features = FEATURES | {"weights": "file:sha256:" + "0" * 64}
    with pytest.raises(ModelMismatchError, match="--weights FILE"):
        backbone_spec_for_model(file_features)
    with pytest.raises(ModelMismatchError, match="does not exist here"):
        backbone_spec_for_model(file_features | {"weights_file": str(tmp_path / "gone.safetensors")})
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    assert backbone_spec_for_model(file_features, weights=weights).weights == str(weights)
    with pytest.raises(ModelMismatchError, match="hub weights"):
        backbone_spec_for_model(FEATURES | {"weights": "hub:timm/x"}, weights=weights)
    with pytest.raises(ModelMismatchError, match="unknown weights identity"):
        backbone_spec_for_model(FEATURES | {"weights": "s3:whatever"})


def test_staged_dir_leaves_nothing_on_failure_and_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        tmp.mkdir()
        (tmp / "half.csv").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with staged_dir(out) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ConfigError, match="already exists"), staged_dir(out):
        pass
    with pytest.raises(RuntimeError), staged_dir(out, overwrite=True) as tmp:
        tmp.mkdir()
        raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "1"  # the old result survives a failed overwrite
    with staged_dir(out, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and [p.name for p in out.iterdir()] == [
        "b.txt"
    ]


def test_folder_dataset_validates_before_any_backbone_work(tmp_path):
    normal = tmp_path / "ok"
    for i in range(2):
        _png(normal / f"{i}.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        folder_dataset(normal=normal, test_normal=tmp_path / "empty")
    with pytest.raises(ConfigError, match="not both"):
        folder_dataset(normal=normal, root=tmp_path)
    with pytest.raises(ConfigError, match="--test-anomalous"):
        folder_dataset(normal=normal, masks=tmp_path / "empty")
    _png(tmp_path / "bad" / "scratch" / "0.png")
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match="has no mask"):
        folder_dataset(normal=normal, test_anomalous=[tmp_path / "bad" / "scratch"], masks=tmp_path / "masks")
    train_only = folder_dataset(normal=normal)
    split = train_only.one_class_split(train_only.manifest(), "good")
    assert len(split.train_rows) == 2 and len(split.test_rows) == 0


def test_folder_dataset_from_an_mvtec_like_root(tmp_path):
    for rel in (
        "train/good/0.png",
        "train/good/1.png",
        "test/good/0.png",
        "test/dent/0.png",
        "test/dent/1.png",
    ):
        _png(tmp_path / rel)
    for rel in ("ground_truth/dent/0_mask.png", "ground_truth/dent/1_mask.png"):
        _png(tmp_path / rel)
    dataset = folder_dataset(root=tmp_path)
    manifest = dataset.manifest()
    assert dataset.has_masks and len(manifest) == 5
    anomalous = manifest[manifest["label"] == 1]
    assert anomalous["defect_type"].tolist() == ["dent", "dent"]
    assert [list(m) for m in anomalous["mask_paths"]] == [
        ["ground_truth/dent/0_mask.png"],
        ["ground_truth/dent/1_mask.png"],
    ]
    with pytest.raises(ConfigError, match="from the layout"):
        folder_dataset(root=tmp_path, test_normal=tmp_path / "test" / "good")


def test_grid_rows_show_top_scoring_normals_and_every_defect_type_in_turn():
    import pandas as pd

    from generalad.apps.fit_outputs import grid_rows

    defects = ["good"] * 10 + ["crack"] * 5 + ["dent"] * 5 + ["hole"] * 5
    manifest = pd.DataFrame({"defect_type": defects})
    scores = pd.DataFrame(
        {"row": range(25), "score": [float(i % 7) for i in range(25)], "label": [0] * 10 + [1] * 15}
    )
    rows = grid_rows(manifest, scores, max_samples=8)
    assert rows[:2] == [6, 5]  # the two highest-scoring normal images (scores 6 and 5)
    assert rows[2:] == [10, 11, 15, 16, 20, 21]  # two per defect type, grouped by type
    assert grid_rows(manifest, scores, max_samples=100) == sorted(range(10), key=lambda r: -(r % 7)) + list(
        range(10, 25)
    )
    assert grid_rows(manifest, scores.iloc[10:], max_samples=4) == [10, 11, 15, 20]  # no normal: all slots
