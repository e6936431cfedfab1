"""Evaluate a discriminator on the test rows of a one-class split (docs/method.md section 5).

``evaluate`` = ``patch_logits`` (batched, eval mode) + ``evaluate_logits``. The logits (n_test, N) are all an
evaluation needs, so a caller that evaluates every epoch can keep the logits of the best epoch and compute the
costly pixel metrics only for the epochs it reports. Pixel maps are built in batches and kept as float32
(n_test x S x S x 4 bytes: about 107 MB for 100 images at 518).

An evaluation every epoch would read the same test features from the store every epoch; ``hold_features``
reads them once and keeps them on the training device (or in RAM when the device has no room), and returns None
when they fit neither budget (`generalad.devices.memory_budget`), in which case the caller streams them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from generalad.devices import DEFAULT_PRECISION, autocast, memory_budget, pin_if_cuda
from generalad.errors import ConfigError, TrainingError
from generalad.method.feature_source import FeatureSource
from generalad.method.metrics import aupro, average_precision, f1_max, image_auroc, pixel_auroc
from generalad.method.scoring import anomaly_maps, image_scores, patch_logits
from generalad.method.split import OneClassSplit

__all__ = [
    "Evaluation",
    "HeldFeatures",
    "evaluate",
    "evaluate_logits",
    "pixel_auroc_of_logits",
    "hold_features",
    "IMAGE_METRICS",
    "PIXEL_METRICS",
]

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "aupro")


@dataclass(frozen=True)
class Evaluation:
    """Per-image scores and metric values of one evaluation.

    Attributes:
        rows: test row indices (into the feature source / manifest), split order.
        scores: image scores (float64), aligned with ``rows``.
        labels: 1 = anomalous (int8), aligned with ``rows``.
        metrics: metric name -> value: image_auroc, image_ap, image_f1_max, and pixel_auroc, aupro when masks
            were given.
        image_size: the pixel-metric resolution S, or None without masks.
    """

    rows: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)
    image_size: int | None = None

    def scores_frame(self) -> pd.DataFrame:
        """Columns row (int64), score (float64), label (int8)."""
        return pd.DataFrame(
            {
                "row": self.rows.astype(np.int64),
                "score": self.scores.astype(np.float64),
                "label": self.labels.astype(np.int8),
            }
        )


class HeldFeatures:
    """Test tokens read once, resident on the scoring device or in (pinned) RAM, scored as often as needed."""

    def __init__(self, tokens: torch.Tensor, device: torch.device, *, batch_size: int = 64) -> None:
        self.tokens = tokens
        self.device = device
        self.batch_size = batch_size

    @property
    def nbytes(self) -> int:
        return self.tokens.numel() * self.tokens.element_size()

    def logits(self, model: nn.Module, *, precision: str = DEFAULT_PRECISION) -> torch.Tensor:
        """What ``patch_logits(model, source, rows)`` returns (same batches, so the same values)."""
        was_training = model.training
        model.eval()
        out = []
        try:
            with torch.inference_mode(), autocast(self.device, precision):
                for start in range(0, len(self.tokens), self.batch_size):
                    chunk = self.tokens[start : start + self.batch_size]
                    out.append(model(chunk.to(self.device, non_blocking=True)).float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.tokens.shape[1])


def hold_features(
    source: FeatureSource,
    rows: np.ndarray,
    device: torch.device,
    *,
    batch_size: int = 64,
    budget_bytes: int | None = None,
) -> HeldFeatures | None:
    """The tokens of ``rows`` read once: on ``device`` when they fit its budget, else in host RAM when they fit
    that, else None (stream them each time). ``budget_bytes`` overrides both budgets (tests)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    need = len(rows) * source.num_patches * source.embed_dim * 4  # float32
    on_device = need <= (memory_budget(device) if budget_bytes is None else budget_bytes)
    host = torch.device("cpu")
    if not on_device and (
        device.type == "cpu" or need > (memory_budget(host) if budget_bytes is None else 0)
    ):
        return None
    place = device if on_device else host
    tokens = torch.empty((len(rows), source.num_patches, source.embed_dim), dtype=torch.float32, device=place)
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    start = 0
    batch_iter = source.iter_batches(batches)
    try:
        for batch, _ in batch_iter:
            tokens[start : start + len(batch)] = batch.to(place, non_blocking=True)
            start += len(batch)
    finally:
        close = getattr(batch_iter, "close", None)
        if close is not None:
            close()
    return HeldFeatures(tokens if on_device else pin_if_cuda(tokens, device), device, batch_size=batch_size)


