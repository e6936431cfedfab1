"""Paper-style tables (generalad.apps.report_tables) against hand computations on hand-built frames."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from generalad.apps.report_tables import cell_means, failed_classes, render_table
from tests.fixtures.rows import row_config

S, B = "vit_small_patch14_dinov2", "vit_base_patch14_dinov2"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def row(dataset, class_name, value, *, backbone=S, selection="last", metric="image_auroc", run_id="r1",
        created_at=T0, weights="hub:timm/x", pretrained=True, seed=0, shots=None, status="ok", error=None,
        sigma=0.25, config_hash=None) -> dict:  # fmt: skip
    config = (dataset, class_name, backbone, weights, seed, shots, sigma)
    return {
        "run_id": run_id,
        "created_at": pd.Timestamp(created_at),
        "dataset": dataset,
        "category": None,
        "backbone": backbone,
        "weights": weights,
        "pretrained": pretrained,
        "class_name": class_name,
        "seed": seed,
        "shots": shots,
        "selection": selection,
        "metric": metric,
        "value": value,
        "status": status,
        "error": error,
        "sigma": sigma,
        "views": "clean+noise_all",
        "config_hash": config_hash or str(abs(hash(config))),
    }


def frame(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows)
    out["shots"] = out["shots"].astype("float64")
    return out


@pytest.fixture
def full_shot() -> pd.DataFrame:
    rows = []
    mv = {"bottle": 0.991, "cable": 0.953, "screw": 0.877}
    vi = {"candle": 0.95, "pcb1": 0.90}
    for name, value in mv.items():
        rows.append(row("mvtec_ad", name, value))
        rows.append(row("mvtec_ad", name, value + 0.005, selection="best_on_test"))
        rows.append(row("mvtec_ad", name, value - 0.1, backbone=B))
        rows.append(row("mvtec_ad", name, 0.5 + len(name) / 100, weights="random:0", pretrained=False))
        rows.append(row("mvtec_ad", name, 0.42, metric="pixel_auroc"))
    for name, value in vi.items():
        rows.append(row("visa", name, value))
    rows.append(row("visa", "pcb2", None, status="failed", error="TrainingError: NaN loss\ntraceback..."))
    rows.append(row("cifar10", "airplane", 0.97, shots=None))
    return frame(rows)


def _cell(cells: pd.DataFrame, **where) -> pd.Series:
    sel = cells
    for key, value in where.items():
        sel = sel[sel[key] == value]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_means_match_an_independent_computation(full_shot):
    cells = cell_means(full_shot)
    mv = _cell(cells, backbone=S, weights_kind="pretrained", column="mvtec_ad")
    assert mv["ours"] == pytest.approx(100 * np.mean([0.991, 0.953, 0.877]))
    assert mv["n_classes"] == 3 and mv["n_failed"] == 0
    assert mv["paper"] == 98.7
    visa = _cell(cells, backbone=S, weights_kind="pretrained", column="visa")
    assert visa["ours"] == pytest.approx(100 * np.mean([0.95, 0.90]))  # the failed class does not enter
    assert visa["n_failed"] == 1
    base = _cell(cells, backbone=B, column="mvtec_ad")
    assert base["ours"] == pytest.approx(100 * np.mean([0.891, 0.853, 0.777]))
    assert base["paper"] == 99.2
    rnd = _cell(cells, weights_kind="random-init", column="mvtec_ad")
    assert rnd["ours"] == pytest.approx(100 * np.mean([0.56, 0.55, 0.55]))
    assert np.isnan(rnd["paper"])  # the paper's numbers are for pretrained weights only
    assert set(cells["selection"]) == {"last"}


def test_best_on_test_and_pixel_tables(full_shot):
    best = cell_means(full_shot, selection="best_on_test")
    assert _cell(best, column="mvtec_ad")["ours"] == pytest.approx(100 * np.mean([0.996, 0.958, 0.882]))
    both = cell_means(full_shot, selection=["last", "best_on_test"])
    assert (
        len(both[(both.backbone == S) & (both.column == "mvtec_ad") & (both.weights_kind == "pretrained")])
        == 2
    )
    pixel = cell_means(full_shot, metric="pixel_auroc")
    assert _cell(pixel, column="mvtec_ad")["ours"] == pytest.approx(42.0)
    assert _cell(pixel, column="mvtec_ad")["paper"] == 97.0


def test_seeds_are_averaged_per_class_first():
    rows = [
        row("mvtec_ad", "bottle", 0.5, seed=0, shots=1),
        row("mvtec_ad", "bottle", 0.7, seed=10, shots=1),
        row("mvtec_ad", "cable", 0.9, seed=0, shots=1),
        row("mvtec_ad", "bottle", 0.8, seed=0, shots=2),
        row("mvtec_ad", "bottle", 0.99, seed=0),  # full-shot: not in the few-shot table
    ]
    cells = cell_means(frame(rows), by="shots")
    one = _cell(cells, column=1)
    assert one["ours"] == pytest.approx(100 * np.mean([np.mean([0.5, 0.7]), 0.9]))  # 75, not the row mean 70
    assert one["paper"] == 84.4
    assert _cell(cells, column=2)["ours"] == pytest.approx(80.0)
    text = render_table(frame(rows), by="shots", with_paper=True)
    assert "1-shot" in text and "2-shot" in text and "75.0 / 84.4" in text and "MVTec-AD" in text
    by_dataset = cell_means(frame(rows), shots=1)
    assert _cell(by_dataset, column="mvtec_ad")["ours"] == pytest.approx(75.0)


def test_latest_run_of_each_configuration_counts():
    rows = [
        row("mvtec_ad", "bottle", 0.6, run_id="old", created_at=T0),
        row("mvtec_ad", "bottle", 0.9, run_id="new", created_at=T0 + timedelta(days=7)),
        row("mvtec_ad", "cable", 0.8, run_id="old", created_at=T0),
        row(
            "mvtec_ad",
            "cable",
            None,
            run_id="new",
            created_at=T0 + timedelta(days=7),
            status="failed",
            error="E",
        ),
    ]
    cells = cell_means(frame(rows))
    assert _cell(cells, column="mvtec_ad")["ours"] == pytest.approx(90.0)  # cable's latest run failed
    assert failed_classes(frame(rows))["class_name"].tolist() == ["cable"]
    every = cell_means(frame(rows), latest_only=False)
    assert _cell(every, column="mvtec_ad")["ours"] == pytest.approx(100 * np.mean([np.mean([0.6, 0.9]), 0.8]))


def test_mixed_configurations_are_refused():
    rows = [
        row("mvtec_ad", "bottle", 0.9, sigma=0.25),
        row("mvtec_ad", "bottle", 0.8, sigma=0.5, run_id="r2"),
    ]
    with pytest.raises(ValueError, match="sigma"):
        cell_means(frame(rows))
    assert cell_means(frame(rows)[lambda f: f.sigma == 0.5])["ours"].tolist() == [pytest.approx(80.0)]


def test_markdown_layout(full_shot):
    text = render_table(full_shot, with_paper=True)
    lines = text.splitlines()
    assert lines[0].startswith("**Image AUROC (%)")
    assert (
        "Selection: `last`" in text
        and "pretrained (`hub:timm/x`)" in text
        and "random-init (`random:0`)" in text
    )
    header = next(line for line in lines if line.startswith("| backbone"))
    assert header == "| backbone | weights | selection | CIFAR-10 | MVTec-AD | VisA |"
    small = next(line for line in lines if line.startswith(f"| {S} | pretrained"))
    assert f"| {100 * np.mean([0.991, 0.953, 0.877]):.1f} / 98.7 |" in small
    assert "| 92.5 / 94.4* |" in small
    assert "| 97.0 / 97.7 |" in small
    rnd = next(line for line in lines if "random-init | last" in line)
    assert "/ –" in rnd
    body = [line for line in lines if line.startswith("| vit_")]
    assert [line.split(" | ")[0] for line in body] == [f"| {S}", f"| {S}", f"| {B}"]  # S before B
    assert "Failed classes (not in the means):" in text
    assert f"- visa / pcb2 ({S}, pretrained, seed 0): TrainingError: NaN loss" in text
    assert "traceback" not in text
    plain = render_table(full_shot, datasets=["visa", "mvtec_ad"], digits=2)
    assert (
        "| backbone | weights | selection | VisA | MVTec-AD |" in plain
        and " / " not in plain.split("\n\n")[1]
    )


def test_csv_layout(full_shot):
    text = render_table(full_shot, fmt="csv", with_paper=True, selection=["last", "best_on_test"])
    table = pd.read_csv(io.StringIO(text))
    assert list(table.columns[:6]) == ["backbone", "weights", "weights_id", "variant", "selection", "metric"]
    small = table[(table.backbone == S) & (table.weights == "pretrained") & (table.selection == "last")].iloc[
        0
    ]
    assert small["MVTec-AD"] == pytest.approx(100 * np.mean([0.991, 0.953, 0.877]), abs=1e-9)  # not rounded
    assert small["MVTec-AD paper"] == 98.7
    assert small["failed"] == "visa/pcb2"
    assert set(table.selection) == {"last", "best_on_test"}


def test_works_on_a_frame_read_from_the_report_store():
    from storage.metric_row import MetricRow
    from storage.reports import ReportStore

    store = ReportStore(f"memory://tables-{uuid.uuid4().hex}")
    common = dict(dataset="mpdd", backbone=B, weights="hub:timm/vit_base_patch14_dinov2.lvd142m",
                  views="clean+noise_all+noise_random", epochs=160, top_k=10, metric="image_auroc")  # fmt: skip
    rows = [
        MetricRow(**row_config(), run_id="a", class_name=c, category=c, value=v, **common)
        for c, v in [("tubes", 0.97), ("bracket_white", 0.99)]
    ]
    rows.append(
        MetricRow.failed(
            **row_config(),
            run_id="a",
            class_name="metal_plate",
            category="metal_plate",
            error="OOM",
            **common,
        )
    )
    store.write_run("a", rows)
    metrics = store.read_metrics()
    text = render_table(metrics, with_paper=True)
    assert "| 98.0 / 98.0* |" in text
    assert "- mpdd / metal_plate" in text
    store.fs.rm(store.root, recursive=True)


def test_bad_input():
    with pytest.raises(ValueError, match="lacks columns"):
        cell_means(pd.DataFrame({"value": [1.0]}))
    with pytest.raises(ValueError, match="fmt"):
        render_table(frame([row("mvtec_ad", "bottle", 0.9)]), fmt="html")
    empty = render_table(frame([row("mvtec_ad", "bottle", 0.9)]), metric="aupro")
    assert "no ok rows" in empty


def test_variants_are_rows_and_each_suite_keeps_its_latest_run(tmp_path):
    """Two variants of one class are two table rows (no 'different configurations' error), and the same
    configuration run by two suites keeps its row in each."""
    from storage.metric_row import MetricRow
    from storage.reports import ReportStore

    store = ReportStore(str(tmp_path / "r"))
    common = dict(dataset="mvtec_ad", backbone=B, weights="hub:timm/vit_base_patch14_dinov2.lvd142m",
                  epochs=160, top_k=10, metric="image_auroc", class_name="bottle", category="bottle")  # fmt: skip
    views = ("clean+noise_all", "clean+noise_all+noise_random")
    store.write_run("t5", [MetricRow(**row_config(), run_id="t5", views=v, value=0.9 + i / 100, suite="table5",
                                     variant=f"views={v}", **common) for i, v in enumerate(views)])  # fmt: skip
    store.write_run(
        "t1", [MetricRow(**row_config(), run_id="t1", views=views[1], value=0.5, suite="table1", **common)]
    )
    frame = store.read_metrics()
    text = render_table(frame)
    assert "| variant |" in text
    assert f"| views={views[0]} | last | 90.0 |" in text and f"| views={views[1]} | last | 91.0 |" in text
    assert "| last | 50.0 |" in text  # table1's run of the same configuration is not replaced by table5's
    assert "| 91.0 |" not in render_table(frame, suite="table1")
