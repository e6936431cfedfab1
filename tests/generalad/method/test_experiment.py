"""evaluate / run_one_class, and a run where real feature-space distortions are the anomalies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generalad.errors import TrainingError
from generalad.method.distortions import make_view
from generalad.method.evaluation import evaluate
from generalad.method.experiment import run_one_class
from generalad.method.feature_source import InMemoryFeatures
from generalad.method.metrics import image_auroc
from generalad.method.presets import preset_for
from generalad.method.scoring import image_scores, patch_logits
from generalad.method.split import OneClassSplit
from generalad.method.training import build_discriminator


def _masks(n: int, size: int, labels: np.ndarray) -> np.ndarray:
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in np.flatnonzero(labels):
        masks[i, 2 + i % 3 : 6 + i % 3, 3:7] = 255
    return masks


def test_evaluate_image_and_pixel_metrics(tiny_source, tiny_split, tiny_preset):
    torch.manual_seed(0)
    model = build_discriminator(16, 8, tiny_preset).eval()
    masks = _masks(16, 12, tiny_split.test_labels)
    ev = evaluate(model, tiny_source, tiny_split, top_k=4, masks=masks)
    scores = image_scores(patch_logits(model, tiny_source, tiny_split.test_rows), 4).double().numpy()
    np.testing.assert_array_equal(ev.scores, scores)
    assert ev.metrics["image_auroc"] == image_auroc(scores, tiny_split.test_labels)
    assert set(ev.metrics) == {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro"}
    assert ev.image_size == 12
    frame = ev.scores_frame()
    assert list(frame.columns) == ["row", "score", "label"] and frame["row"].tolist() == list(range(32, 48))
    assert set(evaluate(model, tiny_source, tiny_split, top_k=None).metrics) == {
        "image_auroc",
        "image_ap",
        "image_f1_max",
    }


def test_split_without_anomalies_fails_before_training(tiny_source, tiny_split, tiny_preset):
    normal_only = OneClassSplit("0", tiny_split.train_rows, tiny_split.test_rows, np.zeros(16, dtype=np.int8))
    with pytest.raises(TrainingError, match="AUROC undefined"):
        run_one_class(tiny_source, normal_only, tiny_preset, progress=False)
    with pytest.raises(TrainingError, match="AUROC undefined"):
        evaluate(build_discriminator(16, 8, tiny_preset), tiny_source, normal_only, top_k=4)


def test_run_one_class_selections(tiny_source, tiny_split, tiny_preset):
    preset = tiny_preset.with_overrides(epochs=3)
    masks = _masks(16, 12, tiny_split.test_labels)
    every = run_one_class(tiny_source, tiny_split, preset, eval_every_epoch=True, masks=masks, progress=False)
    last_only = run_one_class(tiny_source, tiny_split, preset, masks=masks, progress=False)

    assert [m["epoch"] for m in every.epoch_metrics] == [1, 2, 3]
    best_epoch = 1 + int(np.argmax([m["image_auroc"] for m in every.epoch_metrics]))
    assert every.best_epoch == best_epoch and last_only.best_epoch is None
    by_key = {(r["selection"], r["metric"]): r for r in every.metrics}
    assert by_key[("best_on_test", "image_auroc")]["value"] == max(
        m["image_auroc"] for m in every.epoch_metrics
    )
    assert by_key[("best_on_test", "image_auroc")]["epoch"] == best_epoch
    assert by_key[("last", "image_auroc")]["value"] == every.epoch_metrics[-1]["image_auroc"]
    assert {r["selection"] for r in last_only.metrics} == {"last"}
    for row in every.metrics:
        assert {"metric", "value", "selection", "epoch", "n_test", "n_anomalous"} <= set(row)
        assert row["n_test"] == 16 and row["n_anomalous"] == 6
    # evaluating every epoch does not change training: `last` is identical either way
    assert [r for r in every.metrics if r["selection"] == "last"] == last_only.metrics
    assert every.scores.equals(last_only.scores)
    assert list(every.scores.columns) == ["row", "score", "label"]
    assert every.epochs == 3 and len(every.history) == 3


def test_fewshot_run(tiny_source, tiny_split, tiny_preset):
    result = run_one_class(tiny_source, tiny_split, tiny_preset, shots=4, seed=10, progress=False)
    assert len(result.train_rows) == 4 and result.batch_size == 4 and result.shots == 4
    assert set(result.train_rows) <= set(tiny_split.train_rows)


def _low_rank_normals(rng: np.random.Generator, n: int, num_patches: int, dim: int) -> np.ndarray:
    """A fixed low-rank normal distribution: per-position mean + 4-d shared subspace + tiny residual."""
    return 0.3 * (rng.standard_normal((n, num_patches, 4)) @ _BASIS + _MEAN) + 0.02 * rng.standard_normal(
        (n, num_patches, dim)
    )


_SETUP = np.random.default_rng(1234)
_BASIS = _SETUP.standard_normal((4, 64)) / 2.0
_MEAN = 0.5 * _SETUP.standard_normal((16, 64))


def test_learns_to_detect_real_feature_distortions():
    """Anomalies are noise_all / noise_random copies of held-out normals; image AUROC >= 0.95.

    Features: N=16 patches of width E=64 from a fixed low-rank distribution. The discriminator leaves its
    loss plateau after ~100 steps at lr 5e-4 on such data, so this test uses lr 3e-3 and a small MLP to stay
    within a few seconds (10 epochs of 16 steps).
    """
    rng = np.random.default_rng(0)
    train = _low_rank_normals(rng, 256, 16, 64)
    held_out = torch.from_numpy(_low_rank_normals(rng, 40, 16, 64).astype(np.float32))
    g = torch.Generator().manual_seed(1)
    noised_all = make_view("noise_all", held_out[:20], generator=g).features
    noised_some = make_view("noise_random", held_out[20:], generator=g).features
    test = torch.cat([held_out, noised_all, noised_some]).numpy()
    source = InMemoryFeatures(np.concatenate([train, test]).astype(np.float32))
    split = OneClassSplit(
        normal_class="normal",
        train_rows=np.arange(256),
        test_rows=np.arange(256, 336),
        test_labels=np.r_[np.zeros(40), np.ones(40)].astype(np.int8),
    )
    preset = preset_for("quickstart").with_overrides(lr=3e-3, mlp_dim=128, top_k=4, epochs=10)
    result = run_one_class(source, split, preset, progress=False)
    auroc = {r["metric"]: r["value"] for r in result.metrics}["image_auroc"]
    assert auroc >= 0.95, (auroc, result.history)


def test_pixel_selection_is_the_best_pixel_epoch_of_the_same_run(tiny_source, tiny_split, tiny_preset):
    from generalad.errors import ConfigError
    from generalad.method.evaluation import pixel_auroc_of_logits

    preset = tiny_preset.with_overrides(epochs=4)
    masks = _masks(16, 12, tiny_split.test_labels)
    run = run_one_class(
        tiny_source,
        tiny_split,
        preset,
        eval_every_epoch=True,
        select_on_pixel=True,
        masks=masks,
        progress=False,
    )
    plain = run_one_class(tiny_source, tiny_split, preset, eval_every_epoch=True, masks=masks, progress=False)
    # selecting on pixels does not change training: the same last-epoch values as a run without it
    last = {r["metric"]: r["value"] for r in run.metrics if r["selection"] == "last"}
    assert last == {r["metric"]: r["value"] for r in plain.metrics if r["selection"] == "last"}
    per_epoch = [m["pixel_auroc"] for m in run.epoch_metrics]
    best = int(np.argmax(per_epoch))  # the first maximum: the earliest epoch on ties
    row = next(
        r for r in run.metrics if r["selection"] == "best_on_test_pixel" and r["metric"] == "pixel_auroc"
    )
    assert row["epoch"] == run.epoch_metrics[best]["epoch"] and row["value"] == per_epoch[best]
    # the last epoch's per-epoch pixel AUROC is the `last` selection's value
    assert per_epoch[-1] == pytest.approx(last["pixel_auroc"], abs=1e-12)
    assert set(run.evaluations) == {"last", "best_on_test", "best_on_test_pixel"}
    assert pixel_auroc_of_logits(
        patch_logits(run.model, tiny_source, tiny_split.test_rows), masks
    ) == pytest.approx(last["pixel_auroc"], abs=1e-12)
    with pytest.raises(ConfigError, match="select_on_pixel"):
        run_one_class(tiny_source, tiny_split, preset, select_on_pixel=True, masks=masks, progress=False)
