"""Crash-safe extraction: whatever point a writer dies at, the rerun finishes the store with exactly the values of
an uninterrupted run and recomputes no shard whose marker was written (bench/faults.py does this at random times;
these are the fixed points, one of them with a real SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import zarr

from generalad.errors import StoreError
from storage import feature_store, urls
from storage.extraction import plan_store
from storage.feature_store import COMPLETE_FILE, SHARDS_DIR
from tests.fixtures.processes import fork_context
from tests.fixtures.stores import (
    SHARD,
    TINY_SPEC,
    assert_same_values,
    extract,
    markers,
    published,
    store_values,
)


@pytest.fixture()
def reference(tiny_adapter, tmp_path) -> dict[str, np.ndarray]:
    """The values of an uninterrupted run."""
    return store_values(extract(tiny_adapter, tmp_path / "reference").url)


def test_writer_killed_before_creating_the_arrays_is_finished_by_the_rerun(
    tiny_adapter, tmp_path, reference, monkeypatch
) -> None:
    class Killed(BaseException):
        pass

    def die(self, *args, **kwargs):
        raise Killed  # the group and its attributes exist, no array does

    with monkeypatch.context() as patch:
        patch.setattr(zarr.Group, "create_array", die)
        with pytest.raises(Killed):
            extract(tiny_adapter, tmp_path / "stores")
    url, _ = plan_store(tiny_adapter, TINY_SPEC, str(tmp_path / "stores"))
    assert (Path(url) / "zarr.json").is_file() and not (Path(url) / "tokens").exists()
    result = extract(tiny_adapter, tmp_path / "stores")
    assert result.images_extracted == 8
    assert_same_values(result.url, reference)


def test_rerun_with_another_shard_size_resumes_in_the_stores_own_shards(
    tiny_adapter, tmp_path, reference
) -> None:
    full = extract(tiny_adapter, tmp_path / "stores", shard_size=SHARD)
    os.remove(Path(full.url) / COMPLETE_FILE)
    os.remove(Path(full.url) / SHARDS_DIR / "00003.json")
    kept = {s: m for s, m in markers(full.url).items()}
    resumed = extract(tiny_adapter, tmp_path / "stores", shard_size=3)
    assert (resumed.images_extracted, resumed.shards_written, resumed.shards_skipped) == (2, 1, 3)
    assert {s: markers(full.url)[s] for s in kept} == kept
    assert_same_values(resumed.url, reference)


def test_corrupted_shard_is_rewritten_by_the_rerun_the_error_asks_for(
    tiny_adapter, tmp_path, reference
) -> None:
    full = extract(tiny_adapter, tmp_path / "stores")
    os.remove(Path(full.url) / COMPLETE_FILE)
    zarr.open_group(urls.zarr_store(full.url), mode="r+")["cls_attn"][5] = 0.0  # shard 2, after its marker
    with pytest.raises(StoreError, match="shard 2 does not match its checksum.*rerun"):
        extract(tiny_adapter, tmp_path / "stores")
    assert not published(tmp_path / "stores")
    before = markers(full.url)
    resumed = extract(tiny_adapter, tmp_path / "stores")
    assert (resumed.images_extracted, resumed.shards_written) == (2, 1)
    assert {s: m for s, m in markers(full.url).items() if s != 2} == {s: m for s, m in before.items()}
    assert_same_values(resumed.url, reference)


def test_temporary_files_of_a_killed_writer_are_removed_by_the_rerun(
    tiny_adapter, tmp_path, reference
) -> None:
    full = extract(tiny_adapter, tmp_path / "stores")
    store = Path(full.url)
    os.remove(store / COMPLETE_FILE)
    os.remove(store / SHARDS_DIR / "00001.json")
    leftovers = [
        store / SHARDS_DIR / f"00001.json.tmp-{'a' * 32}",  # ours: written, never renamed
        store / f"{COMPLETE_FILE}.tmp-{'b' * 32}",
        store / "tokens" / "c" / "1" / "0" / f"0.{'c' * 32}.partial",  # zarr's
    ]
    for path in leftovers:
        path.write_bytes(b"half a file")
    resumed = extract(tiny_adapter, tmp_path / "stores")
    assert resumed.images_extracted == 2
    assert not [p for p in leftovers if p.exists()]
    assert_same_values(resumed.url, reference)


def test_complete_marker_of_another_key_is_never_reused(tiny_adapter, tmp_path) -> None:
    full = extract(tiny_adapter, tmp_path / "stores")
    marker = Path(full.url) / COMPLETE_FILE
    marker.write_text(json.dumps({"key": "0" * 64, "num_images": 8}))
    with pytest.raises(StoreError, match=f"{full.url}.*complete for store key '0000"):
        extract(tiny_adapter, tmp_path / "stores")


def _killed_at_marker(adapter, store_root: str, shard: int) -> None:
    """Child process: extract, and SIGKILL itself after shard `shard`'s marker temp file, before the rename."""
    real = urls.write_bytes_atomic

    def write_bytes_atomic(url: str, data: bytes) -> None:
        if url.endswith(f"{SHARDS_DIR}/{shard:05d}.json"):
            Path(f"{url}.tmp-{'d' * 32}").write_bytes(data)
            os.kill(os.getpid(), signal.SIGKILL)
        real(url, data)

    feature_store.urls.write_bytes_atomic = write_bytes_atomic
    extract(adapter, store_root)


def test_sigkill_between_a_marker_and_its_rename_loses_nothing(tiny_adapter, tmp_path, reference) -> None:
    root = str(tmp_path / "stores")
    child = fork_context().Process(target=_killed_at_marker, args=(tiny_adapter, root, 2))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    assert not published(root)
    url, _ = plan_store(tiny_adapter, TINY_SPEC, root)
    done = markers(url)
    assert sorted(done) == [0, 1]  # shard 2's bytes are written, its marker is not
    resumed = extract(tiny_adapter, root)
    assert (resumed.images_extracted, resumed.shards_written, resumed.shards_skipped) == (4, 2, 2)
    assert {s: markers(url)[s] for s in done} == done  # the completed shards were not rewritten
    assert_same_values(url, reference)
