"""One one-class experiment: train a discriminator on a split's normal rows, evaluate it, collect the results.

Model selection (docs/method.md section 4): ``last`` is the model after the final epoch (the honest protocol).
With ``eval_every_epoch=True`` the test set is scored after every epoch and ``best_on_test`` is the epoch with
the highest image AUROC (the earliest on ties), which is the reference's oracle selection; both come from the
same training run. With ``select_on_pixel=True`` (and masks) the pixel AUROC is computed after every epoch too, and
``best_on_test_pixel`` is the epoch with the highest pixel AUROC (earliest on ties): the selection behind the
paper's Table 2 pixel numbers (the reference's ``val_monitor=pixel_auroc``, docs/method.md section 7). Without
``eval_every_epoch`` only ``last`` is produced: choosing an epoch on the test set needs the per-epoch scores. Per-epoch evaluation keeps only logits; pixel metrics are computed once per
reported selection. Evaluating every epoch does not change training (the RNG state is preserved). The test
features are read once and held on the device (or in RAM) for all epochs, streamed when they fit neither.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from generalad.devices import DEFAULT_PRECISION, resolve_device
from generalad.errors import ConfigError, TrainingError
from generalad.method.discriminator import Discriminator
from generalad.method.evaluation import Evaluation, evaluate_logits, hold_features, pixel_auroc_of_logits
from generalad.method.feature_source import FeatureSource
from generalad.method.presets import Preset
from generalad.method.scoring import patch_logits
from generalad.method.split import OneClassSplit
from generalad.method.training import fewshot_rows, train_discriminator

__all__ = ["Selection", "RunResult", "run_one_class", "metric_rows"]

Selection = Literal["last", "best_on_test", "best_on_test_pixel"]


@dataclass
class RunResult:
    """Everything one experiment produced.

    Attributes:
        model: the discriminator after the last epoch (eval mode); the ``PatchCoreModel`` for the kNN method.
        preset: the settings used (``epochs`` already overridden when asked); ``PatchCoreSettings`` for kNN.
        seed: the run's seed.
        shots: few-shot size, or None for the full training set.
        normal_class: the split's normal class.
        train_rows: the rows trained on (the few-shot sample when ``shots`` is set).
        batch_size: images per step actually used.
        scores: per-image scores of the ``last`` selection: row, score, label.
        metrics: metric rows (metric, value, selection, epoch, n_test, n_anomalous, image_size).
        evaluations: selection -> Evaluation ("last", plus "best_on_test" with per-epoch evaluation, plus
            "best_on_test_pixel" when selecting on pixel AUROC).
        epoch_metrics: per-epoch image metrics (epoch, image_auroc, image_ap, image_f1_max, and pixel_auroc when
            selecting on it) when evaluated every epoch, else [].
        history: the training history (loss per epoch, lr, ...).
        train_seconds: training time, per-epoch evaluation excluded.
        eval_seconds: evaluation time, per-epoch evaluation included.
        device: the device that trained and scored (``cpu``, ``cuda:0``, ...).
        precision: the training and scoring precision (fp32, tf32, bf16, fp16).
    """

    model: Discriminator
    preset: Preset
    seed: int
    shots: int | None
    normal_class: str
    train_rows: np.ndarray
    batch_size: int
    scores: pd.DataFrame
    metrics: list[dict[str, Any]]
    evaluations: dict[str, Evaluation]
    epoch_metrics: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    device: str = "cpu"
    precision: str = DEFAULT_PRECISION

    @property
    def epochs(self) -> int:
        return self.preset.epochs

    @property
    def method(self) -> str:
        """The report's `method`: "generalad", or "patchcore_knn" (``generalad.method.knn_experiment``)."""
        return getattr(self.preset, "method", "generalad")

    @property
    def best_epoch(self) -> int | None:
        """The ``best_on_test`` epoch, None when the run was not evaluated every epoch."""
        return self.selection_epochs.get("best_on_test")

    @property
    def selection_epochs(self) -> dict[str, int]:
        return {row["selection"]: row["epoch"] for row in self.metrics}


def metric_rows(evaluation: Evaluation, *, selection: Selection, epoch: int) -> list[dict[str, Any]]:
    """Long-format rows of one evaluation: one dict per metric."""
    n_anomalous = int((evaluation.labels != 0).sum())
    return [
        {
            "metric": name,
            "value": float(value),
            "selection": selection,
            "epoch": int(epoch),
            "n_test": len(evaluation.labels),
            "n_anomalous": n_anomalous,
            "image_size": evaluation.image_size if name in ("pixel_auroc", "aupro") else None,
        }
        for name, value in evaluation.metrics.items()
    ]


def _check_test_labels(split: OneClassSplit) -> None:
    labels = np.asarray(split.test_labels)
    n_anomalous = int((labels != 0).sum())
    n_normal = len(labels) - n_anomalous
    if n_anomalous == 0 or n_normal == 0:
        raise TrainingError(
            f"class {split.normal_class!r}: the test split has {n_normal} normal and {n_anomalous} anomalous "
            "images; AUROC undefined"
        )


