"""Concurrent report writers (threads, and real processes) lose no rows, and a rerun of a run id replaces its own
rows only: every writer writes into the same two partitions, another run is there before they start."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pytest

from storage.metric_row import MetricRow
from storage.reports import ReportStore
from storage.score_rows import scores_from_arrays
from tests.fixtures.processes import fork_context
from tests.fixtures.rows import row_config

DATASETS = ("mvtec_ad", "visa")
N_CLASSES = 4
TIMEOUT_S = 120


def _value(run_id: str, c: int, attempt: int) -> float:
    """A value particular to the run, the class and the attempt (0: the first write, 1: the rerun)."""
    return (sum(map(ord, run_id)) % 89 + c) / 1000 + attempt


def _rows(run_id: str, attempt: int) -> list[MetricRow]:
    return [
        MetricRow(
            **row_config(),
            run_id=run_id,
            dataset=DATASETS[c % 2],  # every writer writes into the same partitions
            backbone="vit_small_patch14_dinov2",
            weights="random:0",
            views="clean+noise_all",
            epochs=1,
            top_k=10,
            class_name=f"c{c}",
            metric="image_auroc",
            value=_value(run_id, c, attempt),
        )
        for c in range(N_CLASSES)
    ]


def write_runs(url: str, writer: int, n_runs: int, barrier=None) -> None:
    """Write `n_runs` runs from one writer, each then rerun with its scores (which replaces only its own rows)."""
    store = ReportStore(url)
    if barrier is not None:
        barrier.wait(timeout=TIMEOUT_S)  # start writing together
    for r in range(n_runs):
        run_id = f"w{writer}-r{r}"
        store.write_run(run_id, _rows(run_id, 0))
        scores = scores_from_arrays(
            run_id=run_id, dataset="visa", backbone="vit_small_patch14_dinov2", class_name="c1",
            image_ids=["a", "b"], scores=[0.25, 0.75], labels=[0, 1],
        )  # fmt: skip
        store.write_run(run_id, _rows(run_id, 1), scores)


def _in_threads(url: str, n_writers: int, n_runs: int) -> None:
    with ThreadPoolExecutor(n_writers) as pool:
        for future in [pool.submit(write_runs, url, w, n_runs) for w in range(n_writers)]:
            future.result()


def _in_processes(url: str, n_writers: int, n_runs: int) -> None:
    ctx = fork_context()
    barrier = ctx.Barrier(n_writers)
    procs = [ctx.Process(target=write_runs, args=(url, w, n_runs, barrier)) for w in range(n_writers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=TIMEOUT_S)
        assert proc.exitcode == 0


# (how the writers run, file system, writers): processes only on a local disk (memory:// is per process)
CASES = {"threads-local": (_in_threads, "local", 6), "threads-memory": (_in_threads, "memory", 6),
         "processes-local": (_in_processes, "local", 2)}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_writers_lose_no_rows_and_reruns_replace_only_their_own(tmp_path, case):
    run, fs_kind, n_writers = CASES[case]
    n_runs = 4
    url = str(tmp_path / "reports") if fs_kind == "local" else f"memory://writers-{uuid.uuid4().hex}"
    ReportStore(url).write_run("keep-r0", _rows("keep-r0", 0))  # another run, there before the writers
    run(url, n_writers, n_runs)
    store = ReportStore(url)
    frame = store.read_metrics()
    got = {(r, c): v for r, c, v in frame[["run_id", "class_name", "value"]].itertuples(index=False)}
    assert len(got) == len(frame)  # no duplicated row
    expected = {(f"w{w}-r{r}", f"c{c}"): _value(f"w{w}-r{r}", c, 1) for w in range(n_writers) for r in range(n_runs)
                for c in range(N_CLASSES)}  # fmt: skip
    expected |= {("keep-r0", f"c{c}"): _value("keep-r0", c, 0) for c in range(N_CLASSES)}
    assert got == expected
    assert len(store.read_scores()) == n_writers * n_runs * 2
    assert store.remove_temporaries() == []
    if fs_kind == "memory":
        fsspec.filesystem("memory").rm(store.root, recursive=True)
