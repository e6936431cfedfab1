"""Scoring new images with a saved model: image scores, anomaly maps at each image's own size, overlays.

A model folder (``model.json`` + ``model.safetensors``, written by ``generalad train`` or ``generalad
fit-folder``) records the features it was trained on under ``features``: backbone name, weights identity, layers,
image size, feature dtype. ``load_predictor`` rebuilds exactly that backbone:

- ``random:<seed>`` weights: the same timm random init with the same seed (and LayerScale init when recorded);
- ``hub:<repo>``: the pretrained weights from the local Hugging Face cache (or the hub when reachable);
- ``file:sha256:<hex>``: the file given as ``weights=``, else the path recorded at fit time (``weights_file``);
  its sha256 must equal the recorded one.

Anything that does not fit (another architecture or resolution, a weights file with another hash, a
discriminator whose patch count or width differs from the backbone's output) is a ``ModelMismatchError`` before
any image is read. Features are rounded to the recorded feature dtype (float16 by default), exactly as the
training features were stored, so a test image gets the score it got at evaluation.

Per image: the image is squashed to S x S (the model's resolution) as at training; the patch logits give the
image score (mean of the top-K logits, K from the model's preset) and the S x S anomaly map (bilinear upsampling
+ Gaussian blur, ``generalad.method.scoring.anomaly_maps``), which is then resized bilinearly to the image's own
width x height. Images of mixed sizes and formats are fine: each overlay has its own image's size.

Decision threshold (optional): ``threshold_from_scores(normal_scores, quantile)`` is the ``quantile`` of the
scores of normal images that were NOT used for training (linear interpolation; quantile 1.0 = their maximum, the
default), and an image is flagged (``pred = 1``) when its score is strictly greater than the threshold. With the
maximum, no image of that normal set is flagged. Without a given threshold or normal images, the threshold stored
in the model folder (``threshold.json``, written by ``fit-folder``) is used. Whenever normal reference scores are
known (the given normal images, else the stored ones), scores.csv also has ``score_normalised``: the score as the
empirical CDF of those normal scores, in [0, 1] (``generalad.apps.thresholds``).

Example:
    >>> predictor = load_predictor("runs/grid")  # doctest: +SKIP
    >>> inputs = collect_images(["photos/"])  # doctest: +SKIP
    >>> result = predict_to_folder(predictor, inputs, "predictions")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from generalad.apps.model_io import load_model, model_architecture, model_top_k
from generalad.apps.staging import staged_dir
from generalad.apps.thresholds import (
    NORMALISED_COLUMN,
    NORMALISED_DEFINITION,
    normalised_scores,
    read_threshold,
    threshold_from_scores,
)
from generalad.apps.visualize import overlay, resize_map
from generalad.backbone import Backbone, BackboneSpec, load_backbone, weights_identity
from generalad.data.images import is_image_file, open_image
from generalad.data.layout import is_ignored
from generalad.data.preprocess import PREPROCESSING_SPEC, preprocess_image
from generalad.defaults import WeightsSource
from generalad.devices import DEFAULT_PRECISION, autocast, check_precision, pin_if_cuda, resolve_device
from generalad.errors import ConfigError, DatasetError, ImageError
from generalad.method.discriminator import Discriminator
from generalad.method.patchcore import PatchCoreModel
from generalad.method.scoring import anomaly_maps, image_scores

__all__ = [
    "ModelMismatchError",
    "Predictor",
    "InputImage",
    "Threshold",
    "PredictionResult",
    "backbone_spec_for_model",
    "load_predictor",
    "collect_images",
    "threshold_from_scores",
    "score_images",
    "predict_to_folder",
    "SCORES_CSV",
    "PREDICTION_JSON",
    "OVERLAY_DIR",
    "MAP_DIR",
]

SCORES_CSV = "scores.csv"
NORMAL_SCORES_CSV = "normal_scores.csv"
PREDICTION_JSON = "prediction.json"
OVERLAY_DIR = "overlays"
MAP_DIR = "maps"


class ModelMismatchError(ConfigError):
    """A model folder's recorded features do not fit the backbone that would compute them."""


# ----------------------------------------------------------------------------------------------- the model


