"""fit-folder then predict on MVTec-AD `grid` from ../shared/data, as a user would lay it out (skipped without it).

Random-init ViT-S at 112 px and 3 epochs: this checks the plumbing on real files (1024 x 1024 greyscale PNGs,
masks per defect folder named `<stem>_mask.png`), not detection quality, which needs the pretrained weights.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image

from tests.fixtures.cli import run_cli

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_fit_folder_and_predict_on_mvtec_grid(shared_data, tmp_path):
    grid = shared_data / "mvtec_ad" / "grid"
    if not grid.is_dir():
        pytest.skip(f"{grid} is absent")
    defects = sorted(d for d in (grid / "test").iterdir() if d.is_dir() and d.name != "good")
    out = tmp_path / "runs" / "grid"
    code, stdout, stderr = run_cli(
        "fit-folder", "--normal", grid / "train" / "good", "--test-normal", grid / "test" / "good",
        "--test-anomalous", *defects, "--masks", grid / "ground_truth", "--out", out,
        "--weights", "random", "--image-size", "112", "--epochs", "3", "--grid-size", "8", "--no-progress",
    )  # fmt: skip
    assert code == 0, stderr
    metrics = {row["metric"] for row in json.loads((out / "metrics.json").read_text())}
    assert {"image_auroc", "pixel_auroc", "aupro"} <= metrics  # masks matched per defect folder
    n_test = len(list((grid / "test").rglob("*.png")))
    assert len(pd.read_csv(out / "report" / "test_scores.csv")) == n_test
    with Image.open(out / "report" / "grid.png") as picture:
        assert picture.format == "PNG"

    code, stdout, stderr = run_cli(
        "predict", "--model", out, "--out", tmp_path / "pred", "--no-progress", grid / "test"
    )
    assert code == 0, stderr
    scores = pd.read_csv(tmp_path / "pred" / "scores.csv")
    assert len(scores) == n_test
    for row in scores.itertuples(index=False):
        with Image.open(row.image) as source, Image.open(tmp_path / "pred" / row.overlay) as picture:
            picture.load()
            assert picture.format == "PNG" and picture.size == source.size
