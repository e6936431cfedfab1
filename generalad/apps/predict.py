"""Writing a prediction folder: scores, a decision, and anomaly-map overlays at each image's own size.

The model comes from ``generalad.apps.predictor.load_predictor``, the inputs from
``generalad.apps.predict_inputs.collect_images``, their patch logits from ``generalad.apps.predict_scoring``.
Per image, the patch logits give the S x S anomaly map (bilinear upsampling + Gaussian blur,
``generalad.method.scoring.anomaly_maps``), which is then resized bilinearly to the image's own width x height.
Images of mixed sizes and formats are fine: each overlay has its own image's size.

Decision threshold (optional): ``threshold_from_scores(normal_scores, quantile)`` is the ``quantile`` of the
scores of normal images that were NOT used for training (linear interpolation; quantile 1.0 = their maximum, the
default), and an image is flagged (``pred = 1``) when its score is strictly greater than the threshold. With the
maximum, no image of that normal set is flagged. Without a given threshold or normal images, the threshold stored
in the model folder (``threshold.json``, written by ``fit-folder``) is used. Whenever normal reference scores are
known (the given normal images, else the stored ones), scores.csv also has ``score_normalised``: the score as the
empirical CDF of those normal scores, in [0, 1] (``generalad.apps.thresholds``).

Example:
    >>> predictor = load_predictor("runs/grid")  # doctest: +SKIP
    >>> inputs, _ = collect_images(["photos/"])  # doctest: +SKIP
    >>> result = predict_to_folder(predictor, inputs, "predictions")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from generalad.apps.predict_inputs import InputImage, output_names
from generalad.apps.predict_scoring import ScoredInputs, score_inputs
from generalad.apps.predictor import Predictor
from generalad.apps.staging import staged_dir
from generalad.apps.thresholds import (
    NORMALISED_COLUMN,
    NORMALISED_DEFINITION,
    Threshold,
    normalised_scores,
    threshold_from_scores,
)
from generalad.apps.visualize import overlay, resize_map
from generalad.data.images import open_image
from generalad.errors import ConfigError, DatasetError, ImageError

__all__ = [
    "PredictionResult",
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


@dataclass(frozen=True)
class PredictionResult:
    """What ``predict_to_folder`` wrote: the folder, the scores table, the threshold and the colour scale."""

    out_dir: Path
    scores: pd.DataFrame
    threshold: Threshold | None
    map_range: tuple[float, float]
    seconds: float


@dataclass(frozen=True)
class _Decision:
    """The threshold to apply, the normal reference scores (and where they came from), the normal images' table."""

    threshold: Threshold | None
    reference: tuple[np.ndarray, str] | None
    normal_frame: pd.DataFrame | None = None


def _decision_from_normal(
    predictor: Predictor, normal: Sequence[InputImage], quantile: float, *, batch_size: int, progress: bool
) -> _Decision:
    """Threshold = the ``quantile`` of the scores of normal images given to predict (also the reference)."""
    scored_normal = score_inputs(
        predictor, normal, batch_size=batch_size, skip_unreadable=False, progress=progress, desc="normal"
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
    return _Decision(threshold, reference, normal_frame)


def _stored_decision(predictor: Predictor, threshold: Threshold | None, use: bool) -> _Decision:
    """The threshold to apply (the given one, else the model folder's) and the stored normal reference scores."""
    stored = predictor.stored_threshold() if use else None
    if stored is None:
        return _Decision(threshold, None)
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
    return _Decision(threshold, reference)


def _map_range_of(predictor: Predictor, logits: torch.Tensor, batch: int = 32) -> tuple[float, float]:
    low, high = math.inf, -math.inf
    for start in range(0, len(logits), batch):
        maps = predictor.maps(logits[start : start + batch])
        low, high = min(low, float(maps.min())), max(high, float(maps.max()))
    return (low, high) if math.isfinite(low) else (0.0, 1.0)


def _colour_scale(
    predictor: Predictor, logits: torch.Tensor, value_range: tuple[float, float] | None
) -> tuple[float, float]:
    """The overlays' colour scale: the given one, else the maps' range over this call (never empty)."""
    vmin, vmax = value_range if value_range is not None else _map_range_of(predictor, logits)
    if not vmax > vmin:
        vmax = vmin + 1e-6
    return vmin, vmax


@dataclass(frozen=True)
class _Drawing:
    """How each readable input is drawn, and what else is done with its map."""

    colours: tuple[float, float]
    alpha: float
    save_maps: bool
    on_image: Callable[[InputImage, float, np.ndarray], None] | None


def _draw(
    predictor: Predictor, item: InputImage, logits: torch.Tensor, name: str, tmp: Path, drawing: _Drawing
) -> tuple[Image.Image, np.ndarray]:
    """Write one image's overlay (and map with save_maps); its decoded image and native-size map."""
    image = open_image(item.path)
    values = resize_map(predictor.maps(logits)[0], image.size)
    target = tmp / OVERLAY_DIR / name
    target.parent.mkdir(parents=True, exist_ok=True)
    vmin, vmax = drawing.colours
    overlay(image, values, vmin=vmin, vmax=vmax, alpha=drawing.alpha).save(
        target,
        format="PNG",
        compress_level=1,  # 3x faster than the default 6, ~10 % larger
    )
    if drawing.save_maps:
        map_path = (tmp / MAP_DIR / name).with_suffix(".npy")
        map_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(map_path, values)
    return image, values


def _write_images(
    predictor: Predictor,
    scored: ScoredInputs,
    scores: np.ndarray,
    tmp: Path,
    drawing: _Drawing,
    progress: bool,
) -> list[dict[str, Any]]:
    """Draw every readable input into ``tmp``; one scores.csv record per input (unreadable ones with their error)."""
    inputs = scored.inputs
    overlay_names = output_names([item.name for item in inputs])
    row_of = {index: row for row, index in enumerate(scored.readable)}
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(inputs), desc="overlays", unit="img", disable=not progress, leave=False)
    try:
        for index, item in enumerate(inputs):
            record: dict[str, Any] = {"image": str(item.path), "name": item.name}
            if index in scored.errors:
                record |= {"overlay": "", "width": None, "height": None, "score": math.nan}
                record["error"] = scored.errors[index]
            else:
                row = row_of[index]
                image, values = _draw(
                    predictor, item, scored.logits[row : row + 1], overlay_names[index], tmp, drawing
                )
                if drawing.on_image is not None:
                    drawing.on_image(item, float(scores[row]), values)
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
    return records


