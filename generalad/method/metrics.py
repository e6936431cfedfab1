"""Image and pixel metrics (docs/method.md section 5). Anomalous = 1; values are never rounded.

- ``image_auroc``, ``average_precision``: scikit-learn ``roc_auc_score`` / ``average_precision_score``.
- ``f1_max``: the largest F1 over every threshold of ``precision_recall_curve``.
- ``pixel_auroc``: ``roc_auc_score`` over every pixel of every test image (normal images included).
- ``aupro``: the MVTec definition, computed exactly: every distinct pixel score is a threshold (a pixel is
  predicted anomalous when its score >= the threshold); FPR = predicted-anomalous normal pixels / normal pixels
  over the whole test set; PRO = mean over the connected ground-truth regions (8-connectivity by default, as
  MVTec's ``scipy.ndimage.label`` with a 3 x 3 structure) of the fraction of the region predicted anomalous.
  The curve starts at (0, 0), the PRO is integrated over FPR in [0, fpr_limit] with the trapezoidal rule and a
  linearly interpolated end point at ``fpr_limit``, and the area is divided by ``fpr_limit`` (1.0 = perfect).
  Pixels with equal scores enter the curve together (one point per distinct score).

Every metric needs both classes: a test set without anomalous (or without normal) images / pixels raises
``TrainingError("... AUROC undefined ...")``. Non-finite scores raise ``TrainingError`` too.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from generalad.errors import ConfigError, TrainingError

__all__ = [
    "image_auroc",
    "average_precision",
    "f1_max",
    "pixel_auroc",
    "aupro",
    "pro_curve",
    "integrate_to_limit",
]


def _binary_inputs(
    scores: np.ndarray, labels: np.ndarray, *, what: str, unit: str
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ConfigError(f"{what}: {scores.size} scores for {labels.size} labels")
    labels = labels != 0
    n_anomalous = int(labels.sum())
    n_normal = labels.size - n_anomalous
    if n_anomalous == 0 or n_normal == 0:
        raise TrainingError(
            f"{what}: AUROC undefined: the test set has {n_normal} normal and {n_anomalous} anomalous {unit}s; "
            "both classes are needed"
        )
    if not np.isfinite(scores).all():
        raise TrainingError(f"{what}: {int((~np.isfinite(scores)).sum())} non-finite scores")
    return scores, labels


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of image scores (labels 1 = anomalous)."""
    scores, labels = _binary_inputs(scores, labels, what="image AUROC", unit="image")
    return float(roc_auc_score(labels, scores))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, scikit-learn's step definition)."""
    scores, labels = _binary_inputs(scores, labels, what="average precision", unit="image")
    return float(average_precision_score(labels, scores))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """The best F1 score over all thresholds."""
    scores, labels = _binary_inputs(scores, labels, what="F1-max", unit="image")
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def _check_maps(maps: np.ndarray, masks: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ConfigError(f"{what}: maps {maps.shape} and masks {masks.shape} must both be (n, H, W)")
    return maps, masks


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """ROC AUC over every pixel of every image; maps and masks (n, H, W), mask non-zero = anomalous."""
    maps, masks = _check_maps(maps, masks, "pixel AUROC")
    scores, labels = _binary_inputs(maps, masks, what="pixel AUROC", unit="pixel")
    return float(roc_auc_score(labels, scores))


def pro_curve(
    maps: np.ndarray, masks: np.ndarray, *, connectivity: Literal[4, 8] = 8
) -> tuple[np.ndarray, np.ndarray]:
    """The exact (FPR, PRO) curve, one point per distinct score plus the start (0, 0), FPR ascending."""
    maps, masks = _check_maps(maps, masks, "AUPRO")
    scores, anomalous = _binary_inputs(maps, masks, what="AUPRO", unit="pixel")
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    # region id per pixel, 0 = normal, ids unique over the whole test set
    regions = np.zeros(masks.shape, dtype=np.int64)
    n_regions = 0
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask != 0, structure=structure)
        regions[i] = np.where(labelled > 0, labelled + n_regions, 0)
        n_regions += count
    regions = regions.reshape(-1)
    areas = np.bincount(regions, minlength=n_regions + 1).astype(np.float64)
    n_normal = int((~anomalous).sum())

    order = np.argsort(-scores.astype(np.float64), kind="stable")
    sorted_scores = scores[order]
    sorted_regions = regions[order]
    del order
    fpr = np.cumsum(sorted_regions == 0, dtype=np.int64) / n_normal
    weights = np.zeros(n_regions + 1)
    weights[1:] = 1.0 / (areas[1:] * n_regions)
    pro = np.cumsum(weights[sorted_regions])
    last_of_score = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    return np.r_[0.0, fpr[last_of_score]], np.r_[0.0, pro[last_of_score]]


def integrate_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under y(x) for x in [x[0], limit], x non-decreasing; the end point is interpolated."""
    inside = int(np.searchsorted(x, limit, side="right"))  # points with x <= limit
    area = float(np.trapezoid(y[:inside], x[:inside])) if inside > 1 else 0.0
    if 0 < inside < len(x) and x[inside - 1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_end = y0 + (limit - x0) * (y1 - y0) / (x1 - x0)
        area += (limit - x0) * (y0 + y_end) / 2
    return area


def aupro(
    maps: np.ndarray, masks: np.ndarray, *, fpr_limit: float = 0.3, connectivity: Literal[4, 8] = 8
) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec definition; see the module docstring).

    Args:
        maps: anomaly maps (n, H, W), higher = more anomalous.
        masks: ground truth (n, H, W), non-zero = anomalous.
        fpr_limit: upper integration limit of the FPR, in (0, 1].
        connectivity: 8 (MVTec) or 4 neighbours for the connected ground-truth regions.
    """
    if not 0 < fpr_limit <= 1:
        raise ConfigError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks, connectivity=connectivity)
    return integrate_to_limit(fpr, pro, fpr_limit) / fpr_limit
