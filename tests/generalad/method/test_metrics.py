"""Metrics against scikit-learn and a brute-force AUPRO."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from generalad.errors import TrainingError
from generalad.method.metrics import aupro, average_precision, f1_max, image_auroc, pixel_auroc


def test_image_metrics_match_sklearn_and_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=60)
    scores = rng.normal(size=60) + labels
    scores[:10] = np.round(scores[:10])  # some ties
    assert image_auroc(scores, labels) == roc_auc_score(labels, scores)
    assert average_precision(scores, labels) == average_precision_score(labels, scores)
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        precision, recall = tp / pred.sum(), tp / labels.sum()
        if tp:
            best = max(best, 2 * precision * recall / (precision + recall))
    assert f1_max(scores, labels) == pytest.approx(best, rel=1e-12)


def test_pixel_auroc_is_over_every_pixel():
    rng = np.random.default_rng(1)
    masks = (rng.random((3, 8, 8)) > 0.8).astype(np.uint8)
    maps = rng.random((3, 8, 8)).astype(np.float32) + masks
    assert pixel_auroc(maps, masks * 255) == roc_auc_score(masks.ravel(), maps.ravel())


@pytest.mark.parametrize(
    "call",
    [
        lambda s, y: image_auroc(s, y),
        lambda s, y: average_precision(s, y),
        lambda s, y: f1_max(s, y),
        lambda s, y: pixel_auroc(s.reshape(1, 2, 3), y.reshape(1, 2, 3)),
        lambda s, y: aupro(s.reshape(1, 2, 3), y.reshape(1, 2, 3)),
    ],
)
@pytest.mark.parametrize("label", [0, 1])
def test_single_class_is_undefined(call, label):
    with pytest.raises(TrainingError, match="AUROC undefined"):
        call(np.arange(6, dtype=np.float64), np.full(6, label))


def test_non_finite_scores_raise():
    with pytest.raises(TrainingError, match="non-finite"):
        image_auroc(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))


def _brute_force_aupro(maps, masks, limit, connectivity):
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    regions = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask > 0, structure=structure)
        regions += [(i, labelled == r) for r in range(1, count + 1)]
    normal = masks == 0
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:  # every distinct threshold, descending
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([(pred[i] & region).sum() / region.sum() for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_end = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_end) / 2
            break
    return area / limit


def _random_case(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 12), dtype=np.uint8)
    for i in range(3):  # the fourth image is normal
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, 10, size=2)
            masks[i, r : r + rng.integers(1, 4), c : c + rng.integers(1, 4)] = 255
    masks[0, 11, 11] = masks[0, 10, 10] = 1  # diagonal neighbours: one region in 8-, two in 4-connectivity
    maps = rng.random((4, 12, 12)) + 0.8 * (masks > 0)
    maps = np.round(maps * 20) / 20  # many ties
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("connectivity", [8, 4])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(seed, connectivity, limit):
    maps, masks = _random_case(seed)
    expected = _brute_force_aupro(maps, masks, limit, connectivity)
    got = aupro(maps, masks, fpr_limit=limit, connectivity=connectivity)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_aupro_known_cases():
    _, masks = _random_case(0)
    assert aupro(masks.astype(np.float32), masks) == pytest.approx(1.0)  # perfect map
    constant = np.ones(masks.shape, dtype=np.float32)  # one threshold: straight line (0,0) -> (1,1)
    assert aupro(constant, masks) == pytest.approx(0.15)
    assert aupro(-masks.astype(np.float32), masks) == pytest.approx(0.0)  # every normal pixel first
