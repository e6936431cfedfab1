"""The class-result cache without a flow: the checksummed serializer, what moves the cache key (and what does
not), the code version, and a record that is corrupt or missing counting as absent.

The store is a stand-in with a key and a dataset name (all the key reads of it); flow-level reruns are in
test_reproduce.py.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import flows.class_cache as class_cache
from flows.class_cache import CODE_FILES, CacheCorrupt, ChecksummedPickle, ClassCache, class_cache_key
from flows.train import ClassJob
from generalad.method.presets import Preset, preset_for

STORES = {"url-a": "key-a", "url-b": "key-b", "url-a-moved": "key-a"}


@pytest.fixture(autouse=True)
def fake_stores(monkeypatch):
    """FeatureStore.open as the key sees it: the store's key and its dataset (the preset comes from it)."""
    monkeypatch.setattr(
        class_cache.FeatureStore, "open", lambda url: SimpleNamespace(key=STORES[url], dataset="quickstart")
    )


def _params(job: ClassJob | None = None, **extra) -> dict:
    job = job or ClassJob("url-a", "brick", overrides={"epochs": 1})
    return {"job": job, "run_id": "r1", "torch_threads": 1, "device": "cpu", "flow_run_id": None, **extra}


def test_serializer_round_trip_and_refuses_changed_bytes():
    serializer = ChecksummedPickle()
    value = {"values": [0.25, 0.5], "name": "brick"}
    blob = serializer.dumps(value)
    assert serializer.loads(blob) == value
    digest, body = blob.split(b"\n", 1)
    # one base64 character changed: still decodes, no longer matches the digest
    i = len(body) // 2
    flipped = body[:i] + (b"A" if body[i : i + 1] != b"A" else b"B") + body[i + 1 :]
    with pytest.raises(CacheCorrupt, match="checksum"):
        serializer.loads(digest + b"\n" + flipped)
    with pytest.raises(CacheCorrupt):
        serializer.loads(blob[: len(blob) // 2])  # truncated


def _changed(value):
    """A different valid value of a preset field's type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, tuple):
        return value[:2]
    if value is None:
        return 7
    return f"{value}-x" if isinstance(value, str) else value


@pytest.mark.parametrize(
    "name", [f.name for f in dataclasses.fields(Preset) if f.name not in ("name", "kind")]
)
def test_every_preset_field_moves_the_key(name):
    base = preset_for("quickstart").with_overrides(epochs=1)
    new = _changed(getattr(base, name))
    job = ClassJob("url-a", "brick", overrides={"epochs": 1, name: new})
    assert class_cache_key(_params(job)) != class_cache_key(_params())


@pytest.mark.parametrize(
    "change",
    [
        {"class_name": "grass"},
        {"seed": 1},
        {"shots": 2},
        {"eval_every_epoch": False},
        {"select_on_pixel": True},
        {"store_url": "url-b"},  # another store key
    ],
)
def test_job_settings_and_the_store_key_move_the_key(change):
    job = dataclasses.replace(ClassJob("url-a", "brick", overrides={"epochs": 1}), **change)
    assert class_cache_key(_params(job)) != class_cache_key(_params())


def test_bookkeeping_does_not_move_the_key():
    key = class_cache_key(_params())
    job = ClassJob(
        "url-a-moved", "brick", overrides={"epochs": 1}, extract_seconds=12.5, variant="v", suite="table4"
    )
    same = _params(job, run_id="r2", torch_threads=2, flow_run_id="f")
    assert class_cache_key(same) == key
    # an override equal to the preset's own value resolves to the same preset
    job = ClassJob("url-a", "brick", overrides={"epochs": 1, "sigma": preset_for("quickstart").sigma})
    assert class_cache_key(_params(job)) == key


def test_device_type_and_other_task_parameters_move_the_key():
    key = class_cache_key(_params())
    cuda = class_cache_key(_params(device="cuda:0"))
    assert cuda != key
    assert class_cache_key(_params(device="cuda:1")) == cuda  # the same kind of device
    assert class_cache_key(_params(precision="bf16")) != key  # a parameter a later version adds


def test_code_version_follows_the_sources(tmp_path, monkeypatch):
    root = Path(class_cache.__file__).resolve().parents[1]
    for entry in CODE_FILES:
        src = root / entry
        (tmp_path / entry).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, tmp_path / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / entry)
    monkeypatch.setattr(class_cache, "_ROOT", tmp_path)
    class_cache.code_version.cache_clear()
    try:
        before = class_cache.code_version()
        key_before = class_cache_key(_params())
        with open(tmp_path / "generalad/method/training.py", "a", encoding="utf-8") as f:
            f.write("\n# a change of the training code\n")
        class_cache.code_version.cache_clear()
        assert class_cache.code_version() != before
        assert class_cache_key(_params()) != key_before
    finally:
        class_cache.code_version.cache_clear()


def test_a_corrupt_or_missing_record_counts_as_absent(tmp_path):
    from prefect.results import ResultStore

    cache = ClassCache(str(tmp_path / "results"))
    params = _params()
    assert not cache.has(params)
    store = ResultStore(result_storage=cache.storage(), serializer=ChecksummedPickle())
    store.write({"rows": [1.0]}, key=class_cache_key(params))
    assert cache.has(params)
    assert not ClassCache(cache.url, refresh=True).has(params)  # retrain: never read back
    record = Path(cache.record_path(params))
    text = record.read_bytes()
    i = text.index(b'"result":"') + 80  # inside the payload, past the digest
    record.write_bytes(text[:i] + (b"A" if text[i : i + 1] != b"A" else b"B") + text[i + 1 :])
    assert not cache.has(params)
    record.unlink()
    assert not cache.has(params)


def test_a_reused_result_takes_this_runs_ids_and_labels():
    import numpy as np

    from flows.train import ClassResult, as_reused
    from storage.report_schema import scores_from_arrays
    from tests.fixtures.rows import make_rows

    rows = make_rows("first-run", n=1, suite="table1", variant="")
    scores = scores_from_arrays(
        run_id="first-run",
        dataset="mvtec_ad",
        backbone=rows[0].backbone,
        class_name="cat0",
        image_ids=["a", "b"],
        scores=np.array([0.1, 0.9]),
        labels=np.array([0, 1]),
    )
    job = ClassJob("url-a", "cat0", variant="views=noise_all", suite="table5")
    again = as_reused(ClassResult(rows, scores), job, run_id="second-run", flow_run_id="f2")
    assert [r.value for r in again.metrics] == [r.value for r in rows]
    assert [r.config_hash for r in again.metrics] == [r.config_hash for r in rows]
    for row in again.metrics:
        assert (row.run_id, row.flow_run_id, row.reused, row.computed_by_run_id) == (
            "second-run",
            "f2",
            True,
            "first-run",
        )
        assert (row.suite, row.variant) == ("table5", "views=noise_all")
    assert set(again.scores.column("run_id").to_pylist()) == {"second-run"}
    assert again.scores.column("score").to_pylist() == [0.1, 0.9]
    # read back twice: still the run that computed it
    twice = as_reused(again, job, run_id="third-run", flow_run_id=None)
    assert {r.computed_by_run_id for r in twice.metrics} == {"first-run"}
