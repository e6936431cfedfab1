"""The fit-folder job's method side: a user's folders as a dataset, and one discriminator trained on them
(evaluated when the test folders allow it). ``generalad.apps.fit_outputs`` writes its result folder.

It works on any ``FeatureSource`` (the CLI passes the feature store it extracted into; tests may pass arrays),
so it imports nothing from ``storage``. The CLI (``generalad.cli.practitioner``) does the glue: extraction into
the store, then these functions.

Evaluation needs both normal and anomalous test images (AUROC is undefined otherwise). Without test folders the
job trains only; with only one kind of test image it trains and scores those images but reports no metric.

Example:
    >>> ds = folder_dataset(normal="shots/ok", test_normal="shots/ok_test", test_anomalous=["shots/dent"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from generalad.data.base import OneClassSplit
from generalad.data.folder import NORMAL_CLASS, FolderDataset
from generalad.devices import DEFAULT_PRECISION, resolve_device
from generalad.errors import ConfigError, DatasetError
from generalad.method.experiment import RunResult, run_one_class
from generalad.method.feature_source import FeatureSource
from generalad.method.presets import Preset
from generalad.method.scoring import image_scores, patch_logits
from generalad.method.training import train_discriminator

__all__ = ["FitFolderDataset", "folder_dataset", "can_evaluate", "fit_one_class"]

PathLike = str | os.PathLike[str]


class FitFolderDataset(FolderDataset):
    """``FolderDataset`` that also accepts folders without test images (a train-only split).

    Registered under no name of its own: its stores and presets are those of ``folder``.
    """

    def one_class_split(self, manifest: pd.DataFrame, normal_class: str) -> OneClassSplit:
        if (manifest["split"] == "test").any():
            return super().one_class_split(manifest, normal_class)
        if normal_class != NORMAL_CLASS:
            raise DatasetError(
                f"{self.describe()}: the only normal class is {NORMAL_CLASS!r}, not {normal_class!r}"
            )
        train = np.flatnonzero(manifest["split"].to_numpy() == "train").astype(np.int64)
        if train.size == 0:
            raise DatasetError(f"{self.describe()}: no normal training images")
        empty = np.empty(0, dtype=np.int64)
        return OneClassSplit(normal_class, train, empty, np.empty(0, dtype=np.int8))


def folder_dataset(
    *,
    normal: PathLike | None = None,
    root: PathLike | None = None,
    test_normal: PathLike | None = None,
    test_anomalous: Sequence[PathLike] | None = None,
    masks: PathLike | None = None,
) -> FitFolderDataset:
    """A user's images as a dataset, validated now (missing or empty folders, stray files, masks without images).

    Either ``normal`` (explicit folders anywhere; see ``FolderDataset.from_dirs``) or ``root`` (an MVTec-like
    layout: ``train/good``, ``test/good``, ``test/<defect>``, ``ground_truth/<defect>``).

    Raises:
        ConfigError: both or neither of ``normal`` / ``root``, or ``masks`` without anomalous images.
        DatasetError: a folder is missing or empty, holds a non-image file or a sub-folder, an anomalous image
            has no mask while masks are given, ...
    """
    if (normal is None) == (root is None):
        raise ConfigError(
            "give either the normal training folder (--normal) or a dataset root (--root), not both"
        )
    if root is not None:
        if test_normal is not None or test_anomalous or masks is not None:
            raise ConfigError(
                "--root takes its test images and masks from the layout; drop the explicit folders"
            )
        dataset = FitFolderDataset(Path(root).expanduser().resolve())
    else:
        if masks is not None and not test_anomalous:
            raise ConfigError("--masks belongs to anomalous test images: give --test-anomalous too")
        dataset = FitFolderDataset.from_dirs(
            normal, test_normal=test_normal, test_anomalous=list(test_anomalous or []) or None, masks=masks
        )
    dataset.manifest()  # lists and validates every folder now, before any backbone work
    return dataset  # type: ignore[return-value]


def can_evaluate(split: OneClassSplit) -> bool:
    """Whether the test rows hold both normal and anomalous images (metrics are defined)."""
    labels = np.asarray(split.test_labels)
    return bool((labels == 0).any() and (labels != 0).any())


def fit_one_class(
    source: FeatureSource,
    split: OneClassSplit,
    preset: Preset,
    *,
    seed: int = 0,
    masks: np.ndarray | None = None,
    image_size: int | None = None,
    progress: bool = True,
    device: str = "auto",
    precision: str = DEFAULT_PRECISION,
) -> RunResult:
    """Train on the split's normal rows; evaluate when ``can_evaluate(split)``, else only score its test rows.
    ``device`` and ``precision`` as in `generalad.devices`.

    The train-only result has no metric rows and no evaluations; its ``scores`` hold the test rows (if any).
    """
    device = resolve_device(device)
    if can_evaluate(split):
        return run_one_class(
            source,
            split,
            preset,
            seed=seed,
            masks=masks,
            image_size=image_size,
            progress=progress,
            device=device,
            precision=precision,
        )
    trained = train_discriminator(
        source, split.train_rows, preset, seed=seed, device=device, progress=progress, precision=precision
    )
    test_rows = np.asarray(split.test_rows, dtype=np.int64)
    logits = patch_logits(trained.model, source, test_rows, precision=precision) if len(test_rows) else None
    scores = (
        image_scores(logits, preset.top_k).double().numpy()
        if len(test_rows)
        else np.empty(0, dtype=np.float64)
    )
    return RunResult(
        model=trained.model,
        preset=preset,
        seed=seed,
        shots=None,
        normal_class=split.normal_class,
        train_rows=np.asarray(split.train_rows, dtype=np.int64),
        batch_size=trained.batch_size,
        scores=pd.DataFrame(
            {
                "row": test_rows,
                "score": scores,
                "label": np.asarray(split.test_labels, dtype=np.int8),
            }
        ),
        metrics=[],
        evaluations={},
        history=trained.history,
        train_seconds=trained.seconds,
        device=str(device),
        precision=precision,
    )
