"""A user suite as TOML through `generalad reproduce --suite-file` and the reproduce-all flow: the quickstart
brick with both methods (random-init ViT-S at 56 px, 1 epoch), rows of both in the reports and the table."""

from __future__ import annotations

import pytest

from generalad.cli import main
from storage.reports import ReportStore

pytestmark = pytest.mark.slow

SUITE = """
name = "my_smoke"
description = "quickstart brick, both methods"

[[entries]]
dataset = "quickstart"
categories = ["brick"]
image_size = 56
epochs = 1
weights = "random"
pixel_metrics = true
methods = ["generalad", "patchcore_knn"]
coreset_ratio = 0.5
"""


def test_toml_suite_runs_through_reproduce_all(prefect_api, data_home, tmp_path, capsys):
    suite = tmp_path / "my_smoke.toml"
    suite.write_text(SUITE)
    config = tmp_path / "run.toml"  # the options from a config file too: [reproduce] beside [datasets]
    config.write_text(f'[datasets]\n[reproduce]\nsuite-file = "{suite}"\nstore = "{tmp_path / "stores"}"\n')
    reports = tmp_path / "reports"
    code = main(["reproduce", "--config", str(config), "--reports", str(reports), "--run-id", "toml-suite",
                 "--no-epoch-eval", "--workers", "1"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    frame = ReportStore(str(reports)).read_metrics(run_id="toml-suite")
    assert set(frame["status"]) == {"ok"} and set(frame["class_name"]) == {"brick"}
    by_method = frame.groupby("method")["metric"].apply(set).to_dict()
    assert set(by_method) == {"generalad", "patchcore_knn"}
    assert {"image_auroc", "pixel_auroc"} <= by_method["patchcore_knn"]
    assert "PatchCore-kNN" in out.out and "GeneralAD" in out.out
    code = main(["reproduce", "--suite", "smoke", "--suite-file", str(suite)])
    assert code == 2 and "not both" in capsys.readouterr().err
