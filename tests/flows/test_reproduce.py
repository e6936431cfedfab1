"""The `reproduce-all` flow, called directly against the session's local Prefect server.

Uses the `smoke` suite (quickstart brick, random-init ViT-S at 56 px, 1 epoch: the timm default init, so the
backbone's blocks contribute almost nothing; these tests exercise the plumbing, not the features). Runs:
- the same suite twice on one store: the second run extracts nothing, trains nothing (the class result is read
  back from the cache), writes the same values and takes at most 0.2x the first run's time (timed inside the flow);
- a two-class suite, then the same with one class's preset changed: only that class trains again;
- the smoke suite with its cached record corrupted: the class trains again and the record is rewritten;
- a two-class suite whose second class cannot train (sigma=1e30 gives a NaN loss -> TrainingError) plus a
  dataset with no root: the flow writes the good rows and the failed row, then ends Failed naming both;
- the suite on an existing Dask cluster named by DASK_SCHEDULER_ADDRESS.
- a class task whose training hangs, on an in-process cluster: `task_timeout_s` stops it and the flow ends
  Failed naming its timeout.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

import pytest

from flows.suites import HOW_TO_GET, Suite, SuiteEntry, get_suite
from storage.reports import ReportStore
from tests.fixtures.services import thread_cluster

pytestmark = pytest.mark.slow

SMOKE = get_suite("smoke").entries[0]


def _store_files(root: Path) -> dict[str, int]:
    """Every file under the feature store root, with its modification time (ns)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    """The module's feature store root: empty before the first run of this module."""
    return tmp_path_factory.mktemp("stores")


@pytest.fixture(scope="module")
def two_runs(prefect_api, data_home, store_root, tmp_path_factory):
    """`reproduce-all` on smoke, twice on the same store; each run's summary, wall time and store files after."""
    from flows.reproduce import reproduce_all

    reports = tmp_path_factory.mktemp("reports-rerun")
    runs = []
    for _ in range(2):
        started = time.perf_counter()
        summary = reproduce_all(suite="smoke", reports=str(reports), store=str(store_root))
        seconds = time.perf_counter() - started
        runs.append({"summary": summary, "seconds": seconds, "files": _store_files(store_root)})
    print(
        f"\nreproduce-all smoke: first run {runs[0]['seconds']:.1f} s, second run {runs[1]['seconds']:.1f} s"
    )
    return ReportStore(str(reports)), runs


def test_second_run_trains_nothing_and_is_fast(two_runs, record_property):
    reports, (first, second) = two_runs
    assert (first["summary"]["trained"], first["summary"]["reused"]) == (1, 0)
    assert (second["summary"]["trained"], second["summary"]["reused"]) == (0, 1)
    record_property("first_flow_s", round(first["summary"]["seconds"], 2))
    record_property("second_flow_s", round(second["summary"]["seconds"], 2))
    assert second["summary"]["seconds"] <= 0.2 * first["summary"]["seconds"], (
        first["summary"]["seconds"],
        second["summary"]["seconds"],
    )
    # every row of the rerun: the first run's value, marked reused, pointing at the run that computed it
    columns = ["class_name", "selection", "metric", "epoch", "value"]
    one, two = (
        reports.read_metrics(run_id=r["summary"]["run_id"]).sort_values(columns[:4]).reset_index(drop=True)
        for r in (first, second)
    )
    assert len(one) > 3 and len(one) == len(two)
    assert one[columns].equals(two[columns])
    assert set(one["class_name"]) == {"brick"} and set(one["status"]) == {"ok"}
    last = one[(one["metric"] == "image_auroc") & (one["selection"] == "last")]["value"]
    assert len(last) == 1 and 0.0 <= float(last.iloc[0]) <= 1.0
    assert "quickstart" in first["summary"]["table"]
    assert not one["reused"].any() and (one["computed_by_run_id"] == first["summary"]["run_id"]).all()
    assert two["reused"].all() and (two["computed_by_run_id"] == first["summary"]["run_id"]).all()
    assert (two["run_id"] == second["summary"]["run_id"]).all()
    scores = reports.read_scores(run_id=second["summary"]["run_id"])
    assert len(scores) and set(scores["run_id"]) == {second["summary"]["run_id"]}


