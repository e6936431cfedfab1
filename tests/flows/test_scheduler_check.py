"""`check_scheduler`: a named Dask scheduler that does not answer is a named error within seconds, not a hang."""

from __future__ import annotations

import socket
import time

import pytest

from flows.runtime import SchedulerUnreachable, check_scheduler
from generalad.errors import GeneralADError


def _refused_address() -> str:
    with socket.socket() as sock:  # bound, never listening: a connect is refused at once
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def test_refused_address_is_named_at_once(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    address = _refused_address()
    started = time.monotonic()
    with pytest.raises(SchedulerUnreachable, match=address) as info:
        check_scheduler(address)
    assert time.monotonic() - started < 2
    assert isinstance(info.value, GeneralADError) and "LocalCluster" in str(info.value)


def test_address_from_the_environment_is_checked_too(monkeypatch):
    address = _refused_address()
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    with pytest.raises(SchedulerUnreachable, match=address):
        check_scheduler(None)


def test_listening_scheduler_passes_and_none_means_local(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert check_scheduler(None) is None  # no address anywhere: a LocalCluster, nothing to check
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        assert check_scheduler(address) == address


def test_a_timeout_is_bounded(monkeypatch):
    """A scheduler that never answers (connects time out) costs `timeout_s`, not distributed's 30 s connect."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    fillers = []
    with socket.socket() as server:  # never accepts: once its backlog is full, further connects hang
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        try:
            for _ in range(16):
                filler = socket.socket()
                filler.settimeout(0.3)
                try:
                    filler.connect(("127.0.0.1", port))
                except TimeoutError:
                    filler.close()
                    break
                fillers.append(filler)
            else:
                pytest.skip("the accept backlog never filled up: no hanging connect to time")
            started = time.monotonic()
            with pytest.raises(SchedulerUnreachable, match="within 0.5 s"):
                check_scheduler(f"tcp://127.0.0.1:{port}", timeout_s=0.5)
            assert 0.4 < time.monotonic() - started < 3
        finally:
            for filler in fillers:
                filler.close()


def test_malformed_address_is_named(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(SchedulerUnreachable, match="not a Dask scheduler address"):
        check_scheduler("tcp://no-port-here")
