"""The kNN method from a store on real data (MVTec-AD grid in ../shared/data, random-init ViT-S at 56 px): through
`generalad train --method patchcore_knn`, checked against a brute-force nearest-neighbour computation on the
store's tokens; `generalad evaluate` of the saved bank; and the `train-class` flow writing `method` rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.train import train_class_flow
from generalad.apps.model_io import load_model
from generalad.cli import main
from storage.feature_store import FeatureStore
from storage.reports import ReportStore

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def grid_store(shared_data, tmp_path_factory) -> str:
    if not (shared_data / "mvtec_ad" / "grid").is_dir():
        pytest.skip("MVTec-AD grid is absent")
    root = tmp_path_factory.mktemp("knn-stores")
    args = [
        "extract", "--dataset", "mvtec_ad", "--root", str(shared_data / "mvtec_ad"), "--category", "grid",
        "--weights", "random", "--image-size", "56", "--store", str(root), "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    (url,) = [str(p) for p in root.rglob("*.zarr") if p.is_dir()] or [None]
    return url


def _brute_scores(store: FeatureStore, bank: np.ndarray) -> np.ndarray:
    split = store.split("grid")
    tokens, _ = store.read(split.test_rows)
    q = tokens.numpy().astype(np.float64)  # (n, N, E)
    b = bank.astype(np.float64)
    d = np.sqrt(((q[:, :, None, :] - b[None, None, :, :]) ** 2).sum(-1)).min(axis=2)  # (n, N)
    return d.max(axis=1)


def test_train_knn_from_store_matches_brute_force_and_evaluate_reproduces_it(grid_store, tmp_path, capsys):
    out = tmp_path / "knn"
    code = main(
        ["train", "--store", grid_store, "--class", "grid", "--method", "patchcore_knn",
         "--coreset-ratio", "0.25", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    store = FeatureStore(grid_store)
    model, config = load_model(out)
    bank = model.bank.detach().numpy()
    assert bank.shape == (round(0.25 * 25 * 16), store.embed_dim)  # 25 training images x 16 patches
    assert config["preset"]["coreset_ratio"] == 0.25
    scores = pd.read_parquet(out / "scores.parquet")
    assert (scores["method"] == "patchcore_knn").all()
    np.testing.assert_allclose(scores["score"].to_numpy(), _brute_scores(store, bank), atol=1e-3, rtol=1e-4)
    metrics = {row["metric"] for row in json.loads((out / "metrics.json").read_text())}
    assert {"image_auroc", "pixel_auroc", "aupro"} <= metrics

    assert main(["evaluate", "--store", grid_store, "--model", str(out), "--out", str(tmp_path / "ev")]) == 0
    again = pd.read_parquet(tmp_path / "ev" / "scores.parquet")
    assert (again["method"] == "patchcore_knn").all()
    np.testing.assert_allclose(again["score"].to_numpy(), scores["score"].to_numpy(), atol=1e-6)
    capsys.readouterr()


def test_train_refuses_options_of_the_other_method(grid_store, tmp_path, capsys):
    code = main(
        ["train", "--store", grid_store, "--class", "grid", "--method", "patchcore_knn", "--epochs", "3",
         "--out", str(tmp_path / "x")]
    )  # fmt: skip
    assert code == 2 and "do not apply" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_train_class_flow_writes_knn_rows(prefect_api, grid_store, tmp_path):
    reports = tmp_path / "reports"
    summary = train_class_flow(
        store=grid_store, class_name="grid", reports=str(reports), method="patchcore_knn", coreset_ratio=0.5
    )
    frame = ReportStore(str(reports)).read_metrics(run_id=summary["run_id"])
    assert set(frame["method"]) == {"patchcore_knn"} and set(frame["status"]) == {"ok"}
    assert set(frame["epochs"]) == {0} and set(frame["top_k"]) == {1} and set(frame["views"]) == {"clean"}
    scores = ReportStore(str(reports)).read_scores(run_id=summary["run_id"])
    assert set(scores["method"]) == {"patchcore_knn"} and len(scores) == 14


def test_python_api_fits_a_store_and_evaluates_it_again(grid_store, tmp_path):
    from generalad import GeneralAD

    ad = GeneralAD(method="patchcore_knn", coreset_ratio=0.5).fit_store(
        grid_store, "grid", out=tmp_path / "m"
    )
    assert ad.model_dir == tmp_path / "m" and 0.0 <= ad.metrics["image_auroc"] <= 1.0
    again = GeneralAD.load(tmp_path / "m").evaluate(grid_store)
    assert again == pytest.approx(ad.metrics, abs=1e-9)
    with pytest.raises(Exception, match="not fitted"):
        GeneralAD().predict(np.zeros((8, 8), np.uint8))


def test_python_api_fits_a_registered_dataset_through_the_store(shared_data, grid_store, tmp_path):
    from generalad import GeneralAD

    root = Path(grid_store).parents[1]  # <root>/mvtec_ad-grid/<name>.zarr: the store the fixture extracted
    ad = GeneralAD(weights="random", image_size=56, method="patchcore_knn", coreset_ratio=0.5, store=root)
    ad.fit_dataset("mvtec_ad", shared_data / "mvtec_ad", "grid", category="grid", out=tmp_path / "m")
    assert ad.store_url == FeatureStore(grid_store).url  # reused, not extracted again
    assert ad.evaluate() == pytest.approx(ad.metrics, abs=1e-9)
