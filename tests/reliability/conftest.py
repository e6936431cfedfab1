"""Shared pieces of the reliability tests: a tiny random-init backbone, a tiny MVTec category, store helpers.

The backbone is timm's default random init (LayerScale 1e-5): these tests exercise storage, locking and keys, not
attention mixing, so the blocks need not change the tokens.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from generalad.backbone import BackboneSpec
from generalad.data import get_dataset
from generalad.data.base import DatasetAdapter
from storage.extraction import extract_features
from storage.feature_store import COMPLETE_FILE, SHARDS_DIR, FeatureStore
from tests.fixtures.industrial_datasets import make_mvtec

SPEC = BackboneSpec(weights="random", image_size=28)
FLOW_TESTS_ENV = "GENERALAD_FLOW_TESTS"


def pytest_collection_modifyitems(config, items) -> None:
    """The flow tests (a Prefect server, a Dask worker, two suite runs: about 1.5-2.5 minutes on 2 busy cores)
    run by default, CI included (issue 5 asks for determinism through the flow); `GENERALAD_FLOW_TESTS=0` skips
    them for a quick local run."""
    if os.environ.get(FLOW_TESTS_ENV, "1") != "0":
        return
    skip = pytest.mark.skip(reason=f"flow tests skipped by {FLOW_TESTS_ENV}=0 (about 2 minutes)")
    for item in items:
        if "reliability_flow_env" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


SHARD = 2  # 8 images -> 4 shards


def fork_context() -> multiprocessing.context.BaseContext:
    """Processes forked from the test process: real processes that start without re-importing torch."""
    return multiprocessing.get_context("fork")


def mvtec_adapter(root: Path) -> DatasetAdapter:
    fx = make_mvtec(root)
    return get_dataset(fx.name, fx.root, fx.category)


@pytest.fixture()
def adapter(tmp_path) -> DatasetAdapter:
    """MVTec-AD layout, category bottle: 3 train, 2 good and 3 anomalous test images (16x18 px), with masks."""
    return mvtec_adapter(tmp_path / "mvtec")


def extract(adapter: DatasetAdapter, root: Path | str, **kwargs):
    kwargs.setdefault("shard_size", SHARD)
    kwargs.setdefault("batch_size", 2)
    return extract_features(adapter, kwargs.pop("spec", SPEC), str(root), progress=False, **kwargs)


def store_values(url: str) -> dict[str, np.ndarray]:
    """Every array of a complete store (opened through the reader, so an incomplete store fails here)."""
    store = FeatureStore(url)
    rows = range(store.num_images)
    tokens, attn = store.read(rows)
    return {"tokens": tokens.numpy(), "cls_attn": attn.numpy(), "masks": store.masks(rows)}


def assert_same_values(url: str, reference: dict[str, np.ndarray]) -> None:
    got = store_values(url)
    for name, expected in reference.items():
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


def markers(url: str) -> dict[int, int]:
    """shard -> mtime_ns of its marker file."""
    return {int(p.stem): p.stat().st_mtime_ns for p in (Path(url) / SHARDS_DIR).glob("*.json")}


def published(root: Path | str) -> list[Path]:
    """Every COMPLETE.json under a store root (what would make a store readable)."""
    return sorted(Path(root).rglob(COMPLETE_FILE))


def write_json(path: str | Path, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload))
