"""`generalad export`: one ONNX graph checked with onnxruntime against the torch predictor (both methods), its
metadata contract, a dynamic batch, and `generalad predict --model model.onnx`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from generalad import GeneralAD
from generalad.apps.predict_inputs import collect_images
from generalad.apps.predictor import load_predictor
from generalad.data.images import open_image
from generalad.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_image
from tests.fixtures.cli import run_cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

TOLERANCE = 1e-3  # max abs difference of scores and maps, onnxruntime vs torch (float32 both)


@pytest.fixture(scope="module", params=["generalad", "patchcore_knn"])
def exported(request, folders, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"onnx-{request.param}")
    extra = {"epochs": 1} if request.param == "generalad" else {"coreset_ratio": 0.5}
    ad = GeneralAD(weights="random", image_size=56, method=request.param, store=root / "stores", **extra)
    ad.fit(
        folders.normal, test_normal=folders.test_normal, test_anomalous=[folders.anomalous], out=root / "m"
    )
    code, stdout, stderr = run_cli("export", "--model", root / "m", "--out", root / "model.onnx")
    assert code == 0, stderr
    return root / "m", root / "model.onnx", stdout


def _pixels(folders, n=3):
    images = [open_image(item.path) for item in collect_images([folders.anomalous])[0][:n]]
    return images, torch.stack([preprocess_image(image, 56) for image in images])


def test_onnx_matches_torch_and_keeps_its_contract(exported, folders, record_property):
    model_dir, path, stdout = exported
    predictor = load_predictor(model_dir)
    images, pixels = _pixels(folders)
    logits = predictor.logits(images)
    want_scores, want_maps = predictor.scores(logits), predictor.maps(logits)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(float)" and inp.shape[1:] == [3, 56, 56]
    assert [o.name for o in session.get_outputs()] == ["score", "map"]
    for batch in (1, 3):  # dynamic batch
        score, maps = session.run(None, {"image": pixels[:batch].numpy()})
        assert score.shape == (batch,) and maps.shape == (batch, 56, 56)
    score, maps = session.run(None, {"image": pixels.numpy()})
    score_diff = float(np.abs(score - want_scores).max())
    map_diff = float(np.abs(maps - want_maps).max())
    record_property("onnx_max_abs_diff", {"score": score_diff, "map": map_diff})
    print(f"onnx vs torch, {predictor.config['format']}: score {score_diff:.2e}, map {map_diff:.2e}")
    assert score_diff < TOLERANCE and map_diff < TOLERANCE
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["image_size"]) == [56]
    assert json.loads(meta["mean"]) == list(IMAGENET_MEAN) and json.loads(meta["std"]) == list(IMAGENET_STD)
    identity = json.loads(meta["model"])
    assert identity["weights"] == "random:0" and identity["backbone"] == "vit_small_patch14_dinov2"
    assert json.loads(meta["threshold"])["value"] == pytest.approx(predictor.stored_threshold().value)
    assert str(path) in stdout


def test_predict_accepts_the_onnx_file(exported, folders, tmp_path):
    model_dir, path, _ = exported
    for model, out in ((model_dir, tmp_path / "torch"), (path, tmp_path / "onnx")):
        code, _, stderr = run_cli(
            "predict", "--model", model, "--out", out, "--no-progress", folders.anomalous
        )
        assert code == 0, stderr
    torch_scores, onnx_scores = (
        pd.read_csv(tmp_path / "torch" / "scores.csv"),
        pd.read_csv(tmp_path / "onnx" / "scores.csv"),
    )
    np.testing.assert_allclose(onnx_scores["score"], torch_scores["score"], atol=TOLERANCE)
    assert onnx_scores["pred"].tolist() == torch_scores["pred"].tolist()  # the stored threshold travels along
    summary = json.loads((tmp_path / "onnx" / "prediction.json").read_text())
    assert summary["model"] == str(path) and summary["threshold"]["rule"].startswith("stored")


def test_export_refuses_to_overwrite(exported, capsys):
    model_dir, path, _ = exported
    code, _, stderr = run_cli("export", "--model", model_dir, "--out", path)
    assert code == 2 and "--overwrite" in stderr
