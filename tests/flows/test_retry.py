"""Retries: a transient I/O error in a class task is retried once, a deterministic error never.

Which errors are transient is tested on real errors in tests/reliability/test_retry.py. Here the real
`train-class` task (its own retries and retry condition, the retry delay set to 0) runs against the session's
Prefect server with the training call replaced by a counter that fails, so no feature store or training is
needed.
"""

from __future__ import annotations

import types

import pytest

from flows import train as train_module
from flows.train import ClassJob, train_class
from generalad.errors import TrainingError
from generalad.method.presets import preset_for


@pytest.fixture
def failing_training(monkeypatch):
    """Replace the store and the training call of the train-class task; return the list of errors raised, in
    order, one per attempt. `plan` is the errors the attempts raise (the last one repeats)."""
    attempts: list[BaseException] = []
    plan: list[BaseException] = []
    fake_store = types.SimpleNamespace(dataset="quickstart")
    monkeypatch.setattr(train_module.FeatureStore, "open", classmethod(lambda cls, url: fake_store))
    monkeypatch.setattr(
        train_module, "resolve_preset", lambda store, name, overrides: preset_for("quickstart")
    )

    def train_from_store(store, normal_class, **kwargs):
        error = plan[min(len(attempts), len(plan) - 1)]
        attempts.append(error)
        raise error

    monkeypatch.setattr(train_module, "train_from_store", train_from_store)
    return plan, attempts


def _run_task(prefect_api):
    """The task inside a flow, as `train-classes` runs it; returns the task's final state."""
    from prefect import flow

    task = train_class.with_options(retry_delay_seconds=0)

    states = []

    @flow(name="retry-test")
    def one_task() -> None:
        states.append(task(ClassJob("memory://store.zarr", "brick"), run_id="retry-test", return_state=True))

    one_task()
    return states[0]


def test_transient_error_is_retried_once(prefect_api, failing_training):
    plan, attempts = failing_training
    plan += [OSError(5, "Input/output error"), TrainingError("second attempt reached")]
    state = _run_task(prefect_api)
    assert state.is_failed()
    assert [type(e) for e in attempts] == [OSError, TrainingError]  # one retry, after the OSError
    assert isinstance(state.result(raise_on_failure=False), TrainingError)


def test_transient_error_retried_at_most_once(prefect_api, failing_training):
    plan, attempts = failing_training
    plan.append(ConnectionResetError("peer reset"))
    state = _run_task(prefect_api)
    assert state.is_failed()
    assert len(attempts) == 2  # retries=1: the first attempt and one retry


def test_training_error_is_not_retried(prefect_api, failing_training):
    plan, attempts = failing_training
    plan.append(TrainingError("non-finite loss nan at epoch 1/1"))
    state = _run_task(prefect_api)
    assert state.is_failed()
    assert len(attempts) == 1
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TrainingError) and "non-finite loss" in str(error)
