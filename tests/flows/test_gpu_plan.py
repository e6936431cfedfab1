"""Several GPUs, faked on a CPU machine: one Dask worker per GPU with one GPU resource each, tasks pinned to
their worker's GPU, stores extracted on one lane per GPU at once; CPU-only keeps today's plan."""

from __future__ import annotations

import threading

import pytest

from flows import extract_suite, runtime
from flows.runtime import DaskPlan, gpu_lanes, plan_dask, worker_device
from flows.suites import Suite, SuiteEntry


@pytest.fixture(autouse=True)
def _no_scheduler(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.setattr(runtime, "_cores", lambda: 16)


def test_one_worker_per_gpu_each_with_one_gpu_resource() -> None:
    plan = plan_dask(30, device="auto", gpu_count=4)
    assert plan == DaskPlan(address=None, n_workers=4, torch_threads=4, gpus=4)
    assert plan.runner_kwargs()["cluster_kwargs"]["resources"] == {"GPU": 1}
    assert plan.task_resources == {"GPU": 1}
    assert plan_dask(2, device="cuda", gpu_count=4).n_workers == 2  # never more workers than tasks
    assert plan_dask(30, device="auto", gpu_count=4, n_workers=8).n_workers == 4  # nor than GPUs


def test_cpu_plans_are_unchanged() -> None:
    for plan in (plan_dask(30, device="cpu", gpu_count=4), plan_dask(30, device="auto", gpu_count=0)):
        assert plan == DaskPlan(address=None, n_workers=16, torch_threads=1, gpus=0)
        assert "resources" not in plan.runner_kwargs()["cluster_kwargs"] and plan.task_resources is None


def test_one_named_gpu_is_one_lane() -> None:
    assert gpu_lanes("cuda:2", gpu_count=4) == 1
    assert plan_dask(30, device="cuda:2", gpu_count=4).n_workers == 1
    assert gpu_lanes("cpu", gpu_count=4) == 0 and gpu_lanes("auto", gpu_count=3) == 3


def test_tasks_run_on_their_workers_gpu(monkeypatch) -> None:
    import distributed

    class Worker:
        name = 0

    monkeypatch.setattr(distributed, "get_worker", lambda: Worker)
    for name, expected in ((0, "cuda:0"), (1, "cuda:1"), (5, "cuda:1")):
        Worker.name = name
        assert worker_device("auto", gpus=4 if name < 4 else 2) == expected
    assert worker_device("cuda:3", gpus=4) == "cuda:3"  # an explicit device wins
    assert worker_device("cpu", gpus=4) == "cpu"
    assert worker_device("auto", gpus=1) == "auto"  # one GPU: nothing to spread


def test_stores_extract_on_one_lane_per_gpu_at_once(data_home, monkeypatch) -> None:
    from flows.plan_build import resolve_datasets

    suite = Suite(
        "t",
        "",
        (SuiteEntry("quickstart", categories=("brick", "grass", "gravel"), image_size=56, weights="random"),),
    )
    roots, missing = resolve_datasets(suite, None)
    both_lanes = threading.Barrier(2, timeout=30)  # each lane's first store waits for the other lane's
    calls: list[tuple[str, str, str]] = []

    def fake_extract(key, target, store, device, precision):
        calls.append((target.category, device, threading.current_thread().name))
        if len(calls) <= 2:
            both_lanes.wait()
        return {"url": f"{store}/{target.category}", "images_extracted": 40, "seconds": 1.0, "reused": False}

    monkeypatch.setattr(extract_suite, "_extract_one", fake_extract)
    out = extract_suite.extract_all(
        suite, roots, missing, weights="random", store="s", eval_every_epoch=False, device="auto", gpu_count=2
    )
    assert sorted((c, d) for c, d, _ in calls) == [
        ("brick", "cuda:0"),
        ("grass", "cuda:1"),
        ("gravel", "cuda:0"),
    ]
    assert len({thread for _, _, thread in calls}) == 2
    assert [s["url"] for s in out.stores] == ["s/brick", "s/grass", "s/gravel"]  # suite order kept
    assert [j.class_name for j in out.jobs] == ["brick", "grass", "gravel"] and not out.failures


def test_cpu_extraction_stays_sequential_in_this_thread(data_home, monkeypatch) -> None:
    from flows.plan_build import resolve_datasets

    suite = Suite(
        "t", "", (SuiteEntry("quickstart", categories=("brick", "grass"), image_size=56, weights="random"),)
    )
    roots, missing = resolve_datasets(suite, None)
    seen = []

    def fake_extract(key, target, store, device, precision):
        seen.append((device, threading.current_thread() is threading.main_thread()))
        return {"url": f"{store}/{target.category}", "images_extracted": 0, "seconds": 0.0, "reused": True}

    monkeypatch.setattr(extract_suite, "_extract_one", fake_extract)
    extract_suite.extract_all(
        suite, roots, missing, weights="random", store="s", eval_every_epoch=False, device="cpu", gpu_count=2
    )
    assert seen == [("cpu", True), ("cpu", True)]