def _scores_frame(records: list[dict[str, Any]], decision: _Decision, skip_unreadable: bool) -> pd.DataFrame:
    """scores.csv: the records, with score_normalised and pred where a reference and a threshold are known."""
    frame = pd.DataFrame(records, columns=["image", "name", "overlay", "width", "height", "score", "error"])
    frame["width"] = frame["width"].astype("Int64")
    frame["height"] = frame["height"].astype("Int64")
    if decision.reference is not None:
        frame.insert(6, NORMALISED_COLUMN, normalised_scores(frame["score"], decision.reference[0]))
    threshold = decision.threshold
    if threshold is not None:
        frame.insert(len(frame.columns) - 1, "pred", (frame["score"] > threshold.value).astype("Int64"))
        frame.loc[frame["score"].isna(), "pred"] = pd.NA
    if not skip_unreadable:
        frame = frame.drop(columns="error")
    return frame


def _summary(
    predictor: Predictor,
    scored: ScoredInputs,
    decision: _Decision,
    frame: pd.DataFrame,
    drawing: _Drawing,
    seconds: float,
) -> dict[str, Any]:
    """prediction.json: model, backbone, threshold rule and value, colour scale, counts, timing."""
    features = predictor.config.get("features", {})
    threshold, reference = decision.threshold, decision.reference
    return {
        "model": str(predictor.model_dir),
        "backbone": predictor.backbone_name,
        "weights": features.get("weights"),
        "image_size": predictor.image_size,
        "top_k": predictor.top_k,
        "feature_dtype": predictor.feature_dtype,
        "n_images": len(scored.inputs),
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
        "map_range": list(drawing.colours),
        "map": "patch logits -> bilinear to S x S -> Gaussian blur -> bilinear to the image's size",
        "overlay_alpha": drawing.alpha,
        "seconds": seconds,
    }


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
        if normal is not None:
            decision = _decision_from_normal(
                predictor, normal, quantile, batch_size=batch_size, progress=progress
            )
        else:
            decision = _stored_decision(predictor, threshold, stored_threshold)
        scored = score_inputs(
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
        drawing = _Drawing(_colour_scale(predictor, scored.logits, value_range), alpha, save_maps, on_image)
        tmp.mkdir()
        records = _write_images(predictor, scored, scores, tmp, drawing, progress)
        frame = _scores_frame(records, decision, skip_unreadable)
        frame.to_csv(tmp / SCORES_CSV, index=False)
        if decision.normal_frame is not None:
            decision.normal_frame.to_csv(tmp / NORMAL_SCORES_CSV, index=False)
        seconds = time.perf_counter() - started
        summary = _summary(predictor, scored, decision, frame, drawing, seconds)
        (tmp / PREDICTION_JSON).write_text(json.dumps(summary, indent=2))
    return PredictionResult(Path(out_dir), frame, decision.threshold, drawing.colours, seconds)
