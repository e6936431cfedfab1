"""Determinism: the same seed and configuration give identical metrics, for one experiment and through the
`reproduce-all` flow on Dask. The flow tests share one local Prefect server (bound to 127.0.0.1, which they check),
and also cover what only a running flow shows: a task really retried on a transient error and only then, and a
broken dataset failing the suite with no report row written."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch

from generalad.apps.train_job import resolve_preset
from generalad.method.experiment import run_one_class
from storage.feature_store import FeatureStore
from storage.reports import ReportStore
from tests.reliability.conftest import extract


def _run(store: FeatureStore, seed: int):
    split = store.split("bottle")
    return run_one_class(
        store,
        split,
        resolve_preset(store, None, {"epochs": 2, "mlp_dim": 32, "top_k": 2}),
        seed=seed,
        eval_every_epoch=True,
        masks=store.masks(split.test_rows),
        image_size=store.image_size,
        progress=False,
    )


def test_one_experiment_gives_identical_results_for_a_seed(adapter, tmp_path) -> None:
    store = FeatureStore(extract(adapter, tmp_path / "stores").url)
    first, second, other = _run(store, 7), _run(store, 7), _run(store, 8)
    assert first.metrics == second.metrics  # every metric, both selections, exactly
    pd.testing.assert_frame_equal(first.scores, second.scores, check_exact=True)
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    assert {m["metric"] for m in first.metrics} >= {"image_auroc", "pixel_auroc", "aupro"}
    assert not np.array_equal(first.scores["score"], other.scores["score"])  # the seed does matter


# ------------------------------------------------------------------------------------------------- the flow
@pytest.fixture(scope="module")
def reliability_flow_env(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """One local Prefect server and one Dask LocalCluster (both on 127.0.0.1) for this module: (API URL, Dask
    scheduler address). This process and the Dask worker point at the server; the flows run on the cluster by
    address, so its worker process starts (and imports torch) once, not once per flow run."""
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.runtime import OFFLINE_ENV, local_prefect_server, plan_dask
    from flows.suites import CONFIG_ENV, DATA_ENV_PREFIX

    home = tmp_path_factory.mktemp("prefect")
    config = home / "generalad.toml"
    config.write_text("[datasets]\n", encoding="utf-8")  # dataset roots only from this module
    with (
        local_prefect_server(home / "server", log=home / "server.log") as api_url,
        pytest.MonkeyPatch.context() as mp,
    ):
        for key, value in OFFLINE_ENV.items():
            mp.setenv(key, value)
        mp.setenv("PREFECT_API_URL", api_url)  # read by the Dask worker processes
        mp.setenv("GENERALAD_HOME", str(home / "generalad"))  # the generated quickstart set goes here
        mp.setenv(CONFIG_ENV, str(config))
        for key in [k for k in os.environ if k.startswith(DATA_ENV_PREFIX)]:
            mp.delenv(key)
        cluster_kwargs = plan_dask(1, address=None, n_workers=1).runner_kwargs()["cluster_kwargs"]
        with (
            temporary_settings(updates={PREFECT_API_URL: api_url}),
            LocalCluster(**cluster_kwargs) as cluster,
        ):
            try:
                yield api_url, cluster.scheduler_address
            finally:
                from prefect.logging.handlers import APILogHandler

                APILogHandler().flush()


@pytest.mark.slow
def test_two_smoke_runs_of_the_flow_give_identical_aurocs(reliability_flow_env, tmp_path) -> None:
    from flows.reproduce import reproduce_all

    _, dask_address = reliability_flow_env
    reports = ReportStore(str(tmp_path / "reports"))
    runs = [
        reproduce_all(
            suite="smoke",
            reports=reports.url,
            store=str(tmp_path / f"stores{i}"),
            weights="random",
            n_workers=1,
        )
        for i in range(2)
    ]
    assert all(r["extractions"][0]["images_extracted"] > 0 for r in runs)  # two independent stores
    frame = reports.read_metrics(metric="image_auroc")
    assert (frame["status"] == "ok").all()
    key = ["class_name", "selection", "epoch"]
    values = [frame[frame["run_id"] == r["run_id"]].sort_values(key)[[*key, "value"]] for r in runs]
    assert len(values[0]) >= 1
    pd.testing.assert_frame_equal(
        values[0].reset_index(drop=True), values[1].reset_index(drop=True), check_exact=True
    )


@pytest.mark.slow
def test_a_task_is_retried_on_a_transient_error_only(reliability_flow_env) -> None:
    from prefect import flow, task

    from flows.retry import transient_io_only

    calls: list[str] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=transient_io_only)
    def flaky(kind: str) -> int:
        calls.append(kind)
        if len(calls) == 1:
            raise (
                ConnectionResetError(104, "reset by peer")
                if kind == "io"
                else ValueError("shape (2, 3) != (3,)")
            )
        return len(calls)

    @flow
    def run(kind: str):
        return flaky(kind, return_state=True)

    assert run("io").result() == 2 and calls == ["io", "io"]
    calls.clear()
    state = run("shape", return_state=True)
    assert state.is_failed() and calls == ["shape"]


@pytest.mark.slow
def test_a_broken_dataset_fails_the_suite_and_writes_no_row(
    reliability_flow_env, tmp_path, monkeypatch
) -> None:
    from flows.reproduce import SuiteFailed, reproduce_all
    from generalad.data import generate_quickstart

    root = generate_quickstart(
        tmp_path / "quickstart", n_train=2, n_test_good=1, n_test_defect=3, image_size=32
    )
    broken = root / "brick" / "train" / "good" / "001.png"
    broken.write_bytes(broken.read_bytes()[:40])
    monkeypatch.setenv("GENERALAD_DATA_QUICKSTART", str(root))
    reports = tmp_path / "reports"
    with pytest.raises(SuiteFailed, match=r"extraction quickstart/brick.*001\.png"):
        reproduce_all(suite="smoke", reports=str(reports), store=str(tmp_path / "stores"), weights="random")
    assert ReportStore(str(reports)).read_metrics().empty
    assert not list((tmp_path / "stores").rglob("COMPLETE.json"))
    shutil.rmtree(root)