def _check_masks(masks: np.ndarray, n_test: int, image_size: int | None) -> int:
    if masks.ndim != 3 or masks.shape[0] != n_test or masks.shape[1] != masks.shape[2]:
        raise ConfigError(f"masks must be (n_test={n_test}, S, S), got shape {masks.shape}")
    if image_size is not None and masks.shape[1] != image_size:
        raise ConfigError(f"masks are {masks.shape[1]} x {masks.shape[2]} but image_size={image_size}")
    return int(masks.shape[1])


def evaluate_logits(
    logits: torch.Tensor,
    split: OneClassSplit,
    *,
    top_k: int | None,
    masks: np.ndarray | None = None,
    image_size: int | None = None,
    map_batch_size: int = 16,
) -> Evaluation:
    """Metrics from test-set patch logits (n_test, N) aligned with ``split.test_rows``.

    Args:
        logits: patch logits of the test rows, in split order.
        split: the one-class split (test rows and labels).
        top_k: image score = mean of the top-k logits; None = all patches.
        masks: optional ground truth (n_test, S, S), non-zero = anomalous, aligned with ``split.test_rows``;
            adds pixel_auroc and aupro at S x S.
        image_size: S; defaults to the masks' size (must match it when both are given).
        map_batch_size: images per batch when building pixel maps.
    """
    rows = np.asarray(split.test_rows, dtype=np.int64)
    labels = np.asarray(split.test_labels, dtype=np.int8)
    if len(rows) == 0:
        raise TrainingError(f"class {split.normal_class!r}: the test split is empty (AUROC undefined)")
    if logits.shape[0] != len(rows) or len(labels) != len(rows):
        raise ConfigError(f"{logits.shape[0]} logit rows and {len(labels)} labels for {len(rows)} test rows")
    scores = image_scores(logits, top_k).double().numpy()
    metrics = {
        "image_auroc": image_auroc(scores, labels),
        "image_ap": average_precision(scores, labels),
        "image_f1_max": f1_max(scores, labels),
    }
    size = None
    if masks is not None:
        masks = np.asarray(masks)
        size = _check_masks(masks, len(rows), image_size)
        maps = _maps(logits, size, map_batch_size)
        metrics["pixel_auroc"] = pixel_auroc(maps, masks)
        metrics["aupro"] = aupro(maps, masks)
    return Evaluation(rows=rows, scores=scores, labels=labels, metrics=metrics, image_size=size)


def _maps(logits: torch.Tensor, size: int, map_batch_size: int) -> np.ndarray:
    maps = np.empty((logits.shape[0], size, size), dtype=np.float32)
    for start in range(0, logits.shape[0], map_batch_size):
        chunk = logits[start : start + map_batch_size]
        maps[start : start + len(chunk)] = anomaly_maps(chunk, size).numpy()
    return maps


def pixel_auroc_of_logits(
    logits: torch.Tensor, masks: np.ndarray, *, image_size: int | None = None, map_batch_size: int = 16
) -> float:
    """Pixel AUROC of test-set patch logits against masks (n_test, S, S): what a per-epoch pixel selection needs
    (no AUPRO, which is computed only for the epochs reported)."""
    masks = np.asarray(masks)
    size = _check_masks(masks, logits.shape[0], image_size)
    return pixel_auroc(_maps(logits, size, map_batch_size), masks)


def evaluate(
    model: nn.Module,
    source: FeatureSource,
    split: OneClassSplit,
    *,
    top_k: int | None,
    masks: np.ndarray | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    precision: str = DEFAULT_PRECISION,
) -> Evaluation:
    """Score the split's test rows with ``model`` (eval mode) and compute the metrics.

    Args:
        model: the trained discriminator.
        source: feature source holding the test rows.
        split: the one-class split.
        top_k: image score = mean of the top-k logits; None = all patches.
        masks: optional ground truth (n_test, S, S) uint8 aligned with ``split.test_rows``.
        image_size: S for the pixel metrics (defaults to the masks' size).
        batch_size: test images per forward.
        precision: the forward's precision (`generalad.devices`).

    Raises:
        TrainingError: the test split is empty or lacks normal or anomalous images ("AUROC undefined").
    """
    labels = np.asarray(split.test_labels)
    if len(labels) and (labels.min() == labels.max()):
        kind = "anomalous" if labels[0] == 0 else "normal"
        raise TrainingError(
            f"class {split.normal_class!r}: the test split has no {kind} images (AUROC undefined)"
        )
    logits = patch_logits(model, source, split.test_rows, batch_size=batch_size, precision=precision)
    return evaluate_logits(logits, split, top_k=top_k, masks=masks, image_size=image_size)
