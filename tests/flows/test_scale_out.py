"""`reproduce-all` on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on 127.0.0.1, started
by the test with the project importable (PYTHONPATH) and the session's Prefect API in their environment, as a
worker machine would be set up (README "Scaling out").

- the smoke suite on the cluster gives the image AUROC of the LocalCluster run of the same seed, rows once;
- the same with the feature store and the reports on an S3 API (moto's server): the flow extracts into
  `s3://`, the workers train from it, the reports land there and DuckDB reads them back;
- a scheduler that does not answer fails the flow within seconds with `SchedulerUnreachable`;
- a worker SIGKILLed in the middle of the class task: the task runs again on the other worker, the flow
  succeeds, and the report has exactly one set of rows for the class (this test runs last: it kills a worker).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import duckdb
import pytest

from flows.suites import Suite, get_suite
from storage import urls
from storage.reports import ReportStore
from tests.fixtures.services import dask_cluster, forget_s3_clients, free_port, moto_s3, project_env, s3_env

pytestmark = pytest.mark.slow

BUCKET = "generalad-flows"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server; this process (and every process started after this) points at it; one bucket."""
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint, pytest.MonkeyPatch.context() as patch:
        for key, value in s3_env(endpoint).items():
            patch.setenv(key, value)
        forget_s3_clients()
        try:
            urls.filesystem(f"s3://{BUCKET}")[0].mkdir(BUCKET)
            yield endpoint
        finally:
            forget_s3_clients()


@pytest.fixture(scope="module")
def cluster(prefect_api, data_home, s3, tmp_path_factory):
    """Scheduler + 2 workers, environment = this process's (Prefect API, S3 credentials) + the project path; the
    workers get the S3 endpoint the other documented way, from fsspec's configuration (FSSPEC_S3_ENDPOINT_URL)."""
    from flows.runtime import plan_dask

    # torch threads as the reference LocalCluster run's task sets them: other thread counts change float sums,
    # and the smoke model's scores are close enough to ties for that to move its AUROC
    threads = str(plan_dask(1, n_workers=1).torch_threads)
    env = project_env(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env["FSSPEC_S3_ENDPOINT_URL"] = env.pop("AWS_ENDPOINT_URL")
    with dask_cluster(env, tmp_path_factory.mktemp("dask-logs"), n_workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    return tmp_path_factory.mktemp("stores")


def _auroc(frame) -> float:
    part = frame[(frame["metric"] == "image_auroc") & (frame["selection"] == "last")]
    assert part["class_name"].tolist() == ["brick"] and part["status"].tolist() == ["ok"]
    return float(part["value"].iloc[0])


def _assert_rows_once(reports: ReportStore, run_id: str) -> None:
    """Every (class, metric, selection) once, every image's score once per selection."""
    metrics = reports.read_metrics(run_id=run_id)
    assert not metrics.empty
    assert metrics.groupby(["class_name", "metric", "selection"]).size().eq(1).all()
    scores = reports.read_scores(run_id=run_id)
    assert not scores.empty
    assert scores.groupby(["class_name", "selection", "image_id"]).size().eq(1).all()


@pytest.fixture(scope="module")
def reference(prefect_api, data_home, store_root, tmp_path_factory):
    """The smoke suite on the default LocalCluster (one worker process): its image AUROC."""
    from flows.reproduce import reproduce_all

    reports = ReportStore(str(tmp_path_factory.mktemp("reports-local")))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
        summary = reproduce_all(suite="smoke", reports=reports.url, store=str(store_root), n_workers=1)
    return _auroc(reports.read_metrics(run_id=summary["run_id"]))


def _ran_on(address: str) -> set[str]:
    from distributed import Client

    with Client(address, timeout=10) as client:
        return set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))


def test_external_cluster_gives_the_local_cluster_auroc(cluster, reference, store_root, tmp_path):
    from flows.reproduce import reproduce_all

    reports = ReportStore(str(tmp_path / "reports"))
    summary = reproduce_all(
        suite="smoke", reports=reports.url, store=str(store_root), dask_address=cluster.address, retrain=True
    )
    assert [s["reused"] for s in summary["extractions"]] == [True]  # the reference run built the store
    assert any("train" in prefix for prefix in _ran_on(cluster.address))
    assert _auroc(reports.read_metrics(run_id=summary["run_id"])) == pytest.approx(reference, abs=1e-6)
    _assert_rows_once(reports, summary["run_id"])


