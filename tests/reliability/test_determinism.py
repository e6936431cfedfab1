"""Determinism: the same seed and configuration give identical metrics, for one experiment and through the
`reproduce-all` flow on Dask. The flow tests use the session's local Prefect server (tests/conftest.py; that it
listens on 127.0.0.1 only is checked in tests/flows/test_runtime.py) and also cover what only a running flow
shows: a broken dataset failing the suite with no report row written. (A task really retried on a transient
error, and only then: tests/flows/test_retry.py.)"""

from __future__ import annotations

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
from tests.fixtures.stores import TINY_CLASS, extract


def _run(store: FeatureStore, seed: int):
    split = store.split(TINY_CLASS)
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


def test_one_experiment_gives_identical_results_for_a_seed(tiny_adapter, tmp_path) -> None:
    store = FeatureStore(extract(tiny_adapter, tmp_path / "stores").url)
    first, second, other = _run(store, 7), _run(store, 7), _run(store, 8)
    assert first.metrics == second.metrics  # every metric, both selections, exactly
    pd.testing.assert_frame_equal(first.scores, second.scores, check_exact=True)
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    assert {m["metric"] for m in first.metrics} >= {"image_auroc", "pixel_auroc", "aupro"}
    assert not np.array_equal(first.scores["score"], other.scores["score"])  # the seed does matter
    assert not all(
        torch.equal(value, other.model.state_dict()[name]) for name, value in first.model.state_dict().items()
    )
    assert not first.model.training  # handed back ready to score


# ------------------------------------------------------------------------------------------------- the flow
@pytest.fixture(scope="module")
def reliability_flow_env(prefect_api, data_home) -> Iterator[tuple[str, str]]:
    """The session's Prefect server and data home, and one Dask LocalCluster (on 127.0.0.1, as the flow plans it)
    for this module: (API URL, Dask scheduler address). The flows run on the cluster by address, so its worker
    process starts (and imports torch) once, not once per flow run."""
    from distributed import LocalCluster

    from flows.runtime import plan_dask

    cluster_kwargs = plan_dask(1, address=None, n_workers=1).runner_kwargs()["cluster_kwargs"]
    with LocalCluster(**cluster_kwargs) as cluster:
        yield prefect_api, cluster.scheduler_address


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
            dask_address=dask_address,
        )
        for i in range(2)
    ]
    assert all(r["extractions"][0]["images_extracted"] > 0 for r in runs)  # two independent stores
    frame = reports.read_metrics(metric="image_auroc")
    assert (frame["status"] == "ok").all()
    assert not frame["reused"].any()  # each run trained its class (a cache of its own store root, empty)
    key = ["class_name", "selection", "epoch"]
    values = [frame[frame["run_id"] == r["run_id"]].sort_values(key)[[*key, "value"]] for r in runs]
    assert len(values[0]) >= 1
    pd.testing.assert_frame_equal(
        values[0].reset_index(drop=True), values[1].reset_index(drop=True), check_exact=True
    )


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
