"""The fit-folder job end to end, below any interface: features of a user's folders into the store (cached), then
one model trained on them (evaluated when the test folders allow it). `generalad fit-folder` and the Python API
(`generalad.GeneralAD.fit`) both call `run_fit_folder`, then `write_fit_outputs`; neither has its own path.

Either method: "generalad" (the discriminator, industrial preset) or "patchcore_knn" (a memory bank of the normal
patches; `generalad.method.patchcore`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from generalad.apps.fit_folder import FitFolderDataset, can_evaluate, fit_one_class
from generalad.apps.train_job import feature_info
from generalad.backbone import BackboneSpec
from generalad.data.preprocess import PREPROCESSING_SPEC
from generalad.defaults import DEFAULT_BACKBONE, IMAGE_SIZE, METHODS
from generalad.devices import DEFAULT_PRECISION, resolve_device
from generalad.errors import ConfigError
from generalad.method.experiment import RunResult
from generalad.method.knn_experiment import memory_bank_of, run_patchcore
from generalad.method.patchcore import METHOD as PATCHCORE
from generalad.method.patchcore import PatchCoreSettings
from generalad.method.presets import Preset, preset_for
from generalad.method.scoring import image_scores, patch_logits
from storage.extraction import ExtractionResult, extract_features
from storage.feature_store import FeatureStore

__all__ = ["FitSettings", "FitRun", "run_fit_folder"]


@dataclass(frozen=True)
class FitSettings:
    """Every setting of a fit-folder run (the CLI's options, by the same names)."""

    backbone: str = DEFAULT_BACKBONE
    weights: str = "hub"
    backbone_seed: int = 0
    image_size: int = IMAGE_SIZE
    layers: tuple[int, ...] = (-1,)
    dtype: str = "float16"
    batch_size: int = 8
    device: str = "auto"
    precision: str = "fp32"  # the backbone's (extraction) precision
    train_precision: str = DEFAULT_PRECISION  # training and scoring
    epochs: int | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    method: str = "generalad"
    coreset_ratio: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; methods: {', '.join(METHODS)}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if self.method == PATCHCORE and (self.epochs is not None or self.overrides):
            raise ConfigError(
                "--epochs and --set do not apply to --method patchcore_knn (nothing is trained)"
            )
        if self.method != PATCHCORE and self.coreset_ratio is not None:
            raise ConfigError("--coreset-ratio belongs to --method patchcore_knn")
        self.knn()  # validates the ratio now, and the preset overrides: before any backbone work
        if self.method != PATCHCORE:
            self.preset()

    def preset(self) -> Preset:
        preset = preset_for("folder").with_overrides(**dict(self.overrides))
        return preset.with_overrides(epochs=self.epochs) if self.epochs is not None else preset

    def knn(self) -> PatchCoreSettings | None:
        if self.method != PATCHCORE:
            return None
        return PatchCoreSettings() if self.coreset_ratio is None else PatchCoreSettings(self.coreset_ratio)

    def weights_path(self) -> str:
        """'hub', 'random', or the weights file as an absolute path."""
        if self.weights in ("hub", "random"):
            return self.weights
        return str(Path(self.weights).expanduser().resolve())

    def spec(self) -> BackboneSpec:
        return BackboneSpec(
            name=self.backbone,
            weights=self.weights_path(),
            seed=self.backbone_seed,
            image_size=self.image_size,
            layers=tuple(self.layers),
        )


@dataclass
class FitRun:
    """What `run_fit_folder` produced: the store, the split, the result and what to record about it."""

    extraction: ExtractionResult
    store: FeatureStore
    result: RunResult
    evaluating: bool
    notes: list[str]
    timings: dict[str, float]
    info: dict[str, Any]


def _fit_knn(
    store: FeatureStore, split, settings: PatchCoreSettings, *, seed: int, masks, device: str
) -> RunResult:
    """The kNN counterpart of `fit_one_class`: evaluated when possible, else the bank and the test rows' scores."""
    if can_evaluate(split):
        return run_patchcore(
            store, split, settings, seed=seed, masks=masks, image_size=store.image_size, device=device
        )
    started = time.perf_counter()
    train_rows = np.asarray(split.train_rows, dtype=np.int64)
    model = memory_bank_of(store, train_rows, settings, seed=seed, device=device)
    seconds = time.perf_counter() - started
    test_rows = np.asarray(split.test_rows, dtype=np.int64)
    scores = image_scores(patch_logits(model, store, test_rows), 1).double().numpy() if len(test_rows) else []
    frame = pd.DataFrame(
        {
            "row": test_rows,
            "score": np.asarray(scores, np.float64),
            "label": np.asarray(split.test_labels, np.int8),
        }
    )
    return RunResult(
        model, settings, seed, None, split.normal_class, train_rows, 0, frame, [], {}, train_seconds=seconds
    )


def run_fit_folder(dataset: FitFolderDataset, settings: FitSettings, store_root: str) -> FitRun:
    """Extract (or reuse) the folders' features under `store_root`, then fit and, when possible, evaluate."""
    extraction = extract_features(
        dataset,
        settings.spec(),
        store_root,
        dtype=settings.dtype,
        batch_size=settings.batch_size,
        device=settings.device,
        precision=settings.precision,
        progress=settings.progress,
    )
    store = FeatureStore.open(extraction.url)
    split = store.split("good")
    notes: list[str] = []
    evaluating = can_evaluate(split)
    if not evaluating:
        if len(split.test_rows) == 0:
            notes.append("no test folders: trained only, no metrics")
        else:
            notes.append(
                "test images of only one kind (normal or anomalous): trained and scored them, no metrics"
            )
    masks = store.masks(split.test_rows) if store.has_masks and evaluating else None
    started = time.perf_counter()
    knn = settings.knn()
    if knn is not None:
        device = str(resolve_device(settings.device))
        result = _fit_knn(store, split, knn, seed=settings.seed, masks=masks, device=device)
    else:
        result = fit_one_class(
            store,
            split,
            settings.preset(),
            seed=settings.seed,
            masks=masks,
            image_size=store.image_size,
            progress=settings.progress,
            device=settings.device,
            precision=settings.train_precision,
        )
    fit_seconds = time.perf_counter() - started
    info = feature_info(store) | {
        "preprocessing": PREPROCESSING_SPEC,
        "timm_version": store.fingerprint.get("timm_version"),
        "backbone_seed": settings.backbone_seed,
    }
    if settings.weights_path() not in ("hub", "random"):
        info["weights_file"] = settings.weights_path()
    timings = {
        "extract": extraction.seconds,
        "train": result.train_seconds,
        "evaluate": result.eval_seconds if evaluating else fit_seconds - result.train_seconds,
    }
    return FitRun(extraction, store, result, evaluating, notes, timings, info)