def test_second_run_extracts_nothing(two_runs, record_property):
    _, (first, second) = two_runs
    record_property("first_run_s", round(first["seconds"], 1))
    record_property("second_run_s", round(second["seconds"], 1))
    [built] = first["summary"]["extractions"]
    assert not built["reused"] and built["images_extracted"] > 0
    [again] = second["summary"]["extractions"]
    assert again["url"] == built["url"]
    assert again["reused"] and again["images_extracted"] == 0
    # not one file of the store was written again (and none added)
    assert second["files"] == first["files"]
    assert any(name.endswith("zarr.json") for name in first["files"])


def test_progress_artifacts_reach_100_percent(two_runs):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    reports, (first, _) = two_runs
    [flow_run_id] = set(reports.read_metrics(run_id=first["summary"]["run_id"])["flow_run_id"])
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    progress = {a.key: a.data for a in artifacts if a.type == "progress"}
    assert progress == {"extraction-progress": 100.0, "training-progress": 100.0}


def test_task_timeout_from_the_estimate_or_the_parameter(two_runs):
    from flows.train import ClassJob, estimate_train_seconds, timeout_for
    from generalad.errors import ConfigError

    _, (first, _) = two_runs
    job = ClassJob(first["summary"]["extractions"][0]["url"], "brick", overrides=SMOKE.overrides())
    estimate = estimate_train_seconds(job)
    assert 0 < estimate < 60  # 1 epoch of a few 56 px images
    assert timeout_for(job) == max(1800.0, 30 * estimate)
    assert timeout_for(job, 5) == 5.0
    with pytest.raises(ConfigError):
        timeout_for(job, 0)


HUNG_TIMEOUT_S = 2.0  # far above the few ms Prefect spends in the scope before the task body, even under load
HUNG_LIMIT_S = 120.0  # a timeout that never fires fails the test at this bound instead of hanging it
# The hung training's state: module level, as the task is pickled to the in-process worker with a reference to
# `_hung_training` (a closure would be pickled by value: a copy of its list, and an Event does not pickle).
_RELEASE = threading.Event()
_STOPS: list[type] = []


def _hung_training(*args, **kwargs):
    """A training step that never ends by itself: it loops on `_RELEASE` until the task timeout's exception
    stops it (recorded in `_STOPS`), or fails at `HUNG_LIMIT_S`."""
    try:
        deadline = time.monotonic() + HUNG_LIMIT_S
        while time.monotonic() < deadline:
            if _RELEASE.wait(0.01):  # short waits: the injected exception is raised between two of them
                break
    except BaseException as exc:  # noqa: BLE001 - recorded, then raised on
        _STOPS.append(type(exc))
        raise
    raise AssertionError("the task timeout never stopped the hung training")


