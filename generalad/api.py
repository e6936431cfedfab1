"""The Python API for notebooks: ``from generalad import GeneralAD``.

A thin face over the pieces the CLI uses, no second code path:

- ``fit(normal=..., test_normal=..., test_anomalous=..., masks=...)`` or ``fit(root=...)``: the fit-folder job
  (``generalad.apps.fit_job.run_fit_folder`` + ``write_fit_outputs``), the result folder in ``out`` (default: a
  temporary folder, kept until ``save``); ``fit_store(store, normal_class)``: ``generalad train`` on an existing
  feature store (``generalad.apps.train_job.train_from_store`` + ``write_run_outputs``);
  ``fit_dataset(name, root, normal_class)``: ``generalad extract`` (cached) of a registered dataset, then
  ``fit_store``;
- ``predict(images)``: ``generalad predict``'s ``Predictor`` (backbone + model rebuilt from the result folder) on
  paths, folders, PIL images or arrays; returns scores, maps at S x S, and, when the folder has a stored threshold,
  ``pred`` and ``score_normalised`` (``generalad.apps.thresholds``);
- ``evaluate(store)``: ``generalad evaluate`` (``evaluate_from_store``) on a store's test split;
- ``save(dir)`` copies the result folder; ``GeneralAD.load(dir)`` reads any model folder of fit-folder or train.

Example (tiny and offline: a random-init backbone at 56 px):
    >>> ad = GeneralAD(weights="random", image_size=56, epochs=1).fit(normal="ok/", test_normal="ok_test/",
    ...     test_anomalous=["scratch/"])  # doctest: +SKIP
    >>> ad.metrics["image_auroc"], ad.predict(["new.png"]).scores  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from generalad.defaults import DEFAULT_BACKBONE, IMAGE_SIZE
from generalad.errors import ConfigError

__all__ = ["GeneralAD", "Predictions"]

PathLike = str | os.PathLike[str]
ImageInput = PathLike | Image.Image | np.ndarray


@dataclass(frozen=True)
class Predictions:
    """Scores of the images of one ``predict`` call, in input order.

    Attributes:
        scores: image scores (n,) float64 (GeneralAD: mean of the top-K patch logits; kNN: max patch distance).
        maps: anomaly maps (n, S, S) float32 at the model's resolution.
        score_normalised: the scores as the empirical CDF of the stored normal scores, in [0, 1]; None without a
            stored threshold.
        pred: 1 where the score is above the stored threshold; None without one.
        threshold: the stored threshold's value, or None.
    """

    scores: np.ndarray
    maps: np.ndarray
    score_normalised: np.ndarray | None = None
    pred: np.ndarray | None = None
    threshold: float | None = None


def _as_image(item: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image from an array: uint8 (H, W) or (H, W, 3), or float in [0, 1]."""
    if isinstance(item, Image.Image):
        return item
    array = np.asarray(item)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise ConfigError(f"an image array must be (H, W) or (H, W, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or array.min() < 0 or array.max() > 1:
            raise ConfigError("an image array must be uint8, or float with values in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[2] == 1 else array)


def _open_all(images: ImageInput | Iterable[ImageInput]) -> list[Image.Image]:
    from generalad.apps.predict_inputs import collect_images
    from generalad.data.images import open_image

    if isinstance(images, str | os.PathLike | Image.Image) or (
        isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object
    ):
        images = [images]
    out: list[Image.Image] = []
    for item in images:
        if isinstance(item, str | os.PathLike):
            out += [open_image(found.path) for found in collect_images([item])[0]]
        else:
            out.append(_as_image(item))
    if not out:
        raise ConfigError("no images given")
    return out


class GeneralAD:
    """One anomaly model: fit on folders or a feature store, predict, evaluate, save, load.

    Args:
        backbone, weights, image_size, layers, feature_dtype, batch_size: the backbone (as in ``fit-folder``;
            weights "hub", "random" or a file).
        method: "generalad" or "patchcore_knn".
        epochs, seed, coreset_ratio: training settings; ``preset`` overrides fields of the preset (sigma, top_k...).
        store: feature store root (default: ``$GENERALAD_STORE``, else ``./stores``).
        device: torch device.
        progress: show progress bars.
    """

    def __init__(
        self,
        *,
        backbone: str = DEFAULT_BACKBONE,
        weights: str = "hub",
        image_size: int = IMAGE_SIZE,
        layers: Sequence[int] = (-1,),
        method: str = "generalad",
        epochs: int | None = None,
        seed: int = 0,
        coreset_ratio: float | None = None,
        preset: Mapping[str, Any] | None = None,
        store: PathLike | None = None,
        feature_dtype: str = "float16",
        batch_size: int = 8,
        device: str = "cpu",
        progress: bool = False,
    ) -> None:
        from generalad.apps.fit_job import FitSettings

        self.settings = FitSettings(
            backbone=backbone,
            weights=weights,
            image_size=image_size,
            layers=tuple(layers),
            dtype=feature_dtype,
            batch_size=batch_size,
            device=device,
            epochs=epochs,
            overrides=dict(preset or {}),
            seed=seed,
            method=method,
            coreset_ratio=coreset_ratio,
            progress=progress,
        )
        self.store_root = str(store) if store is not None else None
        self.store_url: str | None = None  # the feature store of the last fit
        self.model_dir: Path | None = None
        self.metrics: dict[str, float] = {}
        self._predictor = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def _out(self, out: PathLike | None) -> Path:
        if out is not None:
            return Path(out)
        self._tmp = tempfile.TemporaryDirectory(prefix="generalad-")
        return Path(self._tmp.name) / "model"

    def _store_root(self) -> str:
        from generalad.defaults import default_store_root

        return self.store_root or default_store_root()

    def fit(
        self,
        normal: PathLike | None = None,
        *,
        root: PathLike | None = None,
        test_normal: PathLike | None = None,
        test_anomalous: Sequence[PathLike] | None = None,
        masks: PathLike | None = None,
        out: PathLike | None = None,
        overwrite: bool = False,
    ) -> GeneralAD:
        """Fit on image folders, exactly as ``generalad fit-folder`` (its result folder is ``self.model_dir``)."""
        from generalad.apps.fit_folder import folder_dataset
        from generalad.apps.fit_job import run_fit_folder
        from generalad.apps.fit_outputs import write_fit_outputs

        dataset = folder_dataset(
            normal=normal, root=root, test_normal=test_normal, test_anomalous=test_anomalous, masks=masks
        )
        run = run_fit_folder(dataset, self.settings, self._store_root())
        self.store_url = run.store.url
        target = self._out(out)
        write_fit_outputs(
            run.result,
            target,
            dataset=dataset,
            manifest=run.store.manifest,
            source=run.store,
            image_size=run.store.image_size,
            feature_info=run.info,
            timings=run.timings,
            notes=run.notes,
            overwrite=overwrite,
        )
        return self._fitted(target, run.result.metrics)

    def fit_store(
        self, store: str, normal_class: str, *, out: PathLike | None = None, overwrite: bool = False
    ) -> GeneralAD:
        """Train on a feature store's class, exactly as ``generalad train`` (the backbone settings are the store's)."""
        from generalad.apps.model_io import write_run_outputs
        from generalad.apps.train_job import feature_info, resolve_preset, train_from_store
        from storage.feature_store import FeatureStore

        opened = FeatureStore.open(store)
        self.store_url = opened.url
        s = self.settings
        overrides = {**s.overrides, **({"epochs": s.epochs} if s.epochs else {})}
        result = train_from_store(
            opened,
            normal_class,
            preset=resolve_preset(opened, None, overrides),
            seed=s.seed,
            progress=s.progress,
            device=s.device,
            method=s.method,
            knn=s.knn(),
        )
        target = self._out(out)
        write_run_outputs(
            result,
            target,
            image_ids=opened.manifest["image_id"].to_numpy(),
            extra_columns={
                "dataset": opened.dataset,
                "class_name": normal_class,
                "seed": s.seed,
                "method": s.method,
            },
            feature_info=feature_info(opened),
            overwrite=overwrite,
        )
        return self._fitted(target, result.metrics)

    def fit_dataset(
        self,
        dataset: str,
        root: PathLike,
        normal_class: str,
        *,
        category: str | None = None,
        out: PathLike | None = None,
        overwrite: bool = False,
    ) -> GeneralAD:
        """Extract a registered dataset into the store (as ``generalad extract``; a complete store is reused) and
        train on its class as ``fit_store``. ``self.store_url`` is the store."""
        from generalad.data import get_dataset
        from storage.extraction import extract_features

        s = self.settings
        extraction = extract_features(
            get_dataset(dataset, str(root), category=category),
            s.spec(),
            self._store_root(),
            dtype=s.dtype,
            batch_size=s.batch_size,
            device=s.device,
            progress=s.progress,
        )
        self.store_url = extraction.url
        return self.fit_store(extraction.url, normal_class, out=out, overwrite=overwrite)

    def _fitted(self, model_dir: Path, metric_rows: list[dict]) -> GeneralAD:
        self.model_dir = model_dir
        self.metrics = {row["metric"]: row["value"] for row in metric_rows if row["selection"] == "last"}
        self._predictor = None
        return self

    def _loaded(self):
        from generalad.apps.predictor import load_predictor

        if self.model_dir is None:
            raise ConfigError("the model is not fitted: call fit(), fit_store() or GeneralAD.load() first")
        if self._predictor is None:
            self._predictor = load_predictor(self.model_dir, device=self.settings.device)
        return self._predictor

    def predict(self, images: ImageInput | Iterable[ImageInput], *, batch_size: int = 8) -> Predictions:
        """Score image files, folders (recursively), PIL images or arrays (uint8, or float in [0, 1])."""
        from generalad.apps.thresholds import normalised_scores, read_threshold

        predictor = self._loaded()
        decoded = _open_all(images)
        logits = [predictor.logits(decoded[i : i + batch_size]) for i in range(0, len(decoded), batch_size)]
        scores = np.concatenate([predictor.scores(chunk) for chunk in logits])
        maps = np.concatenate([predictor.maps(chunk) for chunk in logits])
        stored = read_threshold(self.model_dir)
        if stored is None:
            return Predictions(scores, maps)
        return Predictions(
            scores,
            maps,
            normalised_scores(scores, stored.normal_scores),
            (scores > stored.value).astype(np.int8),
            stored.value,
        )

    def evaluate(self, store: str | None = None) -> dict[str, float]:
        """Metrics of the saved model on a feature store's test split (default: the store of the last fit)."""
        from generalad.apps.train_job import evaluate_from_store
        from storage.feature_store import FeatureStore

        if self.model_dir is None:
            raise ConfigError("the model is not fitted: call fit(), fit_store() or GeneralAD.load() first")
        store = store or self.store_url
        if store is None:
            raise ConfigError("evaluate needs a feature store: evaluate(store=URL)")
        saved = evaluate_from_store(FeatureStore.open(store), self.model_dir, device=self.settings.device)
        return {row["metric"]: row["value"] for row in saved.metrics}

    def save(self, directory: PathLike, *, overwrite: bool = False) -> Path:
        """Copy the result folder (model, metrics, threshold, report) to ``directory``; later calls use the copy."""
        from generalad.apps.staging import staged_dir

        if self.model_dir is None:
            raise ConfigError("nothing to save: the model is not fitted")
        target = Path(directory)
        if target.resolve() == self.model_dir.resolve():
            return target
        with staged_dir(target, overwrite=overwrite) as tmp:
            shutil.copytree(self.model_dir, tmp)
        self.model_dir, self._predictor = target, None
        return target

    @classmethod
    def load(cls, directory: PathLike, *, device: str = "cpu") -> GeneralAD:
        """A model folder written by ``fit``/``save``, ``generalad fit-folder`` or ``generalad train``."""
        import json

        from generalad.apps.model_io import METRICS_FILE, load_model, model_method

        _, config = load_model(directory)
        features = config.get("features", {})
        ad = cls(
            backbone=features.get("backbone", DEFAULT_BACKBONE),
            image_size=int(features.get("image_size", IMAGE_SIZE)),
            method=model_method(config),
            device=device,
        )
        metrics = Path(directory) / METRICS_FILE
        rows = json.loads(metrics.read_text()) if metrics.is_file() else []
        return ad._fitted(Path(directory), rows)
