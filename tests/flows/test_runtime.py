"""The embedded defaults bind to 127.0.0.1 only: the local Prefect server, and the LocalCluster (scheduler,
workers, dashboard) that a DaskPlan describes; an existing cluster is used by address or DASK_SCHEDULER_ADDRESS."""

from __future__ import annotations

import urllib.parse

import psutil
import pytest

from flows.runtime import DaskPlan, plan_dask


def _listening_hosts(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def test_prefect_server_listens_on_loopback_only(prefect_api):
    url = urllib.parse.urlsplit(prefect_api)
    assert url.scheme == "http" and url.hostname == "127.0.0.1"
    assert _listening_hosts(url.port) == {"127.0.0.1"}


def test_plan_for_a_local_cluster(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    plan = plan_dask(5, n_workers=2)
    assert plan == DaskPlan(address=None, n_workers=2, torch_threads=plan.torch_threads)
    assert plan.torch_threads >= 1
    cluster = plan.runner_kwargs()["cluster_kwargs"]
    assert cluster["host"] == "127.0.0.1"
    assert cluster["dashboard_address"].startswith("127.0.0.1:")
    assert cluster["threads_per_worker"] == 1


def test_plan_never_has_more_workers_than_tasks(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert plan_dask(1).n_workers == 1


@pytest.mark.parametrize("from_env", [False, True], ids=["parameter", "environment"])
def test_plan_for_an_existing_cluster(monkeypatch, from_env):
    address = "tcp://10.0.0.5:8786"
    if from_env:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
        plan = plan_dask(3)
    else:
        monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
        plan = plan_dask(3, address=address)
    assert plan.address == address
    assert plan.runner_kwargs() == {"address": address}
    assert plan.torch_threads is None  # the remote workers' cores are not ours to count


@pytest.mark.slow
def test_local_cluster_binds_to_loopback(monkeypatch):
    """Start the LocalCluster exactly as the plan says (one worker process) and look at what it listens on."""
    from distributed import LocalCluster

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    kwargs = plan_dask(1).runner_kwargs()["cluster_kwargs"]
    with LocalCluster(**kwargs) as cluster:
        scheduler = urllib.parse.urlsplit(cluster.scheduler_address)
        dashboard = urllib.parse.urlsplit(cluster.dashboard_link)
        workers = [urllib.parse.urlsplit(w) for w in cluster.scheduler.workers]
        assert scheduler.hostname == "127.0.0.1" and dashboard.hostname == "127.0.0.1"
        assert workers and all(w.hostname == "127.0.0.1" for w in workers)
        assert _listening_hosts(scheduler.port) == {"127.0.0.1"}
        assert _listening_hosts(dashboard.port) == {"127.0.0.1"}


_PROBE = """
import json, os, urllib.request
from distributed import Client, LocalCluster
from prefect import flow
from flows.runtime import api_for_subprocesses

@flow(name="api-probe")
def probe():
    before = os.environ.get("PREFECT_API_URL")
    with api_for_subprocesses() as url:
        healthy = urllib.request.urlopen(url + "/health", timeout=5).status == 200
        with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0") as c:
            with Client(c) as client:
                seen = list(client.run(lambda: os.environ.get("PREFECT_API_URL")).values())
    return {"before": before, "url": url, "healthy": healthy, "worker": seen,
            "after": os.environ.get("PREFECT_API_URL")}

print("RESULT", json.dumps(probe()))
"""


@pytest.mark.slow
def test_dask_workers_share_the_temporary_server(tmp_path):
    """With no PREFECT_API_URL (Prefect's temporary server), a Dask worker started inside the block is given
    the flow's own server instead of starting one of its own; the variable is gone again afterwards."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # 20 s by default: too short on 2 busy cores
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["before"] is None and result["after"] is None
    assert urllib.parse.urlsplit(result["url"]).hostname == "127.0.0.1"
    assert result["healthy"]
    assert result["worker"] == [result["url"]]
