"""`weights=auto` on a schedule: a random backbone only for the offline suites; a paper suite without its
pretrained weights fails before any work, naming how to provide them, unless `weights=random` is explicit."""

from __future__ import annotations

import pytest

import generalad.backbone
from flows.extract import suite_weights
from flows.suites import Suite, SuiteEntry, get_suite
from generalad.errors import WeightsError
from storage.reports import ReportStore


@pytest.fixture
def hub(monkeypatch):
    """The hub weights' availability, per backbone name (default: none are cached or reachable)."""
    available: set[str] = set()

    def hub_file(repo: str):
        if not any(name in repo for name in available):
            raise WeightsError(f"{repo}: not cached, hub unreachable")
        return "/cache/model.safetensors"

    monkeypatch.setattr(generalad.backbone, "_hub_weights_file", hub_file)
    return available


def test_a_paper_suite_without_pretrained_weights_fails_naming_the_ways_out(hub):
    suite = get_suite("table1")
    with pytest.raises(WeightsError) as caught:
        suite_weights(suite, suite.entries, "auto")
    message = str(caught.value)
    assert "weights=FILE" in message and "weights=random" in message
    for backbone in ("vit_small_patch14_dinov2", "vit_base_patch14_dinov2", "vit_large_patch14_dinov2"):
        assert backbone in message


def test_a_paper_suite_with_its_weights_at_hand_uses_them(hub):
    suite = get_suite("table1")
    hub.update(e.backbone for e in suite.entries)
    assert set(suite_weights(suite, suite.entries, "auto").values()) == {"hub"}
    hub.discard("vit_base_patch14_dinov2")  # one backbone missing: the whole suite fails, naming it
    with pytest.raises(WeightsError, match="vit_base_patch14_dinov2") as caught:
        suite_weights(suite, suite.entries, "auto")
    assert "vit_small_patch14_dinov2" not in str(caught.value)


def test_explicit_random_or_a_file_is_taken_as_given(hub):
    suite = get_suite("table1")
    assert set(suite_weights(suite, suite.entries, "random").values()) == {"random"}
    assert set(suite_weights(suite, suite.entries, "/w/vit.safetensors").values()) == {"/w/vit.safetensors"}


def test_offline_suites_fall_back_to_random(hub):
    for name in ("quickstart", "smoke"):
        suite = get_suite(name)
        assert suite.offline
        assert set(suite_weights(suite, suite.entries, "auto").values()) == {"random"}
    assert not any(get_suite(n).offline for n in ("table1", "table2", "table3", "table4", "table5", "fig4"))


@pytest.mark.slow
def test_the_flow_fails_before_any_work(prefect_api, data_home, hub, tmp_path, monkeypatch):
    from flows import reproduce

    paper_like = Suite(
        "paper-like",
        "one quickstart class, no weights fixed, not offline",
        (SuiteEntry(dataset="quickstart", categories=("brick",), image_size=56, epochs=1),),
    )
    monkeypatch.setattr(reproduce, "get_suite", lambda name: paper_like)
    with pytest.raises(WeightsError, match="weights=FILE"):
        reproduce.reproduce_all(
            suite="paper-like", reports=str(tmp_path / "reports"), store=str(tmp_path / "s")
        )
    assert not (tmp_path / "s").exists()  # nothing extracted, nothing cached
    assert ReportStore(str(tmp_path / "reports")).read_metrics().empty
