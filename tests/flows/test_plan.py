"""`generalad reproduce --plan` / `plan_only`: the counts against a hand count, missing datasets counted at their
official sizes, the estimate's arithmetic, and that planning extracts, trains and writes nothing."""

from __future__ import annotations

import pytest

from flows.plan import Calibration
from flows.plan_build import plan_suite
from flows.plan_report import format_duration, render_plan

# a calibration that makes the arithmetic checkable by hand: 0.1 s per backbone image, 2 s per training step
# of 4 images with 3 views, 0.01 s per scored image
FAKE = Calibration(backbone_s_per_image=0.1, step_s=2.0, batch=4, views=3, score_s_per_image=0.01)


def fake_calibrate(*args, **kwargs) -> Calibration:
    return FAKE


def test_quickstart_plan_matches_a_hand_count(data_home, tmp_path, monkeypatch) -> None:
    import flows.runtime

    monkeypatch.setattr(flows.runtime, "_cores", lambda: 2)  # the run's LocalCluster: 2 workers x 1 thread
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    plan = plan_suite("quickstart", store=str(tmp_path / "stores"), device="cpu", calibrate_fn=fake_calibrate)
    # quickstart: brick, grass, gravel; each 24 normal training images + 6 normal and 10 defective test images
    assert [(s.category, s.images, s.state) for s in plan.stores] == [
        ("brick", 40, "to extract"),
        ("grass", 40, "to extract"),
        ("gravel", 40, "to extract"),
    ]
    # 20 epochs (the suite's), batch 16, an epoch = 24 // 16 = 1 step (drop_last), evaluated every epoch
    assert {
        (t.n_train, t.n_test, t.epochs, t.steps, t.batch_size, t.views, t.evaluations) for t in plan.tasks
    } == {(24, 16, 20, 20, 16, 3, 20)}
    assert plan.totals == {
        "stores": 3,
        "stores_to_extract": 3,
        "images_to_extract": 120,
        "tasks": 3,
        "training_steps": 60,
        "test_evaluations": 60,
        "test_images_scored": 960,
    }
    est = plan.estimate()
    assert est["extract_s"] == pytest.approx(120 * 0.1)
    # per task: 20 steps x 2 s x (16 / 4 images) + 20 evaluations x 16 images x 0.01 s; three tasks on two
    # workers: two rounds
    assert (plan.train_lanes, plan.train_threads) == (2, 1)
    assert est["train_s"] == pytest.approx(2 * (20 * 2.0 * 4 + 20 * 16 * 0.01))
    assert est["total_s"] == pytest.approx(est["extract_s"] + est["train_s"] + est["startup_s"])
    assert not (tmp_path / "stores").exists()  # nothing extracted


def test_table1_plan_counts_missing_datasets_and_says_how_long(data_home, tmp_path) -> None:
    # ViT-S at 518 on this machine's CPU: about 51 s per training step of 16 (bench/train_step.py)
    slow = Calibration(backbone_s_per_image=0.7, step_s=51.0, batch=16, views=3, score_s_per_image=0.3)
    plan = plan_suite("table1", store=str(tmp_path), device="cpu", calibrate_fn=lambda *a, **k: slow)
    assert len(plan.missing) == 10  # no dataset root is set in this session
    # classes per backbone: cifar10 10, cifar100 20, fmnist 10, view 6, aircraft 10, cars 20, mvtec_ad 15,
    # mvtec_loco 5, visa 12, mpdd 6 = 114; three backbones
    assert len(plan.tasks) == 3 * 114 and all(t.nominal for t in plan.tasks)
    mvtec_s = [t for t in plan.tasks if t.dataset == "mvtec_ad" and t.backbone == "vit_small_patch14_dinov2"]
    assert len(mvtec_s) == 15 and {t.steps for t in mvtec_s} == {160 * (242 // 16)}
    text = render_plan(plan)
    assert "missing dataset" in text and "Estimated wall time" in text
    assert "months" in text or "years" in text
    assert list(tmp_path.iterdir()) == []


def test_durations_say_the_plain_unit() -> None:
    assert format_duration(90) == "90 s (1.5 min)"
    assert "days" in format_duration(5 * 86400)
    assert "months" in format_duration(8 * 30.44 * 86400)


@pytest.mark.slow
def test_cli_plan_calibrates_and_starts_no_server(data_home, tmp_path, monkeypatch, capsys) -> None:
    import flows.runtime

    def no_server(*args, **kwargs):
        raise AssertionError("--plan must not start a Prefect server")

    monkeypatch.setattr(flows.runtime, "local_prefect_server", no_server)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from generalad.cli import main

    store = tmp_path / "stores"
    assert main(["reproduce", "--suite", "smoke", "--plan", "--store", str(store), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Plan of suite 'smoke' on cpu" in out and "Calibration on cpu" in out
    assert "quickstart/brick" in out and "Estimated wall time on cpu" in out
    assert not store.exists()


@pytest.mark.slow
def test_flow_plan_only_returns_the_plan_and_does_nothing(prefect_api, data_home, tmp_path) -> None:
    from flows.reproduce import reproduce_all

    store, reports = tmp_path / "stores", tmp_path / "reports"
    result = reproduce_all(
        suite="smoke", store=str(store), reports=str(reports), device="cpu", plan_only=True
    )
    assert result["totals"]["tasks"] == 1 and result["totals"]["training_steps"] == 1  # 1 epoch, 24 // 16
    assert result["estimate"]["total_s"] > result["estimate"]["startup_s"]
    assert "Estimated wall time" in result["plan"]
    assert not store.exists() and not reports.exists()