class _EpochTracker:
    """Scores the test set after each epoch and keeps the logits of the last and of the best epochs.

    The best image-AUROC epoch (earliest on ties) gives `best_on_test`; with `masks`, the best pixel-AUROC epoch
    gives `best_on_test_pixel`. Only logits are kept: the costly pixel metrics of a selection are computed once,
    at the end, for the epochs that are reported.
    """

    def __init__(self, split, top_k, test_logits, masks, image_size) -> None:
        self.split, self.top_k, self.test_logits = split, top_k, test_logits
        self.masks, self.image_size = masks, image_size
        self.epoch_metrics: list[dict[str, Any]] = []
        self.best = {"best_on_test": (-np.inf, None, None), "best_on_test_pixel": (-np.inf, None, None)}
        self.last_logits: torch.Tensor | None = None
        self.seconds = 0.0

    def observe(self, epoch: int, model: Discriminator) -> None:
        start = time.perf_counter()
        logits = self.test_logits(model)
        metrics = evaluate_logits(logits, self.split, top_k=self.top_k).metrics
        self.epoch_metrics.append({"epoch": epoch, **metrics})
        self._keep("best_on_test", metrics["image_auroc"], epoch, logits)
        if self.masks is not None:
            pixel = pixel_auroc_of_logits(logits, self.masks, image_size=self.image_size)
            self.epoch_metrics[-1]["pixel_auroc"] = pixel
            self._keep("best_on_test_pixel", pixel, epoch, logits)
        self.last_logits = logits
        self.seconds += time.perf_counter() - start

    def _keep(self, selection: str, value: float, epoch: int, logits: torch.Tensor) -> None:
        if value > self.best[selection][0]:  # strictly better: the earliest epoch wins ties
            self.best[selection] = (value, epoch, logits)


def _selected_evaluations(
    tracker, last_logits, split, preset, masks, image_size, eval_every_epoch, select_on_pixel
) -> tuple[dict[str, Evaluation], list[dict[str, Any]]]:
    """The full evaluation (pixel metrics included) of `last` and of each selected best epoch, and their rows."""
    evaluations = {
        "last": evaluate_logits(last_logits, split, top_k=preset.top_k, masks=masks, image_size=image_size)
    }
    rows = metric_rows(evaluations["last"], selection="last", epoch=preset.epochs)
    chosen = (["best_on_test"] if eval_every_epoch else []) + (
        ["best_on_test_pixel"] if select_on_pixel else []
    )
    for selection in chosen:
        _, best_epoch, logits = tracker.best[selection]
        if best_epoch == preset.epochs:
            best = evaluations["last"]
        else:
            best = evaluate_logits(logits, split, top_k=preset.top_k, masks=masks, image_size=image_size)
        evaluations[selection] = best
        rows += metric_rows(best, selection=selection, epoch=best_epoch)
    return evaluations, rows


def run_one_class(
    source: FeatureSource,
    split: OneClassSplit,
    preset: Preset,
    *,
    seed: int = 0,
    epochs: int | None = None,
    shots: int | None = None,
    eval_every_epoch: bool = False,
    select_on_pixel: bool = False,
    masks: np.ndarray | None = None,
    image_size: int | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    precision: str = DEFAULT_PRECISION,
) -> RunResult:
    """Train on ``split.train_rows`` (or a ``shots``-image sample of them), evaluate on ``split.test_rows``.

    Args:
        source: features of every row of the split.
        split: the one-class split.
        preset: training and scoring settings.
        seed: training seed, also the few-shot sampling seed.
        epochs: overrides ``preset.epochs``.
        shots: train on a seeded random sample of this many normal images.
        eval_every_epoch: score the test set after every epoch and also report ``best_on_test``.
        select_on_pixel: with ``eval_every_epoch`` and ``masks``, also compute the pixel AUROC every epoch and
            report ``best_on_test_pixel``; ConfigError without masks or per-epoch evaluation.
        masks: ground truth (n_test, S, S) aligned with ``split.test_rows``: adds pixel_auroc and aupro.
        image_size: S for the pixel metrics (defaults to the masks' size).
        progress: show a progress bar while training.
        device: training and scoring device (`generalad.devices.resolve_device`).
        precision: training and scoring precision: fp32 (default), tf32, bf16, fp16 (CUDA).

    Raises:
        TrainingError: the test split lacks normal or anomalous images (checked before training), or training
            failed.
    """
    _check_test_labels(split)
    if select_on_pixel and (masks is None or not eval_every_epoch):
        raise ConfigError("select_on_pixel needs ground-truth masks and eval_every_epoch=True")
    device = resolve_device(device)
    if epochs is not None:
        preset = preset.with_overrides(epochs=epochs)
    train_rows = np.asarray(split.train_rows, dtype=np.int64)
    if shots is not None:
        train_rows = fewshot_rows(train_rows, shots, seed)

    hold_start = time.perf_counter()
    held = hold_features(source, split.test_rows, device) if eval_every_epoch else None
    hold_seconds = time.perf_counter() - hold_start  # before training: not part of trained.seconds

    def test_logits(model: Discriminator) -> torch.Tensor:
        if held is not None:
            return held.logits(model, precision=precision)
        return patch_logits(model, source, split.test_rows, precision=precision)

    tracker = _EpochTracker(split, preset.top_k, test_logits, masks if select_on_pixel else None, image_size)
    trained = train_discriminator(
        source,
        train_rows,
        preset,
        seed=seed,
        device=device,
        on_epoch_end=tracker.observe if eval_every_epoch else None,
        progress=progress,
        precision=precision,
    )

    start = time.perf_counter()
    last_logits = tracker.last_logits if tracker.last_logits is not None else test_logits(trained.model)
    evaluations, rows = _selected_evaluations(
        tracker, last_logits, split, preset, masks, image_size, eval_every_epoch, select_on_pixel
    )
    eval_seconds = tracker.seconds + time.perf_counter() - start + hold_seconds

    return RunResult(
        model=trained.model,
        preset=preset,
        seed=seed,
        shots=shots,
        normal_class=split.normal_class,
        train_rows=train_rows,
        batch_size=trained.batch_size,
        scores=evaluations["last"].scores_frame(),
        metrics=rows,
        evaluations=evaluations,
        epoch_metrics=tracker.epoch_metrics,
        history=trained.history,
        train_seconds=trained.seconds - tracker.seconds,
        eval_seconds=eval_seconds,
        device=str(device),
        precision=precision,
    )
