"""The deployments of prefect.yaml, for real: the README's commands against a local Prefect server.

Against the session's server (127.0.0.1, free port): create the process work pool, `prefect --no-prompt deploy
--all` from the project root, `prefect deployment run reproduce-all/reproduce-all --param ... --watch`, and a
`prefect worker start --run-once` that runs it in a fresh process; then read the reports that run wrote. Then the
one-terminal way: `python -m flows.serve` serves the same deployment, and a second run on the same store trains
nothing (its rows are the first run's values, marked reused).
Every process started here runs in its own process group and is stopped in `finally`, failure or not.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from flows.runtime import OFFLINE_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
POOL = "generalad-process"
DEPLOYMENTS = ("reproduce-all/reproduce-all", "extract-features/extract-features", "train-class/train-class")
_UUID = re.compile(r"UUID:\s*([0-9a-f-]{36})")


@pytest.fixture
def cli_env(prefect_api, data_home, tmp_path) -> dict[str, str]:
    """The environment of every `prefect` command here: the test server, offline, a private PREFECT_HOME."""
    return (
        os.environ
        | OFFLINE_ENV
        | {
            "PREFECT_API_URL": prefect_api,
            "HF_HUB_OFFLINE": "1",
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PYTHONUNBUFFERED": "1",
        }
    )


def _prefect(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    """Run `prefect ARGS` in the project root; its output, or a failure that shows it."""
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"prefect {' '.join(args)} exited {result.returncode}:\n{output}"
    return output


@contextlib.contextmanager
def _background(
    env: dict[str, str], log: Path, *args: str, module: str = "prefect"
) -> Iterator[subprocess.Popen]:
    """`python -m MODULE ARGS` (`prefect` by default) in the background, in its own process group; stopped
    (group and all) on exit."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM twice (a Prefect worker ignores the first), then SIGKILL; the whole process group."""
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; its children (a flow run, Dask workers) may not be
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return


def _wait_for_flow_run_id(log: Path, process: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _UUID.search(log.read_text(errors="replace"))
        if found:
            return found.group(1)
        assert process.poll() is None, f"deployment run exited early:\n{log.read_text(errors='replace')}"
        time.sleep(0.5)
    raise AssertionError(f"no flow run created within {timeout:.0f} s:\n{log.read_text(errors='replace')}")


def _read_deployment(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def test_deploy_and_run_reproduce_all(cli_env, tmp_path):
    reports, store = tmp_path / "reports", tmp_path / "stores"

    _prefect(cli_env, "work-pool", "create", POOL, "--type", "process")
    deployed = _prefect(cli_env, "--no-prompt", "deploy", "--all")
    for name in DEPLOYMENTS:
        assert name in deployed

    # what prefect.yaml declared is what the server holds
    deployment = _read_deployment("reproduce-all/reproduce-all")
    assert deployment.work_pool_name == POOL
    assert deployment.entrypoint == "flows/reproduce.py:reproduce_all"
    assert deployment.parameters["suite"] == "quickstart"
    [schedule] = deployment.schedules
    assert schedule.active and schedule.schedule.cron == "0 3 * * 1"
    assert deployment.global_concurrency_limit.limit == 1  # schedule + manual run: never two at once
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]
    for name in DEPLOYMENTS[1:]:
        assert _read_deployment(name).work_pool_name == POOL

    watch_log = tmp_path / "deployment-run.log"
    with _background(
        cli_env,
        watch_log,
        "deployment",
        "run",
        "reproduce-all/reproduce-all",
        "--param",
        "suite=smoke",
        "--param",
        f"reports={reports}",
        "--param",
        f"store={store}",
        "--watch",
        "--watch-timeout",
        "420",
    ) as watch:
        flow_run_id = _wait_for_flow_run_id(watch_log, watch)
        # one poll: the worker picks up the run that is due, runs it in a new process, and exits when it ends
        worker_log = tmp_path / "worker.log"
        with _background(cli_env, worker_log, "worker", "start", "--pool", POOL, "--run-once") as worker:
            worker.wait(timeout=450)
        worker_output = worker_log.read_text(errors="replace")
        assert worker.returncode == 0, worker_output
        assert flow_run_id in worker_output
        watch.wait(timeout=60)
        watch_output = watch_log.read_text(errors="replace")
        assert watch.returncode == 0, f"{watch_output}\n--- worker ---\n{worker_output}"
        assert "Completed" in watch_output

    # the reports that run wrote: image AUROC of the smoke suite's class, tagged with the flow run's id
    table = ds.dataset(reports / "metrics", format="parquet", partitioning="hive").to_table(
        filter=pc.field("metric") == "image_auroc"
    )
    rows = table.to_pylist()
    assert rows, f"no image_auroc rows under {reports}"
    assert {r["class_name"] for r in rows} == {"brick"}
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["flow_run_id"] for r in rows} == {flow_run_id}
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)
    assert list(store.glob("quickstart-brick/*.zarr"))
    first_values = _auroc_by_class(reports, flow_run_id)

    # one terminal: `python -m flows.serve` serves the same deployment; a rerun on the same store trains nothing
    serve_log = tmp_path / "serve.log"
    with _background(cli_env, serve_log, module="flows.serve") as served:
        _wait_for_text(serve_log, served, "being served")
        assert _read_deployment("reproduce-all/reproduce-all").global_concurrency_limit.limit == 1
        rerun = _prefect(
            cli_env,
            "deployment",
            "run",
            "reproduce-all/reproduce-all",
            "--param",
            "suite=smoke",
            "--param",
            f"reports={reports}",
            "--param",
            f"store={store}",
            "--watch",
            "--watch-timeout",
            "300",
            timeout=330,
        )
        assert "Completed" in rerun, f"{rerun}\n--- serve ---\n{serve_log.read_text(errors='replace')}"
    rerun_id = _UUID.search(rerun).group(1)
    rows = _auroc_rows(reports, rerun_id)
    assert rows and all(r["reused"] for r in rows)
    assert {(r["class_name"], r["selection"]): r["value"] for r in rows} == first_values
    assert {r["computed_by_run_id"] for r in rows} == {r["run_id"] for r in _auroc_rows(reports, flow_run_id)}


def _auroc_rows(reports: Path, flow_run_id: str) -> list[dict]:
    table = ds.dataset(reports / "metrics", format="parquet", partitioning="hive").to_table(
        filter=(pc.field("metric") == "image_auroc") & (pc.field("flow_run_id") == flow_run_id)
    )
    return table.to_pylist()


def _auroc_by_class(reports: Path, flow_run_id: str) -> dict[str, float]:
    return {(r["class_name"], r["selection"]): r["value"] for r in _auroc_rows(reports, flow_run_id)}


def _wait_for_text(log: Path, process: subprocess.Popen, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        assert process.poll() is None, f"exited early:\n{log.read_text(errors='replace')}"
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not printed within {timeout:.0f} s:\n{log.read_text(errors='replace')}")
