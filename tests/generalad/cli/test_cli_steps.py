"""The success paths of `generalad datasets`, `extract`, `train` and `evaluate`, run in-process like a user would.

A tiny MVTec-AD category (3 train, 5 test images) through a random-init ViT-S at 56 px (16 patches, so the industrial top-10 applies): what is checked is the
plumbing between the commands (printed store path, written files, exit codes) and that the printed and written
numbers agree with an independent computation from the written scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from generalad.cli import main
from tests.fixtures.industrial_datasets import make_mvtec


def _run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("mvtec"), side=20)


def test_datasets_lists_the_registry_and_checks_a_root(mvtec, capsys):
    code, out, _ = _run(capsys, "datasets")
    assert code == 0
    names = out.split()
    assert {"mvtec_ad", "visa", "cifar10", "folder", "quickstart"} <= set(names)
    code, out, _ = _run(capsys, "datasets", "check", "mvtec_ad", mvtec.root, "--category", "bottle")
    assert code == 0
    # the fixture's counts, row by row: (split, class, defect type) -> (images, masks)
    rows = {
        tuple(line.split()[:3]): line.split()[3:] for line in out.splitlines()[2:] if len(line.split()) == 5
    }
    assert rows == {
        ("test", "bottle", "broken_large"): ["2", "2"],
        ("test", "bottle", "contamination"): ["1", "1"],
        ("test", "bottle", "good"): ["2", "0"],
        ("train", "bottle", "good"): ["3", "0"],
    }
    assert out.splitlines()[-1].split() == ["total", "8", "3"]


def test_extract_train_evaluate_agree(mvtec, tmp_path, capsys):
    code, out, _ = _run(
        capsys,
        "extract", "--dataset", "mvtec_ad", "--root", mvtec.root, "--category", "bottle",
        "--weights", "random", "--image-size", "56", "--store", tmp_path / "stores", "--no-progress",
    )  # fmt: skip
    assert code == 0
    store = out.strip().splitlines()[-1]
    assert Path(store).is_dir() and (Path(store) / "COMPLETE.json").is_file()

    run = tmp_path / "run"
    code, out, err = _run(
        capsys, "train", "--store", store, "--class", "bottle", "--epochs", "1", "--out", run, "--no-progress"
    )
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(run)
    for name in ("model.safetensors", "model.json", "metrics.json", "scores.parquet"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    trained = {r["metric"]: r["value"] for r in metrics if r["selection"] == "last"}
    scores = pd.read_parquet(run / "scores.parquet")
    assert len(scores) == 5 and scores["label"].sum() == 3
    assert trained["image_auroc"] == pytest.approx(roc_auc_score(scores["label"], scores["score"]), abs=1e-12)

    out_eval = tmp_path / "eval"
    code, out, err = _run(capsys, "evaluate", "--store", store, "--model", run, "--out", out_eval)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(out_eval)
    evaluated = {r["metric"]: r["value"] for r in json.loads((out_eval / "metrics.json").read_text())}
    # the saved model re-scores the same features: the same image AUROC as training's `last`
    assert evaluated["image_auroc"] == pytest.approx(trained["image_auroc"], abs=1e-9)
    again = pd.read_parquet(out_eval / "scores.parquet")
    pd.testing.assert_series_equal(
        again["score"], scores["score"], check_exact=False, atol=1e-5, check_names=False
    )

    # a second evaluate into the same folder is refused before any work, and --overwrite replaces it
    code, _, err = _run(capsys, "evaluate", "--store", store, "--model", run, "--out", out_eval)
    assert code == 2 and "exists" in err
    code, _, err = _run(
        capsys, "evaluate", "--store", store, "--model", run, "--out", out_eval, "--overwrite"
    )
    assert code == 0, err
