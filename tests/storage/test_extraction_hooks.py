"""The public hooks of extraction: `timings=` (seconds per phase) and `storage.faultpoints` (named points of the
write path where a fault can be injected)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from storage import faultpoints
from storage.extraction import EXTRACTION_PHASES, extract_features, plan_store
from storage.feature_store import FeatureStore
from storage.store_layout import COMPLETE_FILE, SHARDS_DIR
from storage.timing import PhaseTimer
from tests.fixtures.stores import TINY_SPEC

SHARD = 3  # the tiny adapter's 8 images: shards of 3, 3, 2


def _extract(adapter, root: Path, **kwargs):
    return extract_features(adapter, TINY_SPEC, str(root), shard_size=SHARD, progress=False, **kwargs)


def test_timings_hold_every_phase_and_the_main_thread_phases_fit_in_the_wall_time(
    tiny_adapter, tmp_path
) -> None:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    result = _extract(tiny_adapter, tmp_path / "stores", timings=timings)
    wall = time.perf_counter() - started
    assert set(timings) == set(EXTRACTION_PHASES)
    assert all(seconds > 0 for seconds in timings.values())
    # decoding runs in one background thread beside the others: each side fits in the wall time on its own
    main_thread = sum(s for phase, s in timings.items() if phase != "decode + resize")
    assert main_thread <= result.seconds <= wall
    assert timings["decode + resize"] <= wall
    # a complete store costs no phase at all: nothing is added
    before = dict(timings)
    assert _extract(tiny_adapter, tmp_path / "stores", timings=timings).reused
    assert timings == before


def test_phase_timer_sums_blocks_across_threads_and_does_nothing_without_totals() -> None:
    totals = {"sleep": 1.0}
    timer = PhaseTimer(totals)

    def work() -> None:
        with timer("sleep"):
            time.sleep(0.05)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1.0 + 4 * 0.05 <= totals["sleep"] < 1.0 + 4 * 0.05 + 1.0
    with pytest.raises(ZeroDivisionError), timer("failing"):
        1 / 0  # noqa: B018 - a failing block is timed too
    assert totals["failing"] >= 0.0
    untimed = PhaseTimer(None)
    with untimed("sleep"):
        pass
    assert untimed.totals is None


def test_fault_points_are_reached_in_write_order(tiny_adapter, tmp_path) -> None:
    events: list[tuple[str, str]] = []

    def record(point: str, where: dict) -> None:
        label = f"{where['shard']} {where['array']}" if point == "array-written" else where["url"]
        events.append((point, label.rsplit("/", 1)[-1]))

    with faultpoints.injected(record):
        _extract(tiny_adapter, tmp_path / "stores")
    store = Path(plan_store(tiny_adapter, TINY_SPEC, str(tmp_path / "stores"))[0]).name
    shards = [
        event
        for shard in range(3)
        for event in (
            ("array-written", f"{shard} tokens"),
            ("array-written", f"{shard} cls_attn"),
            ("array-written", f"{shard} masks"),
            ("temp-written", f"{shard:05d}.json"),
        )
    ]
    assert events == [
        ("group-ready", store),
        ("temp-written", "manifest.parquet"),
        ("temp-written", "splits.parquet"),
        *shards,
        ("verified", store),
        ("temp-written", COMPLETE_FILE),
    ]
    assert {point for point, _ in events} == set(faultpoints.POINTS)
    faultpoints.reach("verified", url="elsewhere")  # outside the context nothing listens
    assert len(events) == 5 + len(shards)


def test_a_fault_injected_mid_shard_stops_the_writer_there_and_the_rerun_finishes_the_store(
    tiny_adapter, tmp_path
) -> None:
    class Killed(BaseException):
        pass

    def kill_after_tokens_of_shard_1(point: str, where: dict) -> None:
        if point == "array-written" and (where["shard"], where["array"]) == (1, "tokens"):
            raise Killed

    with faultpoints.injected(kill_after_tokens_of_shard_1), pytest.raises(Killed):
        _extract(tiny_adapter, tmp_path / "stores")
    url, _ = plan_store(tiny_adapter, TINY_SPEC, str(tmp_path / "stores"))
    assert sorted(p.name for p in (Path(url) / SHARDS_DIR).iterdir()) == ["00000.json"]
    assert not (Path(url) / COMPLETE_FILE).exists()
    rerun = _extract(tiny_adapter, tmp_path / "stores")
    assert (rerun.images_extracted, rerun.shards_written, rerun.shards_skipped) == (5, 2, 1)
    reference = _extract(tiny_adapter, tmp_path / "reference")
    got, expected = FeatureStore(rerun.url), FeatureStore(reference.url)
    for ours, theirs in zip(got.read(range(8)), expected.read(range(8)), strict=True):
        assert ours.equal(theirs)
