"""Fixtures of the flow tests: one local Prefect server for the session (127.0.0.1, its own home), the test
process and every process it starts pointed at it, and a private data home for the generated quickstart set.

Every flow test runs against this real server (the path `generalad reproduce` and a deployment take), not against
Prefect's ephemeral in-process API: Dask worker processes inherit PREFECT_API_URL from the environment and report
to the same server instead of each starting a temporary one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.runtime import OFFLINE_ENV, local_prefect_server
from flows.suites import CONFIG_ENV, DATA_ENV_PREFIX


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """A Prefect server on 127.0.0.1 for the whole session; yields its API URL and stops it at the end.

    Results Prefect persists (the exception of a failed flow) go to the session's folder, not ~/.prefect."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    home = tmp_path_factory.mktemp("prefect-server")
    results = home / "results"
    with local_prefect_server(home, log=home / "server.log") as api_url:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in OFFLINE_ENV.items():
                patch.setenv(key, value)
            # for processes started from here (Dask workers, the CLI, a worker's flow runs)
            patch.setenv("PREFECT_API_URL", api_url)
            patch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(results))
            with temporary_settings(  # for this process
                updates={PREFECT_API_URL: api_url, PREFECT_LOCAL_STORAGE_PATH: results}
            ):
                try:
                    yield api_url
                finally:
                    _flush_run_logs()


def _flush_run_logs() -> None:
    """Send buffered run logs while the server still runs (they would fail noisily after it stops)."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()


@pytest.fixture(scope="session")
def data_home(tmp_path_factory) -> Iterator[Path]:
    """GENERALAD_HOME for the session: the quickstart set is generated here once, never in the checkout.

    Dataset roots come only from this session (no generalad.toml, no GENERALAD_DATA_* of the caller)."""
    home = tmp_path_factory.mktemp("generalad-home")
    config = home / "generalad.toml"
    config.write_text("[datasets]\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENERALAD_HOME", str(home))
        patch.setenv(CONFIG_ENV, str(config))
        for key in list(os.environ):
            if key.startswith(DATA_ENV_PREFIX):
                patch.delenv(key)
        yield home