def test_store_and_reports_on_s3_with_the_external_cluster(cluster, reference):
    """Extraction writes into s3://, the workers (endpoint from their environment) train from it, the reports
    land there; DuckDB reads them back through the same filesystem."""
    from flows.reproduce import reproduce_all

    store, reports_url = f"s3://{BUCKET}/stores", f"s3://{BUCKET}/reports"
    summary = reproduce_all(
        suite="smoke", reports=reports_url, store=store, dask_address=cluster.address, retrain=True
    )
    [built] = summary["extractions"]
    assert built["url"].startswith(f"{store}/") and not built["reused"]
    assert urls.exists(urls.join(built["url"], "COMPLETE.json"))
    reports = ReportStore(reports_url)
    frame = reports.read_metrics(run_id=summary["run_id"])
    assert _auroc(frame) == pytest.approx(reference, abs=1e-6)  # the same features, read over S3
    _assert_rows_once(reports, summary["run_id"])

    con = duckdb.connect()
    con.register_filesystem(reports.fs)
    theirs = con.sql(
        f"select metric, selection, value from read_parquet('{reports_url}/metrics/**/*.parquet', "
        f"hive_partitioning=true) where run_id = '{summary['run_id']}' order by metric, selection"
    ).df()
    ours = frame.sort_values(["metric", "selection"])[["metric", "selection", "value"]]
    assert theirs.values.tolist() == ours.values.tolist()


def test_unreachable_scheduler_fails_within_seconds(prefect_api, data_home, store_root, tmp_path):
    from flows.reproduce import reproduce_all
    from flows.runtime import SchedulerUnreachable

    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    state = reproduce_all(
        suite="smoke",
        reports=str(tmp_path / "reports"),
        store=str(store_root),
        dask_address=address,
        return_state=True,
    )
    seconds = time.monotonic() - started
    error = state.result(raise_on_failure=False)
    assert state.is_failed() and isinstance(error, SchedulerUnreachable)
    assert address in str(error) and "DASK_SCHEDULER_ADDRESS" in str(error)
    # distributed alone would wait its 30 s connect timeout, after extracting; this is the flow's own start-up
    # and the check (well under a second: tests/flows/test_scheduler_check.py), on a loaded machine
    assert seconds < 25, seconds
    assert not (tmp_path / "reports").exists()  # it failed before anything ran


# ------------------------------------------------------------------ last: a worker killed mid-task


def _kill_training_worker(cluster, done: threading.Event, killed: dict) -> None:
    """Wait until a worker executes the train task, let it run 0.5 s, and if it still does, SIGKILL that worker's
    process; `killed` gets its address, pid, the task key and the time of the kill."""
    from distributed import Client

    def _executing(dask_worker) -> list[str]:  # nested: pickled by value (workers cannot import this module)
        return [str(ts.key) for ts in dask_worker.state.executing if "train" in str(ts.key)]

    with Client(cluster.address, timeout=10) as client:
        deadline = time.monotonic() + 240
        while not done.is_set() and time.monotonic() < deadline:
            for address, keys in client.run(_executing).items():
                if not keys:
                    continue
                time.sleep(0.5)
                pid = client.run(os.getpid, workers=[address])[address]
                if client.run(_executing, workers=[address])[address] == keys:  # still mid-task
                    os.kill(pid, signal.SIGKILL)
                    killed.update(address=address, pid=pid, key=keys[0], at=time.time())
                return
            time.sleep(0.2)


def _finished(address: str, key: str) -> list[float]:
    """When the scheduler saw `key` finish (its transitions into memory), from its transition log."""
    from distributed import Client

    def story(dask_scheduler, key=key):
        return [event[-1] for event in dask_scheduler.story(key) if event[2] == "memory"]

    with Client(address, timeout=10) as client:
        return client.run_on_scheduler(story)


def test_worker_killed_mid_task_reruns_on_the_other_worker(cluster, store_root, tmp_path, monkeypatch):
    """The smoke suite at 5 epochs (the same store), so that the class task surely runs long enough to be hit."""
    from flows import reproduce

    longer = Suite(
        "smoke-5", "smoke, 5 epochs", (dataclasses.replace(get_suite("smoke").entries[0], epochs=5),)
    )
    monkeypatch.setattr(reproduce, "get_suite", lambda name: longer)
    pids = {p.pid for p in cluster.workers}
    assert set(cluster.worker_pids().values()) == pids  # both workers still alive
    killed: dict = {}
    done = threading.Event()
    killer = threading.Thread(target=_kill_training_worker, args=(cluster, done, killed), daemon=True)
    killer.start()
    reports = ReportStore(str(tmp_path / "reports"))
    try:
        summary = reproduce.reproduce_all(
            suite="smoke-5",
            reports=reports.url,
            store=str(store_root),
            dask_address=cluster.address,
            retrain=True,
        )
    finally:
        done.set()
        killer.join(timeout=30)
    assert killed, "no worker was killed while it executed the class task"
    [finished] = _finished(cluster.address, killed["key"])  # it finished once, after the kill
    assert finished > killed["at"]
    victim = next(p for p in cluster.workers if p.pid == killed["pid"])
    assert victim.wait(timeout=30) == -signal.SIGKILL
    survivors = cluster.worker_pids()
    assert list(survivors.values()) == list(pids - {killed["pid"]})  # the task finished on the other one
    assert summary["failures"] == []
    assert 0.0 <= _auroc(reports.read_metrics(run_id=summary["run_id"])) <= 1.0
    frame = reports.read_metrics(run_id=summary["run_id"])
    assert set(frame["epochs"]) == {5}
    _assert_rows_once(reports, summary["run_id"])
