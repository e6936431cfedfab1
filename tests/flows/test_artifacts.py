"""What reproduce-all attaches to its flow run: a table per dataset, the summary with failures redacted, and the
Fig. 4 sweep plots when the run is the fig4 suite's sweep."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

import flows.reproduce as reproduce
from storage.metric_row import MetricRow
from storage.reports import ReportStore
from tests.fixtures.rows import row_config


@pytest.fixture()
def captured(monkeypatch) -> dict[str, list]:
    calls: dict[str, list] = {"table": [], "markdown": []}
    monkeypatch.setattr(
        reproduce, "create_table_artifact", lambda rows, **kw: calls["table"].append((rows, kw))
    )
    monkeypatch.setattr(
        reproduce, "create_markdown_artifact", lambda text, **kw: calls["markdown"].append((text, kw))
    )
    return calls


def _frame(tmp_path, sigmas):
    rows = [
        MetricRow(
            **row_config(sigma=sigma),
            run_id="r",
            dataset="mvtec_ad",
            backbone="vit_small_patch14_dinov2",
            weights="random:0",
            views="clean+noise_all+noise_random",
            epochs=1,
            top_k=10,
            class_name=cls,
            metric="image_auroc",
            value=0.5 + sigma / 4,
            suite="fig4",  # the plots are made from the fig4 suite's sweep entries
            variant=f"sigma={sigma:g}",
        )
        for sigma in sigmas
        for cls in ("grid", "screw")
    ]
    store = ReportStore(str(tmp_path / "reports"))
    store.write_run("r", rows)
    return store.read_metrics()


def test_sigma_sweep_is_attached_as_inline_pictures(tmp_path, captured, monkeypatch) -> None:
    monkeypatch.setenv("GENERALAD_TEST_SECRET", "hunter2-secret-value")
    failures = ["class task grid: OSError: token hunter2-secret-value rejected"]
    reproduce._publish_artifacts(_frame(tmp_path, [0.1, 0.25, 1.0]), "| table |", failures)
    assert [kw["key"] for _, kw in captured["table"]] == ["mvtec-ad-metrics"]
    assert len(captured["table"][0][0]) == 6  # 3 sigmas x 2 classes, one row each
    keys = [kw["key"] for _, kw in captured["markdown"]]
    assert keys == ["reproduce-summary", "fig4-sweeps"]
    summary, sweeps = captured["markdown"][0][0], captured["markdown"][1][0]
    assert "| table |" in summary and "hunter2-secret-value" not in summary
    encoded = sweeps.split("data:image/png;base64,", 1)[1].split(")", 1)[0]
    picture = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert picture.format == "PNG" and picture.width > 100


def test_no_sweep_no_sweep_artifact(tmp_path, captured) -> None:
    reproduce._publish_artifacts(_frame(tmp_path, [0.25]), "| table |", [])
    assert [kw["key"] for _, kw in captured["markdown"]] == ["reproduce-summary"]