def test_a_hung_class_task_is_stopped_by_the_task_timeout(two_runs, store_root, tmp_path, monkeypatch):
    """`task_timeout_s` reaches the class task, whose training hangs: the timeout stops it, the suite fails naming it.

    The hang is a loop on an event in the task's training step, on an in-process Dask cluster: Prefect's timeout
    in a worker thread is an exception injected into that thread at whatever it runs then. Against a real training
    (and a 0.01 s timeout) that is anywhere in Prefect's engine, zarr or torch, fresh imports included: under load it
    hung the flow or lost the error. Here it always lands in the loop, which records it and lets it go on.
    """
    import flows.train
    from flows.reproduce import SuiteFailed, reproduce_all

    _RELEASE.clear()
    _STOPS.clear()
    monkeypatch.setattr(flows.train, "train_from_store", _hung_training)
    try:
        with thread_cluster() as cluster, pytest.raises(SuiteFailed) as failed:
            reproduce_all(
                suite="smoke",
                reports=str(tmp_path),
                store=str(store_root),
                dask_address=cluster.scheduler_address,
                retrain=True,  # the smoke class is cached by now and would not reach the cluster
                task_timeout_s=HUNG_TIMEOUT_S,
            )
    finally:
        _RELEASE.set()  # a hung training left behind ends now, not at its bound
    assert re.search(
        rf"class task brick.*(TimeoutError|TimedOut).* {HUNG_TIMEOUT_S:g}(\.0)? second", str(failed.value)
    ), str(failed.value)
    assert _STOPS and all(issubclass(stop, asyncio.CancelledError) for stop in _STOPS), _STOPS  # Prefect's


# ------------------------------------------------------------------ what reruns: a changed preset, a corrupt record


def _smoke_record(store_url: str) -> Path:
    """The cached record of the smoke suite's class on `store_url` (the job as the flow builds it)."""
    from flows.class_cache import ClassCache, default_cache_url
    from flows.fanout import _task_parameters
    from flows.train import ClassJob

    job = ClassJob(store_url, "brick", 0, None, SMOKE.overrides(), True)
    store_root = Path(store_url).parents[1]
    return Path(
        ClassCache(default_cache_url(str(store_root))).record_path(_task_parameters(job, "any", None))
    )


def test_a_corrupt_record_is_recomputed(two_runs, store_root, tmp_path):
    from flows.reproduce import reproduce_all

    reports, (first, _) = two_runs
    record = _smoke_record(first["summary"]["extractions"][0]["url"])
    text = record.read_bytes()
    i = text.index(b'"result":"') + 100  # inside the pickled rows, past their checksum
    corrupted = text[:i] + (b"A" if text[i : i + 1] != b"A" else b"B") + text[i + 1 :]
    record.write_bytes(corrupted)
    summary = reproduce_all(suite="smoke", reports=str(tmp_path / "reports"), store=str(store_root))
    assert (summary["trained"], summary["reused"]) == (1, 0)
    again = ReportStore(str(tmp_path / "reports")).read_metrics(metric="image_auroc", selection="last")
    before = reports.read_metrics(run_id=first["summary"]["run_id"], metric="image_auroc", selection="last")
    assert list(again["value"]) == list(before["value"]) and not again["reused"].any()
    assert record.read_bytes() != corrupted  # rewritten by the run that recomputed it


def _two_class_suite(grass_sigma: float | None) -> Suite:
    grass = SuiteEntry(
        dataset="quickstart",
        categories=("grass",),
        backbone=SMOKE.backbone,
        image_size=SMOKE.image_size,
        epochs=1,
        weights="random",
        sigma=grass_sigma,
        pixel_metrics=True,
    )
    return Suite("two", "brick and grass, smoke settings", (SMOKE, grass))


def test_a_changed_preset_field_reruns_exactly_its_classes(prefect_api, data_home, store_root, tmp_path):
    from flows import reproduce

    runs = []
    for sigma in (None, 0.5, 0.5):  # as before; grass's sigma changed; nothing changed
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(reproduce, "get_suite", lambda name, s=sigma: _two_class_suite(s))
            runs.append(reproduce.reproduce_all(suite="two", reports=str(tmp_path), store=str(store_root)))
    frames = [
        ReportStore(str(tmp_path)).read_metrics(run_id=r["run_id"], metric="image_auroc", selection="last")
        for r in runs
    ]
    reused = [dict(zip(f["class_name"], f["reused"], strict=True)) for f in frames]
    assert reused[1] == {"brick": True, "grass": False}  # only the class whose preset changed trained again
    assert (runs[1]["trained"], runs[1]["reused"]) == (1, 1)
    assert reused[2] == {"brick": True, "grass": True} and runs[2]["trained"] == 0
    assert set(frames[1]["sigma"]) == {0.25, 0.5}
    value = [dict(zip(f["class_name"], f["value"], strict=True)) for f in frames]
    assert value[1]["brick"] == value[0]["brick"] and value[2] == value[1]


