"""The Parquet report store: round trips (local and memory://), filters, reruns, failed writes, temporaries,
the files themselves (schema columns, DuckDB, older schema versions)."""

from __future__ import annotations

import uuid

import duckdb
import fsspec
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from storage.metric_row import MetricRow, metric_table
from storage.report_schema import METRIC_SCHEMA
from storage.reports import ReportStore
from storage.score_rows import scores_from_arrays
from tests.fixtures.rows import BACKBONE, make_rows, row_config


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
    from storage.metric_row import metric_table
    from storage.report_schema import REPORT_SCHEMA_VERSION

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