def backbone_spec_for_model(
    features: dict[str, Any], *, weights: str | os.PathLike[str] | None = None, model_dir: str = "the model"
) -> BackboneSpec:
    """The ``BackboneSpec`` that reproduces a model's training features, from its ``model.json`` ``features``.

    Args:
        features: the ``features`` block of ``model.json``.
        weights: a local weights file to use instead of the recorded one (needed for ``file:`` weights when the
            recorded path is absent or moved; its sha256 must match).
        model_dir: named in messages.

    Raises:
        ModelMismatchError: the block lacks what is needed, or ``weights`` has another identity.
    """
    missing = [key for key in ("backbone", "weights", "image_size", "layers") if key not in features]
    if missing:
        raise ModelMismatchError(
            f"{model_dir}: model.json records no {', '.join(missing)} under 'features', so the backbone that "
            "computed its training features is unknown; retrain it with `generalad train` or `generalad fit-folder`"
        )
    name, identity = str(features["backbone"]), str(features["weights"])
    common = {"name": name, "image_size": int(features["image_size"]), "layers": tuple(features["layers"])}
    try:
        source = WeightsSource.parse(identity)
    except ConfigError:
        raise ModelMismatchError(
            f"{model_dir}: unknown weights identity {identity!r} in model.json"
        ) from None
    if source.kind == "random":
        if weights is not None:
            raise ModelMismatchError(
                f"{model_dir} was trained on features of a random init ({identity}); it cannot use --weights {weights}"
            )
        return BackboneSpec(weights="random", seed=source.seed, init_values=source.init_values, **common)
    if source.kind == "hub":
        if weights is not None:
            raise ModelMismatchError(
                f"{model_dir} was trained on features of the hub weights {source.repo}, which "
                "prediction loads from the local Hugging Face cache; a --weights file cannot be checked against "
                "them (retrain with --weights FILE to use a local file)"
            )
        return BackboneSpec(weights="hub", **common)
    path = weights if weights is not None else features.get("weights_file")
    if path is None:
        raise ModelMismatchError(
            f"{model_dir} was trained on features of a local weights file ({identity}) whose path it does not "
            "record; pass that file with --weights FILE"
        )
    if not Path(path).is_file():
        raise ModelMismatchError(
            f"{model_dir} was trained with the weights file {path}, which does not exist here; pass the file "
            f"with --weights FILE (its sha256 must be {source.sha256[:16]}...)"
        )
    return BackboneSpec(weights=str(path), **common)


def _check_identity(spec: BackboneSpec, recorded: str, model_dir: str) -> None:
    actual = weights_identity(spec)
    if actual != recorded:
        raise ModelMismatchError(
            f"the backbone weights give {actual}, but {model_dir} was trained on features of {recorded}: "
            "its scores would be meaningless with other weights"
        )


@dataclass
class Predictor:
    """A saved discriminator with the backbone that computes its input features.

    Attributes:
        model: the discriminator (eval mode).
        backbone: the frozen backbone.
        config: the model folder's ``model.json``.
        top_k: image score = mean of the top-K patch logits (None = all patches).
        feature_dtype: the dtype the training features were stored in; fresh features are rounded to it.
        model_dir: where the model came from.
        device: torch device of both networks (resolved: ``cpu``, ``cuda:0``, ...).
        precision: the forward passes' precision (`generalad.devices`).
    """

    model: Discriminator | PatchCoreModel
    backbone: Backbone
    config: dict[str, Any]
    top_k: int | None
    feature_dtype: str
    model_dir: Path
    device: str = "cpu"
    precision: str = DEFAULT_PRECISION

    @property
    def image_size(self) -> int:
        return self.backbone.spec.image_size

    @property
    def backbone_name(self) -> str:
        return self.backbone.spec.name

    def stored_threshold(self):
        """The model folder's ``threshold.json`` (``generalad.apps.thresholds.StoredThreshold``), or None."""
        return read_threshold(self.model_dir)

    @property
    def num_patches(self) -> int:
        return self.backbone.num_patches

    def logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Patch logits (n, N) float32 on the CPU for decoded images (any size; squashed to S x S)."""
        if not images:
            return torch.empty(0, self.num_patches)
        device = torch.device(self.device)
        pixels = pin_if_cuda(
            torch.stack([preprocess_image(image, self.image_size) for image in images]), device
        )
        with torch.inference_mode(), autocast(device, self.precision):
            tokens, _ = self.backbone(pixels.to(device, non_blocking=True))
            tokens = tokens.to(getattr(torch, self.feature_dtype)).float()
            return self.model(tokens).float().cpu()

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """Image scores (n,) float64 from patch logits (n, N)."""
        return image_scores(logits, self.top_k).double().numpy()

    def maps(self, logits: torch.Tensor) -> np.ndarray:
        """Anomaly maps (n, S, S) float32 at the model's resolution from patch logits (n, N)."""
        return anomaly_maps(logits, self.image_size).numpy()


