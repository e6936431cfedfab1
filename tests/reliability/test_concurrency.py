"""Concurrent runs: two extractions of one store key end with one complete, valid store built once; two report
writers lose no rows; a rerun of a run id replaces its own rows only. Real processes (forked, so they start fast)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from storage.extraction import _writer_lock, plan_store
from storage.report_schema import MetricRow, scores_from_arrays
from storage.reports import ReportStore
from tests.fixtures.processes import fork_context
from tests.fixtures.rows import row_config
from tests.fixtures.stores import TINY_SPEC, extract, published, store_values

TIMEOUT_S = 120


def _extract_child(adapter, root: str, out: str, barrier=None) -> None:
    if barrier is not None:
        barrier.wait(timeout=TIMEOUT_S)
    result = extract(adapter, root)
    Path(out).write_text(json.dumps({"url": result.url, "images_extracted": result.images_extracted}))


def _run(procs) -> None:
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=TIMEOUT_S)
        assert proc.exitcode == 0


def test_two_processes_extracting_one_store_build_it_once(tiny_adapter, tmp_path) -> None:
    reference = store_values(extract(tiny_adapter, tmp_path / "reference").url)
    root = str(tmp_path / "stores")
    ctx = fork_context()
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    _run([ctx.Process(target=_extract_child, args=(tiny_adapter, root, str(o), barrier)) for o in outs])
    results = [json.loads(o.read_text()) for o in outs]
    assert results[0]["url"] == results[1]["url"]
    assert sorted(r["images_extracted"] for r in results) == [0, 8]  # one did the work, the other reused it
    assert len(published(root)) == 1
    got = store_values(results[0]["url"])
    for name, expected in reference.items():
        assert (got[name] == expected).all(), name


def test_a_second_writer_waits_for_the_lock(tiny_adapter, tmp_path) -> None:
    root = str(tmp_path / "stores")
    url, _ = plan_store(tiny_adapter, TINY_SPEC, root)
    out = tmp_path / "out.json"
    child = fork_context().Process(target=_extract_child, args=(tiny_adapter, root, str(out)))
    with _writer_lock(url):
        child.start()
        time.sleep(1.5)
        assert child.is_alive() and not Path(url).exists()  # blocked before touching the store
    child.join(timeout=TIMEOUT_S)
    assert child.exitcode == 0 and json.loads(out.read_text())["images_extracted"] == 8


def _rows(run_id: str, attempt: int, n_classes: int = 4) -> list[MetricRow]:
    return [
        MetricRow(
            **row_config(),
            run_id=run_id,
            dataset=("mvtec_ad", "visa")[c % 2],  # every writer writes into the same two partitions
            backbone="vit_small_patch14_dinov2",
            weights="random:0",
            views="clean+noise_all",
            epochs=1,
            top_k=10,
            class_name=f"c{c}",
            metric="image_auroc",
            value=_value(run_id, c, attempt),
        )
        for c in range(n_classes)
    ]


def _value(run_id: str, c: int, attempt: int) -> float:
    return (sum(map(ord, run_id)) % 89 + c) / 1000 + attempt


def _report_child(url: str, writer: int, n_runs: int, barrier) -> None:
    store = ReportStore(url)
    barrier.wait(timeout=TIMEOUT_S)
    for r in range(n_runs):
        run_id = f"w{writer}-r{r}"
        store.write_run(run_id, _rows(run_id, 0))
        scores = scores_from_arrays(
            run_id=run_id, dataset="visa", backbone="vit_small_patch14_dinov2", class_name="c1",
            image_ids=["a", "b"], scores=[0.25, 0.75], labels=[0, 1],
        )  # fmt: skip
        store.write_run(run_id, _rows(run_id, 1), scores)  # the rerun: replaces this run's rows only


def test_report_writers_in_processes_lose_no_rows_and_reruns_replace_only_their_own(tmp_path) -> None:
    url = str(tmp_path / "reports")
    n_writers, n_runs = 2, 4
    ReportStore(url).write_run("keep-r0", _rows("keep-r0", 0))  # another run, there before the writers
    ctx = fork_context()
    barrier = ctx.Barrier(n_writers)
    _run([ctx.Process(target=_report_child, args=(url, w, n_runs, barrier)) for w in range(n_writers)])
    frame = ReportStore(url).read_metrics()
    got = {(r, c): v for r, c, v in frame[["run_id", "class_name", "value"]].itertuples(index=False)}
    assert len(got) == len(frame)  # no duplicated row
    expected = {(f"w{w}-r{r}", f"c{c}"): _value(f"w{w}-r{r}", c, 1) for w in range(n_writers) for r in range(n_runs)
                for c in range(4)}  # fmt: skip
    expected |= {("keep-r0", f"c{c}"): _value("keep-r0", c, 0) for c in range(4)}
    assert got == expected
    assert len(ReportStore(url).read_scores()) == n_writers * n_runs * 2
