"""The two one-class protocols (docs/protocols.md "One-class protocols") and the adapter bases applying them.

- one-vs-rest (semantic and near-distribution data): train on the training images of the normal class, test on
  the test images (optionally of a subset of classes), every class but the normal one anomalous.
- labelled (industrial data): the store holds one category; train on its normal training images, test on its
  test images with the labels the data carries (good = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from PIL import Image

from generalad.data.base import DatasetAdapter, OneClassSplit, Record
from generalad.data.images import open_image
from generalad.errors import DatasetError

__all__ = ["one_vs_rest_split", "labelled_split", "SemanticAdapter", "FileImagesMixin"]


def _check_normal_class(normal_class: str, allowed: Sequence[str], what: str) -> None:
    if normal_class not in allowed:
        raise DatasetError(
            f"{normal_class!r} is not a normal class of {what}; available: {', '.join(allowed)}"
        )


def one_vs_rest_split(
    manifest: pd.DataFrame,
    normal_class: str,
    allowed: Sequence[str],
    *,
    what: str,
    test_classes: Sequence[str] | None = None,
) -> OneClassSplit:
    """Train on the normal class's training rows; test on test rows, label 1 for every other class.

    Args:
        manifest: the dataset's manifest (`manifest_frame` order).
        normal_class: the class treated as normal.
        allowed: the classes that may be normal.
        what: the dataset, for messages.
        test_classes: when given, only test rows of these classes are used (FGVC-Aircraft's listed variants).

    Raises:
        DatasetError: for a class not in `allowed`, or when the class has no training or the split no test row.
    """
    _check_normal_class(normal_class, allowed, what)
    split = manifest["split"].to_numpy()
    cls = manifest["class_name"].to_numpy()
    train_rows = np.flatnonzero((split == "train") & (cls == normal_class)).astype(np.int64)
    test_mask = split == "test"
    if test_classes is not None:
        test_mask &= np.isin(cls, list(test_classes))
    test_rows = np.flatnonzero(test_mask).astype(np.int64)
    if train_rows.size == 0:
        raise DatasetError(f"{what}: no training image of class {normal_class!r} in the manifest")
    if test_rows.size == 0:
        raise DatasetError(f"{what}: no test image in the manifest")
    labels = (cls[test_rows] != normal_class).astype(np.int8)
    return OneClassSplit(normal_class, train_rows, test_rows, labels)


def labelled_split(
    manifest: pd.DataFrame, normal_class: str, allowed: Sequence[str], *, what: str
) -> OneClassSplit:
    """Train on the normal (label 0) training rows, test on every test row with the manifest's labels.

    Raises:
        DatasetError: for a class not in `allowed`, a training row labelled anomalous, or an empty split.
    """
    _check_normal_class(normal_class, allowed, what)
    split = manifest["split"].to_numpy()
    labels = manifest["label"].to_numpy()
    in_class = manifest["class_name"].to_numpy() == normal_class
    train = (split == "train") & in_class
    if (labels[train] != 0).any():
        raise DatasetError(f"{what}: training rows must all be normal (label 0)")
    train_rows = np.flatnonzero(train).astype(np.int64)
    test_rows = np.flatnonzero((split == "test") & in_class).astype(np.int64)
    if train_rows.size == 0 or test_rows.size == 0:
        raise DatasetError(
            f"{what}: {train_rows.size} training and {test_rows.size} test images; both must be > 0"
        )
    test_labels = labels[test_rows].astype(np.int8)
    if not np.isin(test_labels, (0, 1)).all():
        raise DatasetError(f"{what}: test labels must be 0 or 1")
    return OneClassSplit(normal_class, train_rows, test_rows, test_labels)


class FileImagesMixin:
    """`load_image` for datasets with one image file per record (`root / rel_path`)."""

    root: Path

    def load_image(self, record: Record) -> Image.Image:
        """Decode the record's file (RGB or L); raises ImageError naming the file."""
        return open_image(self.root / record.rel_path)


class SemanticAdapter(DatasetAdapter):
    """A dataset of labelled classes, one of which is normal per run (one-vs-rest protocol).

    Subclasses set `class_names` (the classes that may be normal) and implement `records` / `load_image`.
    Records carry label -1 (`LABEL_BY_PROTOCOL`): `one_class_split` computes the labels.
    """

    kind = "semantic"
    protocol_name = "one_vs_rest"
    class_names: ClassVar[tuple[str, ...]] = ()

    def normal_classes(self) -> list[str]:
        return list(self.class_names)

    def one_class_split(self, manifest: pd.DataFrame, normal_class: str) -> OneClassSplit:
        return one_vs_rest_split(manifest, normal_class, self.normal_classes(), what=self.describe())
