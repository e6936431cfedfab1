"""Saving / loading models and writing a run's outputs atomically."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from generalad.apps.model_io import (
    ModelFileError,
    load_model,
    save_model,
    write_evaluation_outputs,
    write_run_outputs,
)
from generalad.errors import ConfigError
from generalad.method.evaluation import evaluate
from generalad.method.experiment import metric_rows, run_one_class
from generalad.method.scoring import patch_logits
from generalad.method.training import build_discriminator


def test_round_trip_gives_identical_logits(tmp_path, tiny_source, tiny_preset):
    torch.manual_seed(0)
    model = build_discriminator(16, 8, tiny_preset)
    save_model(
        model, tmp_path / "m", {"seed": 0, "features": {"num_patches": 16, "image_size": np.int64(56)}}
    )
    loaded, config = load_model(tmp_path / "m")
    rows = np.arange(10)
    assert torch.equal(patch_logits(model, tiny_source, rows), patch_logits(loaded, tiny_source, rows))
    assert config["discriminator"] == model.config()
    assert config["features"] == {"num_patches": 16, "image_size": 56}
    assert not loaded.training
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]


def test_missing_files_are_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="missing model.safetensors, model.json"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text('{"format": "something else"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFileError, match="does not describe"):
        load_model(tmp_path)


def test_write_run_outputs(tmp_path, tiny_source, tiny_split, tiny_preset):
    result = run_one_class(tiny_source, tiny_split, tiny_preset, eval_every_epoch=True, progress=False)
    ids = np.array([f"img{i:03d}" for i in range(48)])
    out = write_run_outputs(
        result,
        tmp_path / "runs" / "r1",
        image_ids=ids,
        extra_columns={"run_id": "r1", "dataset": "tiny"},
        feature_info={"backbone": "random:0", "num_patches": 16, "embed_dim": 8},
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json",
        "model.json",
        "model.safetensors",
        "scores.parquet",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics) == len(result.metrics) == 6
    assert all(
        row["run_id"] == "r1" and row["value"] == orig["value"]
        for row, orig in zip(metrics, result.metrics, strict=True)
    )
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores["image_id"].tolist() == [f"img{i:03d}" for i in range(32, 48)]
    assert scores["score"].tolist() == result.scores["score"].tolist()
    assert set(scores.columns) >= {"image_id", "row", "score", "label", "run_id", "dataset"}
    model, config = load_model(out)
    assert config["features"]["backbone"] == "random:0" and config["preset"]["epochs"] == 2
    assert config["seed"] == 0
    # an existing folder needs overwrite=True
    with pytest.raises(ConfigError, match="already exists"):
        write_run_outputs(result, out)
    write_run_outputs(result, out, overwrite=True)
    assert pd.read_parquet(out / "scores.parquet")["image_id"].isna().all()
    assert sorted(p.name for p in out.parent.iterdir()) == ["r1"]


def test_failure_leaves_nothing_behind(tmp_path, tiny_source, tiny_split, tiny_preset):
    result = run_one_class(tiny_source, tiny_split, tiny_preset.with_overrides(epochs=1), progress=False)
    with pytest.raises(ConfigError, match="image_ids"):
        write_run_outputs(result, tmp_path / "r2", image_ids=["only", "three", "ids"])
    assert list(tmp_path.iterdir()) == []


def test_write_evaluation_outputs(tmp_path, tiny_source, tiny_split, tiny_preset):
    torch.manual_seed(0)
    evaluation = evaluate(build_discriminator(16, 8, tiny_preset), tiny_source, tiny_split, top_k=4)
    rows = metric_rows(evaluation, selection="last", epoch=2)
    out = write_evaluation_outputs(evaluation, rows, tmp_path / "e", image_ids=[f"i{k}" for k in range(48)])
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "scores.parquet"]
    assert json.loads((out / "metrics.json").read_text()) == rows
    assert pd.read_parquet(out / "scores.parquet")["image_id"].tolist() == [f"i{k}" for k in range(32, 48)]
