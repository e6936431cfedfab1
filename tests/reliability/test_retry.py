"""Failure surfacing: tasks retry on transient I/O errors only, never on deterministic ones (bad input, shape
errors, NaN loss). The exceptions are produced by really doing the failing thing where that is cheap; the Prefect
retry condition is fed real Prefect states. (The real train-class task retrying under Prefect: tests/flows/test_retry.py.)"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from prefect.states import Completed, Failed

from flows.retry import is_transient, transient_io_only
from generalad.backbone import BackboneSpec, load_backbone
from generalad.data.images import open_image
from generalad.errors import ConfigError, ImageError, StoreError, TrainingError
from generalad.method.feature_source import InMemoryFeatures
from generalad.method.presets import preset_for
from generalad.method.training import train_discriminator
from storage.feature_store import FeatureStore
from tests.fixtures.stores import TINY_SPEC


def _raised(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except BaseException as exc:  # noqa: BLE001 - the exception is the value under test
        return exc
    raise AssertionError("the action did not fail")


def _refused_connection() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bind, then close
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    socket.create_connection(("127.0.0.1", port), timeout=2)


def _nan_loss() -> None:
    tokens = np.full((8, 4, 8), np.nan, np.float32)
    features = InMemoryFeatures(tokens, np.ones((8, 2, 4), np.float32))
    preset = preset_for("quickstart").with_overrides(mlp_dim=8, epochs=1, top_k=2)
    train_discriminator(features, np.arange(8), preset, seed=0, progress=False)


def _shape_error() -> None:
    backbone = load_backbone(TINY_SPEC)
    side = TINY_SPEC.image_size + TINY_SPEC.patch_size
    backbone(torch.zeros(1, 3, side, side))  # images of another size than the model's


def _peer(reset: bool) -> None:
    """Connect to a local server that either never answers (a read times out) or resets the connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=2)
        with client:
            accepted, _ = server.accept()
            if reset:  # close with SO_LINGER 0: the kernel sends RST
                accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                accepted.close()
                client.settimeout(2)
                client.recv(1)
            client.settimeout(0.05)
            client.recv(1)


def _raise(exc: BaseException) -> Callable[[], None]:
    """An error only a remote or full file system gives, which no test here can cause for real."""

    def action() -> None:
        raise exc

    return action


TRANSIENT = {
    "connection refused": _refused_connection,
    "connection reset": lambda: _peer(reset=True),
    "timeout": lambda: _peer(reset=False),
    "generic I/O error": _raise(OSError(errno.EIO, "Input/output error")),  # a flaky network file system
    "stale file handle": _raise(OSError(errno.ESTALE, "Stale file handle")),  # NFS after a server restart
    "no errno": _raise(OSError("remote request failed")),  # what remote file system clients raise
}

DETERMINISTIC = {
    "missing file": (lambda: open("/nonexistent/generalad/x.png", "rb"), FileNotFoundError),
    "permission denied": (_raise(PermissionError(errno.EACCES, "Permission denied")), PermissionError),
    "disk full": (_raise(OSError(errno.ENOSPC, "No space left on device")), OSError),
    "is a directory": (lambda: open("/", "rb"), IsADirectoryError),
    "not a directory": (lambda: open(f"{__file__}/x", "rb"), NotADirectoryError),
    "undecodable image": (lambda: open_image(Path(__file__)), ImageError),
    "missing store": (lambda: FeatureStore("/nonexistent/store.zarr"), StoreError),
    "bad option": (lambda: BackboneSpec(image_size=30), ConfigError),
    "NaN loss": (_nan_loss, TrainingError),
    "shape error": (_shape_error, AssertionError),  # timm asserts the input size
    "reshape error": (lambda: np.zeros(3).reshape(2, 2), ValueError),
    "tensor shape error": (lambda: torch.zeros(2, 3) @ torch.zeros(2, 3), RuntimeError),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
def test_transient_io_errors_are_retried(name: str) -> None:
    exc = _raised(TRANSIENT[name])
    assert isinstance(exc, OSError), repr(exc)  # ConnectionError and TimeoutError are OSErrors
    assert is_transient(exc), repr(exc)
    assert transient_io_only(None, None, Failed(data=exc)) is True


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_deterministic_errors_are_never_retried(name: str) -> None:
    action, kind = DETERMINISTIC[name]
    exc = _raised(action)
    assert isinstance(exc, kind), repr(exc)
    assert not is_transient(exc), repr(exc)
    assert transient_io_only(None, None, Failed(data=exc)) is False


def test_a_completed_state_is_not_retried() -> None:
    assert transient_io_only(None, None, Completed(data=1)) is False


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: Path(tmp).mkdir(),  # FileExistsError: the folder is there, and will be on every retry
        lambda tmp: __import__("PIL.Image").Image.open(Path(__file__)),  # PIL.UnidentifiedImageError
    ],
    ids=["file exists", "unidentified image"],
)
def test_deterministic_os_errors_are_not_retried(tmp_path, make) -> None:
    exc = _raised(lambda: make(tmp_path))
    assert isinstance(exc, OSError)
    assert not is_transient(exc)


def test_config_errors_are_value_errors_but_not_transient() -> None:
    exc = _raised(lambda: BackboneSpec(layers=()))
    assert isinstance(exc, ConfigError | ValueError) and not is_transient(exc)
