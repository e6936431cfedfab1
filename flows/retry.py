"""Which failures a task retries: transient I/O only, never a deterministic error (shape, NaN loss, bad data).

Transient: a connection refused/reset/aborted, a timeout, and any other `OSError` whose errno says the I/O
itself hiccuped (EIO, EAGAIN, ESTALE of a network file system, ...) or that carries no errno at all (what remote
file system clients raise for a failed request). Everything else is deterministic and fails at once: our own
input errors (`GeneralADError`), OSErrors that a retry would only repeat (a missing or existing file, a
permission, a directory where a file should be, an image PIL cannot identify, a full disk: any other errno),
and every non-OSError (shape errors, NaN loss, assertion failures).
"""

from __future__ import annotations

import errno

from PIL import UnidentifiedImageError

from generalad.errors import GeneralADError

__all__ = ["is_transient", "transient_io_only"]

_DETERMINISTIC_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    UnidentifiedImageError,
)
_TRANSIENT_TYPES = (ConnectionError, TimeoutError, BlockingIOError, InterruptedError)
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EIO",
        "EAGAIN",
        "EBUSY",
        "EINTR",
        "ESTALE",
        "ETIMEDOUT",
        "ECONNRESET",
        "ECONNREFUSED",
        "ECONNABORTED",
        "ENETDOWN",
        "ENETUNREACH",
        "ENETRESET",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "ENOLCK",
        "EREMOTEIO",
    )
    if hasattr(errno, name)
)


def is_transient(exc: BaseException) -> bool:
    """Network hiccups, timeouts and I/O errors of a shared store; not our own input errors."""
    if isinstance(exc, (GeneralADError, *_DETERMINISTIC_OS_ERRORS)):
        return False
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, OSError):  # incl. the OSError subclasses of remote file system clients
        return exc.errno is None or exc.errno in _TRANSIENT_ERRNOS
    return False


def transient_io_only(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only when the task failed with a transient error."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classified, not handled
        return is_transient(exc)
    return False
