"""Prefect settings as Prefect resolves them, in a fresh process as `generalad reproduce` starts:

- an API URL in the active profile (written by `prefect config set`, no PREFECT_API_URL in the environment) is the
  server the flows run on: no local server is started;
- with no API URL anywhere, the embedded local server runs on PREFECT_HOME, whose database still holds the run
  after the command ends, and the hint printed last names that home.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flows.runtime import OFFLINE_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
from flows.runtime import ensure_prefect_api
with ensure_prefect_api() as api:
    from prefect import flow
    from prefect.runtime import flow_run

    @flow(name="settings-probe")
    def probe() -> str:
        return str(flow_run.get_id())

    run_id = probe()
    print("URL", api.url)
    print("HOME", api.home)
    print("RUN", run_id)
print(api.open_ui_hint())
"""


def _env(home: Path) -> dict[str, str]:
    env = os.environ | OFFLINE_ENV | {"PREFECT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_PROFILES_PATH", None)
    return env


def _run(env: dict[str, str], *args: str, timeout: float = 240) -> str:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return result.stdout


def _value(output: str, label: str) -> str:
    return next(line.split(" ", 1)[1] for line in output.splitlines() if line.startswith(label + " "))


def test_the_profile_api_url_is_used(prefect_api, tmp_path):
    env = _env(tmp_path / "home")
    _run(env, "-m", "prefect", "config", "set", f"PREFECT_API_URL={prefect_api}")
    out = _run(env, "-c", PROBE)
    assert _value(out, "URL") == prefect_api
    assert _value(out, "HOME") == "None"  # no local server was started
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # the session's server holds the run
        run = client.read_flow_run(_value(out, "RUN"))
        flow = client.read_flow(run.flow_id)
    assert flow.name == "settings-probe" and run.state.is_completed()


def test_the_embedded_server_keeps_its_history(tmp_path):
    home = tmp_path / "home"
    out = _run(_env(home), "-c", PROBE)
    assert _value(out, "URL").startswith("http://127.0.0.1:")
    assert Path(_value(out, "HOME")) == home
    assert f"PREFECT_HOME={home} prefect server start" in out.splitlines()[-2]
    assert "http://127.0.0.1:4200" in out.splitlines()[-1]
    # the server is gone; its database still holds the flow run
    with sqlite3.connect(home / "prefect.db") as db:
        rows = db.execute("select id, state_type from flow_run").fetchall()
    assert (_value(out, "RUN").replace("-", ""), "COMPLETED") in {(i.replace("-", ""), s) for i, s in rows}