def load_predictor(
    model_dir: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = DEFAULT_PRECISION,
) -> Predictor:
    """Load a saved model and rebuild the backbone its features came from (see the module docstring).

    A ``.onnx`` file written by ``generalad export`` gives an ``OnnxPredictor`` (same interface, onnxruntime).

    Raises:
        ModelFileError: the folder is not a saved model.
        ModelMismatchError: the backbone cannot be rebuilt, or does not fit the discriminator.
        WeightsError: pretrained weights are unreachable.
    """
    model_dir = Path(model_dir)
    if model_dir.suffix == ".onnx":
        from generalad.apps.onnx_runtime import load_onnx_predictor

        return load_onnx_predictor(model_dir, device=device)
    torch_device = resolve_device(device)
    check_precision(precision, torch_device)
    device = str(torch_device)
    model, config = load_model(model_dir, device=device)
    features = dict(config.get("features") or {})
    spec = backbone_spec_for_model(features, weights=weights, model_dir=str(model_dir))
    _check_identity(spec, str(features["weights"]), str(model_dir))
    disc = model_architecture(config)
    grid = spec.grid
    for key, expected, what in (
        ("num_patches", features.get("num_patches"), "patches"),
        ("embed_dim", features.get("embed_dim"), "feature width"),
    ):
        if expected is not None and int(disc[key]) != int(expected):
            raise ModelMismatchError(
                f"{model_dir}: the discriminator takes {disc[key]} {what} but model.json's features record "
                f"{expected}; the folder mixes files of different models"
            )
    if int(disc["num_patches"]) != grid * grid:
        raise ModelMismatchError(
            f"{model_dir}: the discriminator takes {disc['num_patches']} patches but the recorded image size "
            f"{spec.image_size} gives {grid * grid} ({grid} x {grid}); the model belongs to another resolution"
        )
    recorded_prep = features.get("preprocessing")
    if recorded_prep is not None and recorded_prep != PREPROCESSING_SPEC:
        raise ModelMismatchError(
            f"{model_dir} was trained on images preprocessed as {recorded_prep!r}; this generalad preprocesses "
            f"as {PREPROCESSING_SPEC!r}: retrain the model"
        )
    backbone = load_backbone(spec).to(device)
    if backbone.embed_dim != int(disc["embed_dim"]):
        raise ModelMismatchError(
            f"{model_dir}: the discriminator takes features of width {disc['embed_dim']} but {spec.name} with "
            f"layers {list(spec.layers)} gives {backbone.embed_dim}; the model belongs to another backbone"
        )
    dtype = str(features.get("feature_dtype", "float32"))
    if dtype not in ("float16", "float32"):
        raise ModelMismatchError(f"{model_dir}: unknown feature dtype {dtype!r} in model.json")
    return Predictor(
        model=model,
        backbone=backbone,
        config=config,
        top_k=model_top_k(config),
        feature_dtype=dtype,
        model_dir=model_dir,
        device=device,
        precision=precision,
    )


# ----------------------------------------------------------------------------------------------- the inputs


@dataclass(frozen=True)
class InputImage:
    """One image to score: its file and a relative name (unique within a call) for its outputs."""

    path: Path
    name: str  # posix, e.g. "broken/000.png" (the argument folder's name, then the path inside it)


