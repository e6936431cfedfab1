"""One one-class experiment's rows: which manifest positions train, which test, and the test labels.

The method only needs row positions into a feature source; the dataset adapters (`generalad.data`) build these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneClassSplit:
    """Row positions (into the manifest) of one one-class experiment, and the test labels."""

    normal_class: str
    train_rows: np.ndarray  # int64 positions of the normal training images
    test_rows: np.ndarray  # int64 positions of the test images
    test_labels: np.ndarray  # int8, 1 = anomalous, aligned with test_rows
