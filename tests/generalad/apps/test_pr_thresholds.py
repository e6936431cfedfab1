"""Stored thresholds and normalised scores (generalad.apps.thresholds) against hand computations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generalad.apps.thresholds import normalised_scores, read_threshold, write_threshold
from generalad.errors import ConfigError


def test_normalised_scores_are_the_empirical_cdf_of_the_normal_scores() -> None:
    normal = [3.0, 1.0, 2.0, 2.0]
    got = normalised_scores([0.0, 1.0, 2.0, 2.5, 9.0, np.nan], normal)
    # below / ties counted half, of 4: 0, 0.5/4, (1 + 1)/4, 3/4, 4/4, NaN
    np.testing.assert_allclose(got[:5], [0.0, 0.125, 0.5, 0.75, 1.0])
    assert np.isnan(got[5])
    with pytest.raises(ConfigError, match="at least one"):
        normalised_scores([1.0], [])


def test_threshold_file_round_trip(tmp_path) -> None:
    path = write_threshold(tmp_path, np.array([0.3, 0.1, 0.2]), source="normal test images", quantile=0.5)
    data = json.loads(path.read_text())
    assert data["value"] == pytest.approx(0.2) and data["normal_scores"] == [0.1, 0.2, 0.3]
    stored = read_threshold(tmp_path)
    assert stored.value == pytest.approx(0.2) and stored.quantile == 0.5
    assert stored.rule == "quantile 0.5 of the scores of 3 normal test images"
    assert read_threshold(tmp_path / "nothing-here") is None
    path.write_text("{}")
    with pytest.raises(ConfigError, match="not a threshold file"):
        read_threshold(tmp_path)
