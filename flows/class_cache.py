"""Class results cached like features: Prefect's task cache, keyed on everything that changes a class's result.

A `train-class` task run inside `reproduce-all` gets a cache key (`class_cache_key`) from the store key, the fully
resolved preset (every field), the job's settings (class, seed, shots, selection/evaluation settings, and any field
a later version adds), every task parameter that is not bookkeeping (device type, precision, ...), and the code
version: the package and library versions plus a hash of the source files the result is computed by
(`CODE_FILES`). Prefect persists the result under that key in the result storage (local by default, under the
feature store root) and a later run with the same key reads it instead of training: the task run ends `Cached`.

Prefect trusts a record that deserialises, so the record's payload carries its own SHA-256 (`ChecksummedPickle`):
a truncated, corrupted or missing record fails to load, Prefect's cache lookup then counts it as absent, and the
class is trained again and its record rewritten.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import cloudpickle
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from prefect.results import ResultStore
from prefect.serializers import Serializer
from pydantic import Field

from generalad.apps.train_job import resolve_preset
from generalad.devices import resolve_device
from storage.feature_store import FeatureStore
from storage.urls import is_local, join, normalize

__all__ = [
    "CODE_FILES",
    "ChecksummedPickle",
    "ClassCache",
    "CacheCorrupt",
    "class_cache_key",
    "code_version",
    "default_cache_url",
]

_ROOT = Path(__file__).resolve().parents[1]
# the sources a class result is computed by (relative to the project root; folders mean every .py below)
CODE_FILES: tuple[str, ...] = (
    "generalad/method",
    "generalad/defaults.py",
    "generalad/apps/train_job.py",
    "storage/feature_store.py",
    "storage/store_layout.py",
    "storage/report_rows.py",
    "storage/report_schema.py",
    "storage/report_values.py",
    "storage/run_identity.py",
    "storage/metric_row.py",
    "storage/score_rows.py",
    "flows/train.py",
)
# libraries whose version can change the numbers (or the pickled rows)
_LIBRARIES = ("generalad", "torch", "numpy", "scikit-learn", "scipy", "pyarrow")
# task parameters that say where and under which run a result is reported, never what it is
_BOOKKEEPING_PARAMS = frozenset({"job", "run_id", "flow_run_id", "torch_threads", "device", "gpus"})
# ClassJob fields that do not change the result (the store is named by its key; overrides become the preset;
# suite and variant are labels, set again on the rows when a result is read back)
_BOOKKEEPING_JOB_FIELDS = frozenset({"store_url", "overrides", "extract_seconds", "variant", "suite"})
CACHE_FOLDER = "_class-results"


class CacheCorrupt(ValueError):
    """A cached class result whose bytes do not match the checksum written with them."""


class ChecksummedPickle(Serializer):
    """cloudpickle, base64, and a SHA-256 line in front: `loads` refuses bytes whose digest does not match."""

    type: str = Field(default="generalad-checked-pickle", frozen=True)

    def dumps(self, obj: Any) -> bytes:
        blob = cloudpickle.dumps(obj)
        return hashlib.sha256(blob).hexdigest().encode() + b"\n" + base64.encodebytes(blob)

    def loads(self, blob: bytes) -> Any:
        digest, _, body = bytes(blob).partition(b"\n")
        try:
            payload = base64.decodebytes(body)
        except (ValueError, TypeError) as exc:
            raise CacheCorrupt(f"cached result is not base64: {exc}") from None
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise CacheCorrupt("cached result does not match its checksum")
        return cloudpickle.loads(payload)


@lru_cache(maxsize=1)
def code_version() -> str:
    """Library versions and a SHA-256 over the sources of `CODE_FILES` (path and bytes of each file)."""
    digest = hashlib.sha256()
    for name in _LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}=={version}\n".encode())
    for entry in CODE_FILES:
        path = _ROOT / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(_ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def _device_type(device: object) -> str:
    """The kind of device a task with this `device` parameter trains on (`auto` resolved here): `cuda:1` and
    `cuda` compute the same thing; `cpu` and `cuda` may not."""
    text = str(device or "cpu")
    try:
        return resolve_device(text).type
    except Exception:  # noqa: BLE001 - e.g. cuda asked on a machine without it: the task itself fails
        return text.split(":", 1)[0]


def class_cache_key(parameters: Mapping[str, Any]) -> str:
    """The cache key of a `train-class` task run from its parameters (the job, the device, ...).

    Opens the job's store (its metadata only) for the store key and the dataset's preset.
    """
    job = parameters["job"]
    store = FeatureStore.open(job.store_url)
    preset = resolve_preset(store, None, job.overrides)
    settings = {k: v for k, v in asdict(job).items() if k not in _BOOKKEEPING_JOB_FIELDS}
    extra = {k: v for k, v in parameters.items() if k not in _BOOKKEEPING_PARAMS}
    payload = {
        "store_key": store.key,
        "preset": preset.to_dict(),
        "job": settings,
        "device_type": _device_type(parameters.get("device")),
        "parameters": extra,
        "code": code_version(),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return "class-" + hashlib.sha256(blob.encode()).hexdigest()[:40]


def _cache_key_fn(context: Any, parameters: dict[str, Any]) -> str:
    return class_cache_key(parameters)


def default_cache_url(store_root: str) -> str:
    """Where class results go when nothing else is said: a folder under the feature store root."""
    return join(store_root, CACHE_FOLDER)


@dataclass(frozen=True)
class ClassCache:
    """Where class results are persisted and whether they are read back.

    Attributes:
        url: a local folder or an fsspec URL (a cluster's workers must all reach it).
        refresh: train every class again and overwrite its record (the cache is still written).
    """

    url: str
    refresh: bool = False

    def storage(self) -> WritableFileSystem:
        if is_local(self.url):
            return LocalFileSystem(basepath=normalize(self.url))
        return RemoteFileSystem(basepath=self.url)

    def task_storage(self) -> Path | WritableFileSystem:
        """The storage as a task option: a Path for a local folder; for a URL the block saved on the Prefect
        server (a task's result storage must be a saved block), named after the URL."""
        if is_local(self.url):
            return Path(normalize(self.url))
        name = "generalad-class-results-" + hashlib.sha256(self.url.encode()).hexdigest()[:12]
        block = RemoteFileSystem(basepath=self.url)
        block.save(name, overwrite=True)
        return block

    def task_options(self) -> dict[str, Any]:
        """`train_class.with_options(**...)`: Prefect's cache key, persistence and storage for class results."""
        return {
            "cache_key_fn": _cache_key_fn,
            "persist_result": True,
            "result_storage": self.task_storage(),
            "result_serializer": ChecksummedPickle(),
            "refresh_cache": self.refresh,
        }

    def has(self, parameters: Mapping[str, Any]) -> bool:
        """Whether a run with these task parameters would be served from the cache (a record that loads and
        matches its checksum); False with `refresh`, or when the key cannot be computed (the task will say why)."""
        if self.refresh:
            return False
        try:
            key = class_cache_key(parameters)
        except Exception:  # noqa: BLE001 - e.g. a bad override: the task itself reports it
            return False
        store = ResultStore(result_storage=self.storage(), serializer=ChecksummedPickle())
        return store.exists(key)

    def record_path(self, parameters: Mapping[str, Any]) -> str:
        """Where the record of a task run with these parameters lives (for tests and for `rm`)."""
        return join(self.url, class_cache_key(parameters))
