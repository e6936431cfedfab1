"""Concurrent writers of different run ids lose no rows (threads, and separate processes)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pytest

from storage.metric_row import MetricRow
from storage.reports import ReportStore
from storage.score_rows import scores_from_arrays
from tests.fixtures.rows import row_config

DATASETS = ("mvtec_ad", "visa")


def _rows(run_id: str, n_classes: int) -> list[MetricRow]:
    return [
        MetricRow(
            **row_config(),
            run_id=run_id,
            dataset=DATASETS[i % 2],  # every writer writes into the same partitions
            backbone="vit_small_patch14_dinov2",
            weights="random:0",
            views="clean+noise_all",
            epochs=1,
            top_k=10,
            class_name=f"c{i}",
            metric="image_auroc",
            value=i / n_classes,
        )
        for i in range(n_classes)
    ]


def write_runs(url: str, writer: int, n_runs: int, n_classes: int, barrier=None) -> None:
    """Write `n_runs` runs (each with a rerun) from one writer; module level so a spawned process can run it."""
    store = ReportStore(url)
    if barrier is not None:
        barrier.wait(timeout=60)  # start writing together, after the (slow) imports of a spawned process
    for r in range(n_runs):
        run_id = f"w{writer}-r{r}"
        store.write_run(run_id, _rows(run_id, n_classes))
        scores = scores_from_arrays(
            run_id=run_id, dataset="visa", backbone="vit_small_patch14_dinov2", class_name="c1",
            image_ids=["a", "b", "c"], scores=[0.1, 0.2, 0.3], labels=[0, 1, 1],
        )  # fmt: skip
        store.write_run(run_id, _rows(run_id, n_classes), scores)  # rerun: replaces its own files only


@pytest.mark.parametrize("fs_kind", ["local", "memory"])
def test_threads_lose_no_rows(tmp_path, fs_kind):
    url = str(tmp_path / "reports") if fs_kind == "local" else f"memory://threads-{uuid.uuid4().hex}"
    n_writers, n_runs, n_classes = 6, 4, 5
    with ThreadPoolExecutor(n_writers) as pool:
        futures = [pool.submit(write_runs, url, w, n_runs, n_classes) for w in range(n_writers)]
        for future in futures:
            future.result()
    store = ReportStore(url)
    frame = store.read_metrics()
    assert len(frame) == n_writers * n_runs * n_classes
    assert frame.groupby("run_id").size().eq(n_classes).all()
    assert len(store.read_scores()) == n_writers * n_runs * 3
    assert store.remove_temporaries() == []
    if fs_kind == "memory":
        fsspec.filesystem("memory").rm(store.root, recursive=True)


# Writers in separate processes (and reruns replacing only their own rows): tests/reliability/test_concurrency.py.
