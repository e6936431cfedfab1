"""Which failures a task retries: transient I/O only, never a deterministic error (shape, NaN loss, bad data)."""

from __future__ import annotations

from generalad.errors import GeneralADError

__all__ = ["is_transient", "transient_io_only"]

# our own input errors, and OS errors that a retry would only repeat
_DETERMINISTIC = (GeneralADError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_transient(exc: BaseException) -> bool:
    """Network hiccups, timeouts and I/O errors of a shared store; not our own input errors."""
    if isinstance(exc, _DETERMINISTIC):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


def transient_io_only(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only when the task failed with a transient error."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classified, not handled
        return is_transient(exc)
    return False