def _walk_images(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` recursively (sorted, hidden entries skipped) and the count of other files."""
    images: list[Path] = []
    others = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        for filename in sorted(filenames):
            if is_ignored(filename):
                continue
            if is_image_file(filename):
                images.append(Path(dirpath) / filename)
            else:
                others += 1
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix()), others


def collect_images(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[InputImage], int]:
    """Expand files and folders (recursively) into the images to score, in argument order then sorted.

    Non-image files inside folders are skipped (their count is returned); a file argument must be an image. The
    same file given twice is scored once.

    Returns:
        The images and the number of skipped non-image files.

    Raises:
        DatasetError: a path is missing, a file argument is not an image, a folder holds no image, or nothing
            was given.
    """
    if not paths:
        raise DatasetError("no images given: pass image files or folders")
    found: list[tuple[Path, str]] = []
    skipped = 0
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images, others = _walk_images(path)
            if not images:
                raise DatasetError(f"folder {path} holds no image files (searched recursively)")
            skipped += others
            label = path.resolve().name or "images"
            found += [(image, f"{label}/{image.relative_to(path).as_posix()}") for image in images]
        elif path.is_file():
            if not is_image_file(path):
                raise DatasetError(f"{path} is not an image file (by its extension)")
            found.append((path, path.name))
        else:
            raise DatasetError(f"{path} does not exist")
    seen: set[Path] = set()
    unique: list[tuple[Path, str]] = []
    for path, name in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((path, name))
    names = _unique_names([name for _, name in unique])
    return [InputImage(path, name) for (path, _), name in zip(unique, names, strict=True)], skipped


def _unique_names(names: Sequence[str]) -> list[str]:
    """Names made unique by a ``-2``, ``-3`` ... suffix on the first path part where two would collide."""
    counts = Counter(names)
    used: set[str] = set()
    out = []
    for name in names:
        candidate = name
        if counts[name] > 1 or candidate in used:
            head, _, tail = name.partition("/")
            index = 2
            while candidate in used:
                candidate = f"{head}-{index}/{tail}" if tail else f"{head}-{index}"
                index += 1
        used.add(candidate)
        out.append(candidate)
    return out


def _output_names(names: Sequence[str]) -> list[str]:
    """Overlay file names (posix, relative): ``<name without extension>.png``; where two images would share one
    (``a.jpg`` and ``a.png``), the full name plus ``.png`` (``a.jpg.png``)."""
    stems = [str(PurePosixPath(name).with_suffix("")) for name in names]
    counts = Counter(stems)
    return [
        f"{stem}.png" if counts[stem] == 1 else f"{name}.png" for stem, name in zip(stems, names, strict=True)
    ]


# ----------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Threshold:
    """A decision threshold: ``pred = score > value``."""

    value: float
    rule: str  # "given", or "quantile q of n normal images"
    quantile: float | None = None
    n_normal: int | None = None


@dataclass
class _Scored:
    inputs: list[InputImage]
    sizes: list[tuple[int, int] | None]  # (width, height), None when unreadable
    logits: torch.Tensor  # (n_readable, N)
    readable: list[int]  # positions into inputs of the rows of `logits`
    errors: dict[int, str] = field(default_factory=dict)


def _score_pass(
    predictor: Predictor,
    inputs: Sequence[InputImage],
    *,
    batch_size: int,
    skip_unreadable: bool,
    progress: bool,
    desc: str,
) -> _Scored:
    """Decode and score every input in batches; unreadable files raise (or are recorded with skip_unreadable)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    sizes: list[tuple[int, int] | None] = []
    chunks: list[torch.Tensor] = []
    readable: list[int] = []
    errors: dict[int, str] = {}
    bar = tqdm(total=len(inputs), desc=desc, unit="img", disable=not progress, leave=False)
    batch: list[Image.Image] = []

    def flush() -> None:
        if batch:
            chunks.append(predictor.logits(batch))
            bar.update(len(batch))
            batch.clear()

    try:
        for index, item in enumerate(inputs):
            try:
                image = open_image(item.path)
            except ImageError as exc:
                if not skip_unreadable:
                    raise
                errors[index] = str(exc)
                sizes.append(None)
                bar.update(1)
                continue
            sizes.append(image.size)
            readable.append(index)
            batch.append(image)
            if len(batch) == batch_size:
                flush()
        flush()
    finally:
        bar.close()
    logits = torch.cat(chunks) if chunks else torch.empty(0, predictor.num_patches)
    return _Scored(list(inputs), sizes, logits, readable, errors)


def score_images(
    predictor: Predictor,
    paths: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> pd.DataFrame:
    """Image scores of files or folders (no pictures): columns ``image``, ``name``, ``width``, ``height``, ``score``.

    Raises:
        DatasetError / ImageError: as ``collect_images``, or a file cannot be decoded.
    """
    inputs, _ = collect_images(paths)
    scored = _score_pass(
        predictor, inputs, batch_size=batch_size, skip_unreadable=False, progress=progress, desc="score"
    )
    scores = predictor.scores(scored.logits)
    return pd.DataFrame(
        {
            "image": [str(item.path) for item in inputs],
            "name": [item.name for item in inputs],
            "width": [size[0] for size in scored.sizes if size],
            "height": [size[1] for size in scored.sizes if size],
            "score": scores,
        }
    )


@dataclass(frozen=True)
class PredictionResult:
    """What ``predict_to_folder`` wrote: the folder, the scores table, the threshold and the colour scale."""

    out_dir: Path
    scores: pd.DataFrame
    threshold: Threshold | None
    map_range: tuple[float, float]
    seconds: float


def _stored(
    predictor: Predictor, threshold: Threshold | None, use: bool
) -> tuple[Threshold | None, tuple[np.ndarray, str] | None]:
    """The threshold to apply (the given one, else the model folder's) and the stored normal reference scores."""
    stored = predictor.stored_threshold() if use else None
    if stored is None:
        return threshold, None
    reference = (
        np.asarray(stored.normal_scores),
        f"{len(stored.normal_scores)} {stored.source} (threshold.json)",
    )
    if threshold is None:
        threshold = Threshold(
            stored.value,
            f"stored in the model folder: {stored.rule}",
            stored.quantile,
            len(stored.normal_scores),
        )
    return threshold, reference


def _map_range_of(predictor: Predictor, logits: torch.Tensor, batch: int = 32) -> tuple[float, float]:
    low, high = math.inf, -math.inf
    for start in range(0, len(logits), batch):
        maps = predictor.maps(logits[start : start + batch])
        low, high = min(low, float(maps.min())), max(high, float(maps.max()))
    return (low, high) if math.isfinite(low) else (0.0, 1.0)


def predict_to_folder(
    predictor: Predictor,
    inputs: Sequence[InputImage],
    out_dir: str | os.PathLike[str],
    *,
    threshold: Threshold | None = None,
    normal: Sequence[InputImage] | None = None,
    quantile: float = 1.0,
    value_range: tuple[float, float] | None = None,
    alpha: float = 0.5,
    batch_size: int = 8,
    save_maps: bool = False,
    skip_unreadable: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_image: Callable[[InputImage, float, np.ndarray], None] | None = None,
    stored_threshold: bool = True,
) -> PredictionResult:
    """Score images and write, atomically, one folder of results.

    Layout of ``out_dir``:
        scores.csv          one row per input: image (path), name, overlay (relative path), width, height, score,
                            score_normalised (when normal reference scores are known), pred (with a threshold),
                            error (with skip_unreadable; empty when fine)
        overlays/<name>.png the heat map over the image at the image's own size
        maps/<name>.npy     the map at the image's size, float32 (only with save_maps)
        normal_scores.csv   the normal images' scores (when the threshold came from them)
        prediction.json     model, backbone, threshold rule and value, colour scale, counts, timing

    Args:
        predictor: from ``load_predictor``.
        inputs: from ``collect_images``.
        out_dir: the result folder; built as a hidden sibling and renamed into place when complete.
        threshold: a given threshold; exclusive with ``normal``.
        normal: normal images NOT used for training: threshold = their score ``quantile`` (1.0 = max).
        quantile: see ``threshold_from_scores``.
        value_range: the overlays' colour scale (map units); default the lowest and highest map value over the
            inputs of this call, so colours compare across its images.
        alpha: heat-map opacity of the overlays.
        batch_size: images per backbone forward.
        save_maps: also write the native-size maps as .npy.
        skip_unreadable: record undecodable files with their error (no score, no overlay) instead of failing.
        overwrite: replace an existing ``out_dir``.
        progress: show progress bars.
        on_image: called as ``on_image(input, score, native_map)`` for each scored input (tests, notebooks).
        stored_threshold: without ``threshold`` and ``normal``, use the model folder's ``threshold.json`` (and its
            normal scores for ``score_normalised``) when it has one.

    Raises:
        ImageError: a file cannot be decoded (without ``skip_unreadable``); nothing is left behind.
        ConfigError: both ``threshold`` and ``normal``, ``out_dir`` exists without ``overwrite``, ...
    """
    started = time.perf_counter()
    if threshold is not None and normal is not None:
        raise ConfigError("give either a threshold or normal images to estimate it from, not both")
    if not inputs:
        raise DatasetError("no images to score")
    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        normal_frame = None
        if normal is not None:
            scored_normal = _score_pass(
                predictor,
                normal,
                batch_size=batch_size,
                skip_unreadable=False,
                progress=progress,
                desc="normal",
            )
            normal_scores = predictor.scores(scored_normal.logits)
            threshold = Threshold(
                threshold_from_scores(normal_scores, quantile),
                (f"quantile {quantile:g}" if quantile < 1 else "maximum")
                + f" of the scores of {len(normal_scores)} normal images",
                quantile,
                len(normal_scores),
            )
            normal_frame = pd.DataFrame(
                {
                    "image": [str(i.path) for i in normal],
                    "name": [i.name for i in normal],
                    "score": normal_scores,
                }
            )
            reference = (normal_scores, f"{len(normal_scores)} normal images given to predict")
        else:
            threshold, reference = _stored(predictor, threshold, stored_threshold)
        scored = _score_pass(
            predictor,
            inputs,
            batch_size=batch_size,
            skip_unreadable=skip_unreadable,
            progress=progress,
            desc="score",
        )
        if not scored.readable:
            raise ImageError("none of the images could be decoded: " + "; ".join(scored.errors.values()))
        scores = predictor.scores(scored.logits)
        vmin, vmax = value_range if value_range is not None else _map_range_of(predictor, scored.logits)
        if not vmax > vmin:
            vmax = vmin + 1e-6
        overlay_names = _output_names([item.name for item in inputs])

        tmp.mkdir()
        row_of = {index: row for row, index in enumerate(scored.readable)}
        records: list[dict[str, Any]] = []
        bar = tqdm(total=len(inputs), desc="overlays", unit="img", disable=not progress, leave=False)
        try:
            for index, item in enumerate(inputs):
                record: dict[str, Any] = {"image": str(item.path), "name": item.name}
                if index in scored.errors:
                    record |= {"overlay": "", "width": None, "height": None, "score": math.nan}
                    record["error"] = scored.errors[index]
                    records.append(record)
                    bar.update(1)
                    continue
                row = row_of[index]
                image = open_image(item.path)
                values = resize_map(predictor.maps(scored.logits[row : row + 1])[0], image.size)
                target = tmp / OVERLAY_DIR / overlay_names[index]
                target.parent.mkdir(parents=True, exist_ok=True)
                overlay(image, values, vmin=vmin, vmax=vmax, alpha=alpha).save(
                    target,
                    format="PNG",
                    compress_level=1,  # 3x faster than the default 6, ~10 % larger
                )
                if save_maps:
                    map_path = (tmp / MAP_DIR / overlay_names[index]).with_suffix(".npy")
                    map_path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(map_path, values)
                if on_image is not None:
                    on_image(item, float(scores[row]), values)
                record |= {
                    "overlay": f"{OVERLAY_DIR}/{overlay_names[index]}",
                    "width": image.width,
                    "height": image.height,
                    "score": float(scores[row]),
                    "error": "",
                }
                records.append(record)
                bar.update(1)
        finally:
            bar.close()

        frame = pd.DataFrame(
            records, columns=["image", "name", "overlay", "width", "height", "score", "error"]
        )
        frame["width"] = frame["width"].astype("Int64")
        frame["height"] = frame["height"].astype("Int64")
        if reference is not None:
            frame.insert(6, NORMALISED_COLUMN, normalised_scores(frame["score"], reference[0]))
        if threshold is not None:
            frame.insert(len(frame.columns) - 1, "pred", (frame["score"] > threshold.value).astype("Int64"))
            frame.loc[frame["score"].isna(), "pred"] = pd.NA
        if not skip_unreadable:
            frame = frame.drop(columns="error")
        frame.to_csv(tmp / SCORES_CSV, index=False)
        if normal_frame is not None:
            normal_frame.to_csv(tmp / NORMAL_SCORES_CSV, index=False)
        seconds = time.perf_counter() - started
        features = predictor.config.get("features", {})
        summary = {
            "model": str(predictor.model_dir),
            "backbone": predictor.backbone_name,
            "weights": features.get("weights"),
            "image_size": predictor.image_size,
            "top_k": predictor.top_k,
            "feature_dtype": predictor.feature_dtype,
            "n_images": len(inputs),
            "n_scored": len(scored.readable),
            "n_unreadable": len(scored.errors),
            "threshold": None
            if threshold is None
            else {
                "value": threshold.value,
                "rule": threshold.rule,
                "quantile": threshold.quantile,
                "n_normal": threshold.n_normal,
                "decision": "pred = 1 when score > value",
                "n_flagged": int((frame["score"] > threshold.value).sum()),
            },
            NORMALISED_COLUMN: None
            if reference is None
            else {
                "definition": NORMALISED_DEFINITION,
                "reference": reference[1],
                "n_normal": len(reference[0]),
            },
            "map_range": [vmin, vmax],
            "map": "patch logits -> bilinear to S x S -> Gaussian blur -> bilinear to the image's size",
            "overlay_alpha": alpha,
            "seconds": seconds,
        }
        (tmp / PREDICTION_JSON).write_text(json.dumps(summary, indent=2))
    return PredictionResult(Path(out_dir), frame, threshold, (vmin, vmax), seconds)
