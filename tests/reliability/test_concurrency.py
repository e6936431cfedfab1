"""Concurrent extractions: two of one store key end with one complete, valid store built once, and a second
writer waits for the lock. Real processes (forked, so they start fast). Concurrent report writers:
tests/storage/test_reports_concurrency.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

from storage.extraction import _writer_lock, plan_store
from tests.fixtures.processes import fork_context
from tests.fixtures.stores import TINY_SPEC, extract, published, store_values

TIMEOUT_S = 120


def _extract_child(adapter, root: str, out: str, barrier=None) -> None:
    if barrier is not None:
        barrier.wait(timeout=TIMEOUT_S)
    result = extract(adapter, root)
    Path(out).write_text(json.dumps({"url": result.url, "images_extracted": result.images_extracted}))


def _run(procs) -> None:
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=TIMEOUT_S)
        assert proc.exitcode == 0


def test_two_processes_extracting_one_store_build_it_once(tiny_adapter, tmp_path) -> None:
    reference = store_values(extract(tiny_adapter, tmp_path / "reference").url)
    root = str(tmp_path / "stores")
    ctx = fork_context()
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    _run([ctx.Process(target=_extract_child, args=(tiny_adapter, root, str(o), barrier)) for o in outs])
    results = [json.loads(o.read_text()) for o in outs]
    assert results[0]["url"] == results[1]["url"]
    assert sorted(r["images_extracted"] for r in results) == [0, 8]  # one did the work, the other reused it
    assert len(published(root)) == 1
    got = store_values(results[0]["url"])
    for name, expected in reference.items():
        assert (got[name] == expected).all(), name


def test_a_second_writer_waits_for_the_lock(tiny_adapter, tmp_path) -> None:
    root = str(tmp_path / "stores")
    url, _ = plan_store(tiny_adapter, TINY_SPEC, root)
    out = tmp_path / "out.json"
    child = fork_context().Process(target=_extract_child, args=(tiny_adapter, root, str(out)))
    with _writer_lock(url):
        child.start()
        time.sleep(1.5)
        assert child.is_alive() and not Path(url).exists()  # blocked before touching the store
    child.join(timeout=TIMEOUT_S)
    assert child.exitcode == 0 and json.loads(out.read_text())["images_extracted"] == 8