# ------------------------------------------------------------------ a failing class and a missing dataset


@pytest.fixture(scope="module")
def failing_run(prefect_api, data_home, store_root, tmp_path_factory):
    """A suite of two quickstart classes, the second of which cannot train, and one dataset with no root."""
    from flows import reproduce

    suite = Suite(
        "two-classes",
        "brick trains; grass fails (sigma=1e30 -> NaN loss); mvtec_ad has no root",
        (
            SMOKE,
            SuiteEntry(
                dataset="quickstart",
                categories=("grass",),
                backbone=SMOKE.backbone,
                image_size=SMOKE.image_size,
                epochs=1,
                weights="random",
                sigma=1e30,
                label="sigma=1e30",
            ),
            SuiteEntry(dataset="mvtec_ad", categories=("bottle",)),
        ),
    )
    reports = tmp_path_factory.mktemp("reports-failing")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reproduce, "get_suite", lambda name: suite)
        state = reproduce.reproduce_all(
            suite="two-classes", reports=str(reports), store=str(store_root), return_state=True
        )
    return state, ReportStore(str(reports))


def test_failed_class_fails_the_flow_naming_it(failing_run):
    from flows.reproduce import SuiteFailed

    state, _ = failing_run
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, SuiteFailed)
    message = str(error)
    assert "2 failure(s)" in message
    assert "class task grass seed=0 sigma=1e30" in message
    assert "TrainingError" in message and "non-finite loss" in message
    assert "brick" not in message  # the good class is not named as a failure


def test_good_class_rows_and_failed_row_are_in_the_reports(failing_run):
    _, reports = failing_run
    [run_id] = reports.run_ids()
    frame = reports.read_metrics(run_id=run_id)
    ok = frame[frame["status"] == "ok"]
    assert set(ok["class_name"]) == {"brick"}
    assert {"image_auroc", "pixel_auroc", "aupro"} <= set(ok["metric"])
    assert ok["value"].notna().all()
    failed = frame[frame["status"] == "failed"]
    assert list(failed["class_name"]) == ["grass"]
    assert failed["value"].isna().all()
    assert "non-finite loss" in failed["error"].iloc[0]
    assert failed["sigma"].iloc[0] == pytest.approx(1e30)


def test_missing_dataset_is_named_with_how_to_get_it(failing_run):
    state, reports = failing_run
    message = str(state.result(raise_on_failure=False))
    assert "dataset mvtec_ad: no root set" in message
    assert HOW_TO_GET["mvtec_ad"] in message
    # the rest of the suite ran: quickstart rows, none of mvtec_ad
    frame = reports.read_metrics()
    assert set(frame["dataset"]) == {"quickstart"}


# ------------------------------------------------------------------ an existing Dask cluster


def test_existing_cluster_from_environment(prefect_api, data_home, store_root, tmp_path, monkeypatch):
    """DASK_SCHEDULER_ADDRESS names a running cluster: the class task runs there, no LocalCluster is made."""
    from flows.reproduce import reproduce_all

    with thread_cluster() as cluster:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        summary = reproduce_all(  # retrain: the smoke class is cached by now and would not reach the cluster
            suite="smoke", reports=str(tmp_path / "reports"), store=str(store_root), retrain=True
        )
        ran_here = set(cluster.scheduler.task_prefixes)
    assert any("train" in prefix for prefix in ran_here), ran_here
    frame = ReportStore(str(tmp_path / "reports")).read_metrics(
        run_id=summary["run_id"], metric="image_auroc"
    )
    assert set(frame["class_name"]) == {"brick"} and frame["value"].notna().all()
