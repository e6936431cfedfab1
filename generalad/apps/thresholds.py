"""Decision thresholds users can use, and scores normalised against normal images.

- ``Threshold``: the decision threshold ``generalad predict`` applies, with the rule it came from.
- ``threshold_from_scores(normal_scores, quantile)``: the ``quantile`` (linear interpolation; 1.0 = the maximum) of
  the scores of normal images that were not trained on. An image is flagged when its score is strictly greater.
- ``threshold.json`` in a model folder (written by ``generalad fit-folder`` from its normal test images): the
  chosen value, the rule, and the sorted normal scores it came from. ``generalad predict`` uses it by default.
- ``normalised_scores(scores, normal_scores)``: each score as the fraction of the normal reference scores below it
  (ties count half), a number in [0, 1]: 0.5 is a typical normal image, 1.0 is above every normal reference image.
  It is the empirical CDF of the normal-score distribution, not a probability of being anomalous.

Example:
    >>> normalised_scores([0.5, 3.0], [0.0, 1.0, 2.0]).tolist()
    [0.3333333333333333, 1.0]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from generalad.errors import ConfigError

__all__ = [
    "THRESHOLD_FILE",
    "Threshold",
    "NORMALISED_COLUMN",
    "NORMALISED_DEFINITION",
    "StoredThreshold",
    "threshold_from_scores",
    "normalised_scores",
    "write_threshold",
    "read_threshold",
]

THRESHOLD_FILE = "threshold.json"
NORMALISED_COLUMN = "score_normalised"
NORMALISED_DEFINITION = (
    "fraction of the normal reference images' scores below this score (ties count half), in [0, 1]: the "
    "empirical CDF of the normal-score distribution, not a probability of an anomaly"
)


@dataclass(frozen=True)
class Threshold:
    """A decision threshold: ``pred = score > value``."""

    value: float
    rule: str  # "given", or "quantile q of n normal images"
    quantile: float | None = None
    n_normal: int | None = None


def threshold_from_scores(scores: Sequence[float] | np.ndarray, quantile: float = 1.0) -> float:
    """The ``quantile`` (linear interpolation) of normal images' scores; 1.0 = their maximum.

    Raises:
        ConfigError: no scores, a non-finite score, or a quantile outside (0, 1].
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        raise ConfigError("a threshold needs the scores of at least one normal image")
    if not np.isfinite(values).all():
        raise ConfigError("normal images' scores contain NaN or inf")
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"quantile must be in (0, 1], got {quantile}")
    return float(np.quantile(values, quantile))


def normalised_scores(
    scores: Sequence[float] | np.ndarray, normal_scores: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Scores as the empirical CDF of ``normal_scores`` (see the module docstring); NaN stays NaN."""
    reference = np.sort(np.asarray(normal_scores, dtype=np.float64))
    if reference.size == 0:
        raise ConfigError("normalising scores needs the scores of at least one normal image")
    values = np.asarray(scores, dtype=np.float64)
    below = np.searchsorted(reference, values, side="left")
    not_above = np.searchsorted(reference, values, side="right")
    out = (below + not_above) / (2.0 * reference.size)
    return np.where(np.isnan(values), np.nan, out)


@dataclass(frozen=True)
class StoredThreshold:
    """A model folder's ``threshold.json``: value, rule, and the normal scores it was chosen from."""

    value: float
    rule: str
    quantile: float
    normal_scores: tuple[float, ...]
    source: str


def write_threshold(
    directory: str | os.PathLike[str],
    normal_scores: Sequence[float] | np.ndarray,
    *,
    source: str,
    quantile: float = 1.0,
) -> Path:
    """Write ``threshold.json`` (value = the ``quantile`` of ``normal_scores``) into ``directory``."""
    scores = sorted(float(s) for s in np.asarray(normal_scores, dtype=np.float64))
    value = threshold_from_scores(scores, quantile)
    what = "maximum" if quantile == 1.0 else f"quantile {quantile:g}"
    document = {
        "value": value,
        "rule": f"{what} of the scores of {len(scores)} {source}",
        "decision": "pred = 1 when score > value",
        "quantile": quantile,
        "source": source,
        "normal_scores": scores,
    }
    path = Path(directory) / THRESHOLD_FILE
    path.write_text(json.dumps(document, indent=2))
    return path


def read_threshold(directory: str | os.PathLike[str]) -> StoredThreshold | None:
    """The model folder's stored threshold, None when it has none (or ``directory`` is a file, e.g. an .onnx).

    Raises:
        ConfigError: the file exists but is not a threshold document.
    """
    path = Path(directory) / THRESHOLD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return StoredThreshold(
            float(data["value"]),
            str(data["rule"]),
            float(data.get("quantile", 1.0)),
            tuple(float(s) for s in data["normal_scores"]),
            str(data.get("source", "normal images")),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a threshold file: {exc}") from None
