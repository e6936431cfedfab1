"""The report schema: MetricRow / ScoreRow validation and defaults, the Arrow schemas, the formatting helpers and
the configuration hash (no store involved)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from storage.metric_row import MetricRow, metric_table
from storage.report_schema import METRIC_SCHEMA, METRICS, SCORE_SCHEMA
from storage.report_values import format_layers, format_views
from storage.score_rows import ScoreRow, score_table, scores_from_arrays
from tests.fixtures.rows import BACKBONE, make_rows, row_config


def test_metric_row_fields_match_schema():
    assert metric_table(make_rows("r", n=1)).schema.equals(METRIC_SCHEMA)
    for name in (
        "run_id",
        "created_at",
        "pretrained",
        "selection",
        "metric_impl",
        "value",
        "status",
        "error",
    ):
        assert name in METRIC_SCHEMA.names
    assert METRIC_SCHEMA.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert METRIC_SCHEMA.field("value").type == pa.float64()
    assert SCORE_SCHEMA.field("label").type == pa.int8()


def test_metric_row_fills_defaults():
    row = make_rows("r", n=1)[0]
    assert row.pretrained is True
    assert row.metric_impl == "sklearn.roc_auc_score"
    assert row.generalad_version
    assert len(row.config_hash) == 16
    assert row.created_at.tzinfo is not None
    rnd = MetricRow(
        **row_config(),
        run_id="r", dataset="cifar10", backbone=BACKBONE, weights="random:0", views="clean+noise_all",
        epochs=1, top_k=1369, class_name="airplane", metric="image_auroc", value=0.5,
    )  # fmt: skip
    assert rnd.pretrained is False
    assert rnd.config_hash != row.config_hash


@pytest.mark.parametrize(
    "change, match",
    [
        ({"metric": "image_aucroc"}, "unknown metric"),
        ({"selection": "best"}, "selection"),
        ({"status": "maybe"}, "status"),
        ({"views": "clean+noise_everything"}, "views"),
        ({"layers": "last"}, "layers"),
        ({"weights": "/tmp/model.safetensors"}, "weights"),
        ({"weights": "random:0", "pretrained": True}, "contradicts"),
        ({"run_id": "../escape"}, "run_id"),
        ({"dataset": "mvtec ad"}, "dataset"),
        ({"value": float("nan")}, "value"),
        ({"value": None}, "value"),
        ({"class_name": "mean"}, "aggregate"),
        ({"created_at": datetime(2026, 1, 1)}, "timezone"),
        ({"epochs": 1.5}, "epochs"),
        ({"shots": 0}, "shots"),
        ({"error": "should not be here"}, "no error"),
        ({"batch_size": 0}, "batch_size"),
        ({"epoch_subset": 0}, "epoch_subset"),
        ({"dropout": None}, "dropout"),
        ({"exclude_fixed_points": "no"}, "exclude_fixed_points"),
        ({"preset": ""}, "preset"),
        ({"variant": None}, "variant"),
    ],
)
def test_metric_row_rejects_bad_values(change, match):
    kw = dict(
        run_id="r", dataset="mvtec_ad", backbone=BACKBONE, weights="hub:x", views="clean+noise_all",
        epochs=1, top_k=10, class_name="bottle", metric="image_auroc", value=0.5,
    )  # fmt: skip
    kw = row_config() | kw | change
    with pytest.raises(ValueError, match=match):
        MetricRow(**kw)


def test_failed_row_and_redaction(monkeypatch):
    monkeypatch.setenv("MY_API_TOKEN", "s3cr3t-value-123")
    row = MetricRow.failed(
        **row_config(),
        error=RuntimeError("boom with s3cr3t-value-123 and s3://user:pw@bucket/x"),
        run_id="r", dataset="mvtec_ad", backbone=BACKBONE, weights="hub:x", views="clean+noise_all",
        epochs=1, top_k=10, class_name="bottle",
    )  # fmt: skip
    assert row.status == "failed" and row.value is None
    assert "s3cr3t" not in row.error and "pw@" not in row.error
    assert row.error.startswith("RuntimeError: boom")
    with pytest.raises(ValueError, match="error message"):
        MetricRow(
            **row_config(),
            run_id="r", dataset="d", backbone="b", weights="hub:x", views="clean+noise_all", epochs=1,
            top_k=10, class_name="c", metric="image_auroc", value=None, status="failed",
        )  # fmt: skip


def test_created_at_is_converted_to_utc():
    cet = timezone(timedelta(hours=1))
    row = make_rows("r", n=1, created_at=datetime(2026, 1, 1, 13, 0, tzinfo=cet))[0]
    assert row.created_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert row.created_at.utcoffset() == timedelta(0)


def test_every_metric_has_an_implementation_label():
    for metric in METRICS:
        row = make_rows("r", n=1)[0]
        kw = row.as_dict() | {"metric": metric, "metric_impl": None, "config_hash": None}
        assert MetricRow(**kw).metric_impl


def test_format_helpers():
    assert format_layers((-1,)) == "-1"
    assert format_layers([-4, -1]) == "-4,-1"
    assert format_views(["clean", "noise_all"]) == "clean+noise_all"
    with pytest.raises(ValueError):
        format_views(["clean", "blur"])


def test_score_table_validation():
    good = scores_from_arrays(
        run_id="r", dataset="visa", backbone=BACKBONE, class_name="candle",
        image_ids=["a", "b"], scores=[0.25, -1.5], labels=[0, 1],
    )  # fmt: skip
    assert good.schema.equals(SCORE_SCHEMA)
    frame = good.to_pandas()
    assert score_table(frame).equals(good)
    with pytest.raises(ValueError, match="label"):
        score_table(frame.assign(label=[0, 2]))
    with pytest.raises(ValueError, match="selection"):
        score_table(frame.assign(selection=["last", "oracle"]))
    with pytest.raises(ValueError, match="missing"):
        score_table(frame.drop(columns=["score"]))
    with pytest.raises(ValueError, match="'score' has nulls"):
        score_table(frame.assign(score=[np.nan, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        score_table(
            pa.Table.from_pandas(frame, preserve_index=False, schema=SCORE_SCHEMA).set_column(
                SCORE_SCHEMA.get_field_index("score"), "score", pa.array([np.inf, 1.0])
            )
        )
    with pytest.raises(ValueError, match="label"):
        ScoreRow(run_id="r", dataset="d", backbone="b", class_name="c", image_id="i", score=0.1, label=3)


def test_config_hash_covers_the_whole_preset():
    base = make_rows("r", n=1)[0]
    for change in ({"batch_size": 8}, {"weight_decay": 0.0}, {"epoch_subset": 250}, {"dropout": 0.2},
                   {"mlp_dim": 1024}, {"exclude_fixed_points": True}, {"disc_blocks": 2}, {"lr_min_factor": 0.1}):  # fmt: skip
        other = make_rows("r", n=1, **change)[0]
        assert other.config_hash != base.config_hash, change
    assert (
        make_rows("r", n=1, suite="x", variant="v")[0].config_hash == base.config_hash
    )  # labels are not config
