"""The Parquet report store: schema validation, round trips (local and memory://), reruns, failed writes, DuckDB."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta, timezone

import duckdb
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from storage.report_schema import (
    METRIC_SCHEMA,
    METRICS,
    SCORE_SCHEMA,
    MetricRow,
    ScoreRow,
    format_layers,
    format_views,
    metric_table,
    score_table,
    scores_from_arrays,
)
from storage.reports import ReportStore
from tests.fixtures.rows import row_config

BACKBONE = "vit_small_patch14_dinov2"


def make_rows(
    run_id: str, dataset: str = "mvtec_ad", n: int = 3, backbone: str = BACKBONE, **kw
) -> list[MetricRow]:
    """n classes x 2 selections x image_auroc, values with many digits (to catch any rounding)."""
    rows = []
    for i in range(n):
        for selection in ("last", "best_on_test"):
            rows.append(
                MetricRow(
                    **row_config(**{k: kw.pop(k) for k in list(kw) if k in row_config()}),
                    run_id=run_id,
                    dataset=dataset,
                    category=f"cat{i}",
                    backbone=backbone,
                    weights="hub:timm/vit_small_patch14_dinov2.lvd142m",
                    views="clean+noise_all+noise_random",
                    epochs=160,
                    top_k=10,
                    class_name=f"cat{i}",
                    metric="image_auroc",
                    value=0.9 + i / 100 + (selection == "best_on_test") / 1000 + 1e-9 * math.pi,
                    selection=selection,
                    epoch=159,
                    n_test=83,
                    n_anomalous=63,
                    **kw,
                )
            )
    return rows


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> ReportStore:
    if request.param == "local":
        yield ReportStore(str(tmp_path / "reports"))
    else:
        url = f"memory://reports-{uuid.uuid4().hex}"
        yield ReportStore(url)
        fs = fsspec.filesystem("memory")
        if fs.exists(url):
            fs.rm(url, recursive=True)


def all_files(store: ReportStore) -> list[str]:
    return sorted(store.fs.find(store.root)) if store.fs.exists(store.root) else []


def visible_files(store: ReportStore) -> list[str]:
    return [p for p in all_files(store) if p.endswith(".parquet")]


# ------------------------------------------------------------------ schema


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


# ------------------------------------------------------------------ store


def test_round_trip(store):
    rows = make_rows("run-a") + make_rows("run-a", dataset="visa")
    scores = scores_from_arrays(
        run_id="run-a", dataset="visa", backbone=BACKBONE, class_name="cat0", category="cat0",
        image_ids=[f"img{i}" for i in range(5)], scores=np.linspace(-2, 2, 5) + 1e-12, labels=[0, 0, 1, 1, 1],
    )  # fmt: skip
    result = store.write_run("run-a", rows, scores)
    assert len(result.written) == 3 and result.removed == ()
    files = visible_files(store)
    assert any("/metrics/dataset=mvtec_ad/backbone=vit_small_patch14_dinov2/run-a-" in f for f in files)
    assert any("/scores/dataset=visa/backbone=vit_small_patch14_dinov2/run-a-" in f for f in files)

    got = store.read_metrics().sort_values(["dataset", "class_name", "selection"]).reset_index(drop=True)
    want = (
        metric_table(rows)
        .to_pandas()
        .sort_values(["dataset", "class_name", "selection"])
        .reset_index(drop=True)
    )
    assert list(got.columns) == METRIC_SCHEMA.names
    pd.testing.assert_frame_equal(got, want)
    # values exactly as written: never rounded
    assert got["value"].tolist() == want["value"].tolist()

    got_scores = store.read_scores()
    assert got_scores["score"].tolist() == scores.column("score").to_pylist()
    assert got_scores["label"].dtype == np.int8
    assert store.run_ids() == ["run-a"]


def test_read_filters(store):
    store.write_run("a", make_rows("a") + make_rows("a", dataset="visa"))
    store.write_run("b", make_rows("b", shots=4, seed=10))
    assert set(store.read_metrics(dataset="visa")["dataset"]) == {"visa"}
    assert len(store.read_metrics(dataset=["visa", "mvtec_ad"], run_id="a")) == 12
    assert len(store.read_metrics(shots=None)) == 12
    assert len(store.read_metrics(shots=4, selection="last")) == 3
    high = store.read_metrics(where=pc.field("value") > 0.915, columns=["class_name", "value"])
    assert list(high.columns) == ["class_name", "value"] and (high["value"] > 0.915).all()
    with pytest.raises(ValueError, match="unknown metrics columns"):
        store.read_metrics(colour="red")


def test_empty_store_reads_empty_frames(store):
    assert list(store.read_metrics().columns) == METRIC_SCHEMA.names
    assert store.read_scores().empty
    assert store.run_ids() == []


def test_rerun_replaces_only_its_own_rows(store):
    store.write_run("keep", make_rows("keep", dataset="visa"))
    store.write_run("redo", make_rows("redo", n=3) + make_rows("redo", dataset="mpdd", n=2))
    first = set(visible_files(store))
    result = store.write_run("redo", make_rows("redo", n=1))
    assert len(result.removed) == 2 and set(result.removed) <= first
    frame = store.read_metrics()
    assert len(frame[frame.run_id == "keep"]) == 6
    redo = frame[frame.run_id == "redo"]
    assert len(redo) == 2 and set(redo.dataset) == {"mvtec_ad"}
    # the other run's file is the very same file
    assert {f for f in first if "/keep-" in f} == {f for f in visible_files(store) if "/keep-" in f}


def test_run_ids_that_share_a_prefix_stay_apart(store):
    store.write_run("a", make_rows("a"))
    store.write_run("a-b", make_rows("a-b"))
    store.write_run("a", make_rows("a", n=1))
    counts = store.read_metrics().groupby("run_id").size().to_dict()
    assert counts == {"a": 2, "a-b": 6}
    store.delete_run("a")
    assert store.run_ids() == ["a-b"]


def test_write_rejects_rows_of_another_run(store):
    with pytest.raises(ValueError, match="other run ids"):
        store.write_run("a", make_rows("b"))
    with pytest.raises(ValueError, match="nothing to write"):
        store.write_run("a", [])
    assert visible_files(store) == []


def test_failed_commit_leaves_no_file(store, monkeypatch):
    def broken_commit(tmp, path):
        # fully staged: a temporary file on a local disk, the encoded bytes for an object store (memory://)
        assert store.fs.exists(tmp) if isinstance(tmp, str) else tmp.startswith(b"PAR1")
        raise OSError("disk vanished")

    monkeypatch.setattr(store, "_commit", broken_commit)
    with pytest.raises(OSError, match="disk vanished"):
        store.write_run("a", make_rows("a"))
    assert all_files(store) == []
    assert store.read_metrics().empty


def test_failure_midway_rolls_back_and_keeps_older_rows(store, monkeypatch):
    store.write_run("a", make_rows("a"))
    before = visible_files(store)
    real_commit = store._commit
    calls = {"n": 0}

    def second_commit_fails(tmp, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        real_commit(tmp, path)

    monkeypatch.setattr(store, "_commit", second_commit_fails)
    new_rows = make_rows("a", n=2) + make_rows("a", dataset="visa", n=2)
    with pytest.raises(RuntimeError, match="killed"):
        store.write_run("a", new_rows)
    assert visible_files(store) == before  # the first new file was removed again, the old one kept
    assert not [p for p in all_files(store) if p.endswith(".tmp")]
    assert len(store.read_metrics()) == 6


def test_exception_while_writing_the_temporary_file(store, monkeypatch):
    def exploding_write(table, where, **kw):
        where.write(b"PAR1 half")
        raise MemoryError("out of memory")

    monkeypatch.setattr(pq, "write_table", exploding_write)
    with pytest.raises(MemoryError):
        store.write_run("a", make_rows("a"))
    assert all_files(store) == []


def test_temporary_files_are_invisible_to_readers(store):
    store.write_run("a", make_rows("a"))
    folder = visible_files(store)[0].rsplit("/", 1)[0]
    with store.fs.open(f"{folder}/.b-{uuid.uuid4().hex}.parquet.tmp", "wb") as handle:
        handle.write(b"garbage, as a crashed writer leaves it")
    assert len(store.read_metrics()) == 6
    assert store.run_ids() == ["a"]
    assert len(store.remove_temporaries()) == 1


def test_report_files_hold_the_schema_columns_and_no_pandas_metadata(tmp_path):
    """(That no secret of the environment reaches a report file: tests/reliability/test_safety.py.)"""
    store = ReportStore(str(tmp_path / "r"))
    rows = make_rows("a", n=1) + [
        MetricRow.failed(
            **row_config(),
            error="could not reach the store",
            run_id="a",
            dataset="mvtec_ad",
            backbone=BACKBONE,
            weights="hub:x",
            views="clean+noise_all",
            epochs=1,
            top_k=10,
            class_name="cable",
        )  # fmt: skip
    ]
    store.write_run("a", rows)
    for path in visible_files(store):
        meta = pq.read_schema(path).metadata or {}
        assert b"pandas" not in meta
        assert set(pq.read_schema(path).names) == set(METRIC_SCHEMA.names) - {"dataset", "backbone"}
    failed = store.read_metrics(status="failed")
    assert (
        failed["class_name"].tolist() == ["cable"] and failed["error"].str.contains("could not reach").all()
    )


def test_duckdb_reads_the_same_rows(tmp_path):
    store = ReportStore(str(tmp_path / "reports"))
    store.write_run("a", make_rows("a") + make_rows("a", dataset="visa"))
    store.write_run("b", make_rows("b", backbone="vit_base_patch14_dinov2"))
    ours = store.read_metrics()
    theirs = duckdb.sql(
        f"select * from read_parquet('{tmp_path}/reports/metrics/**/*.parquet', hive_partitioning=true)"
    ).df()
    assert set(theirs.columns) == set(ours.columns)
    key = ["run_id", "dataset", "backbone", "class_name", "selection"]
    cols = [*key, "value", "epoch", "n_test", "pretrained", "config_hash", "weights"]
    a = ours[cols].sort_values(key).reset_index(drop=True)
    b = theirs[cols].sort_values(key).reset_index(drop=True)
    assert a.astype(str).equals(b.astype(str))
    assert a["value"].tolist() == b["value"].tolist()
    stamps_ours = sorted(pd.to_datetime(ours["created_at"], utc=True))
    stamps_duck = sorted(pd.to_datetime(theirs["created_at"], utc=True))
    assert stamps_ours == stamps_duck
    mean = duckdb.sql(
        f"select avg(value) from read_parquet('{tmp_path}/reports/metrics/**/*.parquet', hive_partitioning=true) "
        "where dataset = 'visa' and selection = 'last'"
    ).fetchall()[0][0]
    assert mean == pytest.approx(ours.query("dataset == 'visa' and selection == 'last'")["value"].mean())


def test_files_of_an_older_schema_read_with_nulls(store):
    """A file written before a column existed reads with that column null (schema evolution by addition)."""
    store.write_run("new", make_rows("new", n=1))
    old = metric_table(make_rows("old", n=1)).drop_columns(["dataset", "backbone", "device", "error"])
    folder = f"{store.root}/metrics/dataset=mvtec_ad/backbone={BACKBONE}"
    with store.fs.open(f"{folder}/old-{uuid.uuid4().hex}.parquet", "wb") as handle:
        pq.write_table(old, handle)
    frame = store.read_metrics(run_id="old")
    assert len(frame) == 2 and frame["device"].isna().all() and (frame["dataset"] == "mvtec_ad").all()
    assert list(frame.columns) == METRIC_SCHEMA.names


# the columns schema version 2 added; a version-1 file has none of them
_V2_COLUMNS = (
    "preset", "batch_size", "weight_decay", "lr_min_factor", "epoch_subset", "exclude_fixed_points",
    "disc_blocks", "disc_heads", "mlp_dim", "dropout", "suite", "variant",
)  # fmt: skip


def test_version_1_files_stay_readable(tmp_path):
    """A report file written by schema version 1 (no suite/variant/preset columns) reads beside a v2 run, its
    missing columns as null, and renders as the plain variant."""
    import pyarrow.parquet as pq

    from generalad.apps.report_tables import render_table
    from storage.report_schema import REPORT_SCHEMA_VERSION, metric_table

    assert REPORT_SCHEMA_VERSION == "3"
    store = ReportStore(str(tmp_path / "reports"))
    v3_columns = ["reused", "computed_by_run_id"]
    old = metric_table(make_rows("old-run", n=2)).drop_columns(
        ["dataset", "backbone", *_V2_COLUMNS, *v3_columns]
    )
    old = old.replace_schema_metadata({b"generalad.report_schema_version": b"1"})
    folder = tmp_path / "reports" / "metrics" / "dataset=mvtec_ad" / f"backbone={BACKBONE}"
    folder.mkdir(parents=True)
    pq.write_table(old, folder / f"old-run-{'a' * 32}.parquet")
    store.write_run("new-run", make_rows("new-run", n=2, suite="table1"))

    frame = store.read_metrics()
    v1 = frame[frame["run_id"] == "old-run"]
    assert len(v1) == 4 and v1["value"].notna().all() and (v1["sigma"] == 0.25).all()
    assert v1[list(_V2_COLUMNS) + v3_columns].isna().all().all()
    v2 = frame[frame["run_id"] == "new-run"]
    assert set(v2["suite"]) == {"table1"} and set(v2["variant"]) == {""} and (v2["batch_size"] == 16).all()
    assert not v2["reused"].any() and (v2["computed_by_run_id"] == "new-run").all()
    # both runs have distinct config hashes (v2 hashes the whole preset), so each is its own latest run
    text = render_table(frame[frame["run_id"] == "old-run"], selection="last")
    assert "| 90.5 |" in text  # mean of 0.90 and 0.91, rounded


def test_config_hash_covers_the_whole_preset():
    base = make_rows("r", n=1)[0]
    for change in ({"batch_size": 8}, {"weight_decay": 0.0}, {"epoch_subset": 250}, {"dropout": 0.2},
                   {"mlp_dim": 1024}, {"exclude_fixed_points": True}, {"disc_blocks": 2}, {"lr_min_factor": 0.1}):  # fmt: skip
        other = make_rows("r", n=1, **change)[0]
        assert other.config_hash != base.config_hash, change
    assert (
        make_rows("r", n=1, suite="x", variant="v")[0].config_hash == base.config_hash
    )  # labels are not config
