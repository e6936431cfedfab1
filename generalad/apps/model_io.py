"""Saving and loading discriminators, and writing one run's result files.

A saved model is two files in a folder: ``model.safetensors`` (the weights; no pickle anywhere) and
``model.json`` (the discriminator's constructor arguments plus whatever the caller records: preset, seed,
feature info such as num_patches / embed_dim / image_size / backbone identity). The PatchCore-kNN method saves
its memory bank the same way (format ``generalad-patchcore``, constructor arguments under "patchcore");
``load_model`` returns either, both map tokens (B, N, E) to patch scores (B, N).

``write_run_outputs`` writes ``metrics.json``, ``scores.parquet`` and the model into a temporary sibling folder
and renames it into place at the end, so a failure leaves no partial result folder behind;
``write_evaluation_outputs`` does the same for a re-evaluation of a saved model (metrics and scores only).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.torch import load_file, save_file

from generalad.apps.staging import staged_dir
from generalad.errors import ConfigError, GeneralADError
from generalad.method.discriminator import Discriminator
from generalad.method.evaluation import Evaluation
from generalad.method.experiment import RunResult
from generalad.method.patchcore import METHOD as PATCHCORE
from generalad.method.patchcore import PatchCoreModel

__all__ = [
    "MODEL_WEIGHTS",
    "MODEL_CONFIG",
    "METRICS_FILE",
    "SCORES_FILE",
    "ModelFileError",
    "save_model",
    "load_model",
    "model_method",
    "model_top_k",
    "model_architecture",
    "run_config",
    "write_run_outputs",
    "write_evaluation_outputs",
]

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model.json"
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.parquet"
_FORMAT = "generalad-discriminator"
_PATCHCORE_FORMAT = "generalad-patchcore"
_FORMAT_VERSION = 1
# format -> (the key of the constructor arguments in model.json, the class)
_KINDS: dict[str, tuple[str, type]] = {
    _FORMAT: ("discriminator", Discriminator),
    _PATCHCORE_FORMAT: ("patchcore", PatchCoreModel),
}


class ModelFileError(GeneralADError, FileNotFoundError):
    """A model folder lacks its files, or they do not describe a discriminator."""


def _json_ready(value: Any) -> Any:
    """Plain JSON types for numpy scalars/arrays, tuples, paths; NaN/inf become None."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_ready(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def save_model(
    model: Discriminator | PatchCoreModel, directory: str | Path, config: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory`` (created if needed).

    Args:
        model: the discriminator, or a PatchCore memory bank.
        directory: target folder.
        config: JSON-ready information recorded next to the weights (preset, seed, feature info, ...); the
            key "discriminator" is reserved for the model's own constructor arguments.

    Returns:
        The folder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fmt = _PATCHCORE_FORMAT if isinstance(model, PatchCoreModel) else _FORMAT
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(directory / MODEL_WEIGHTS), metadata={"format": fmt})
    document = {"format": fmt, "format_version": _FORMAT_VERSION, **_json_ready(dict(config or {}))}
    document[_KINDS[fmt][0]] = model.config()
    (directory / MODEL_CONFIG).write_text(json.dumps(document, indent=2, sort_keys=True))
    return directory


def load_model(
    directory: str | Path, *, device: str = "cpu"
) -> tuple[Discriminator | PatchCoreModel, dict[str, Any]]:
    """The model saved in ``directory`` (eval mode) and its ``model.json`` contents.

    Raises:
        ModelFileError: a file is missing or the JSON is not a discriminator description.
    """
    directory = Path(directory)
    missing = [name for name in (MODEL_WEIGHTS, MODEL_CONFIG) if not (directory / name).is_file()]
    if missing:
        raise ModelFileError(f"{directory} is not a saved model: missing {', '.join(missing)}")
    try:
        config = json.loads((directory / MODEL_CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{directory / MODEL_CONFIG} is not valid JSON: {exc}") from exc
    kind = _KINDS.get(config.get("format"))
    if kind is None or kind[0] not in config:
        raise ModelFileError(f"{directory / MODEL_CONFIG} does not describe a {' or '.join(_KINDS)}")
    key, cls = kind
    model = cls.from_config(config[key])
    try:
        state = load_file(str(directory / MODEL_WEIGHTS), device=device)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a corrupt file
        raise ModelFileError(
            f"{directory / MODEL_WEIGHTS} is not a readable safetensors file: {exc}"
        ) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{directory / MODEL_WEIGHTS} does not fit {config[key]}: {exc}") from exc
    return model.to(device).eval(), config


def model_method(config: Mapping[str, Any]) -> str:
    """The method of a loaded ``model.json``: "generalad" or "patchcore_knn"."""
    return PATCHCORE if config.get("format") == _PATCHCORE_FORMAT else "generalad"


def model_top_k(config: Mapping[str, Any]) -> int | None:
    """The image score's K of a loaded ``model.json`` (kNN: 1, the maximum; None = all patches)."""
    if model_method(config) == PATCHCORE:
        return 1
    return (config.get("preset") or {}).get("top_k")


def model_architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments (num_patches, embed_dim, ...) of a loaded ``model.json``, either method."""
    return dict(config[_KINDS[config["format"]][0]])


def run_config(result: RunResult, feature_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What ``model.json`` records for a run: preset, seed, shots, epochs, batch size, class, feature info, and
    the device and precision it trained on."""
    return {
        "preset": result.preset.to_dict(),
        "seed": result.seed,
        "shots": result.shots,
        "epochs": result.epochs,
        "batch_size": result.batch_size,
        "normal_class": result.normal_class,
        "n_train": len(result.train_rows),
        "device": result.device,
        "precision": result.precision,
        "features": dict(feature_info or {}),
    }


def _scores_table(
    scores: pd.DataFrame, image_ids: Sequence[str] | np.ndarray | None, extra: dict
) -> pd.DataFrame:
    """scores (row, score, label) with image_id first and the extra columns appended."""
    scores = scores.copy()
    rows = scores["row"].to_numpy()
    if image_ids is not None:
        ids = np.asarray(image_ids, dtype=object)
        if len(rows) and rows.max() >= len(ids):
            raise ConfigError(f"image_ids has {len(ids)} entries but the scores reach row {rows.max()}")
        scores.insert(0, "image_id", pd.array(ids[rows], dtype="string"))
    else:
        scores.insert(0, "image_id", pd.array([None] * len(rows), dtype="string"))
    for key, value in extra.items():
        scores[key] = value if not isinstance(value, list | dict) else json.dumps(value)
    return scores


def _extra_columns(extra_columns: Mapping[str, Any] | None) -> dict[str, Any]:
    extra = _json_ready(dict(extra_columns or {}))
    clash = sorted(
        set(extra) & {"metric", "value", "selection", "epoch", "row", "image_id", "score", "label"}
    )
    if clash:
        raise ConfigError(f"extra_columns must not replace result columns: {clash}")
    return extra


def _write_atomically(out_dir: Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary sibling folder, then rename it to ``out_dir`` (replacing it)."""
    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        tmp.mkdir()
        write(tmp)
    return out_dir


def write_run_outputs(
    result: RunResult,
    out_dir: str | Path,
    *,
    image_ids: Sequence[str] | np.ndarray | None = None,
    extra_columns: Mapping[str, Any] | None = None,
    feature_info: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a run's results atomically: ``metrics.json``, ``scores.parquet``, ``model.*``.

    Args:
        result: the run.
        out_dir: the result folder; written as a temporary sibling and renamed into place at the end.
        image_ids: image ids indexed by row (the manifest's ``image_id`` column); scores.parquet then maps
            each row to its id. Without it the image_id column is null (the row column is always present).
        extra_columns: constant values added to every metric row and as columns of scores.parquet
            (run id, dataset, backbone, ...).
        feature_info: recorded in model.json under "features" (num_patches, embed_dim, image_size, backbone).
        overwrite: replace an existing ``out_dir``; otherwise an existing folder is a ConfigError.

    Returns:
        ``out_dir``.
    """
    extra = _extra_columns(extra_columns)

    def write(tmp: Path) -> None:
        metrics = [_json_ready(row) | extra for row in result.metrics]
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        _scores_table(result.scores, image_ids, extra).to_parquet(tmp / SCORES_FILE, index=False)
        save_model(result.model, tmp, run_config(result, feature_info))

    return _write_atomically(Path(out_dir), overwrite, write)


def write_evaluation_outputs(
    evaluation: Evaluation,
    metrics: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    image_ids: Sequence[str] | np.ndarray | None = None,
    extra_columns: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a re-evaluation of a saved model atomically: ``metrics.json`` and ``scores.parquet`` (no model).

    Args:
        evaluation: the evaluation (its per-image scores go to scores.parquet).
        metrics: its metric rows (e.g. ``generalad.method.experiment.metric_rows(evaluation, ...)``).
        out_dir: the result folder; written as a temporary sibling and renamed into place at the end.
        image_ids: image ids indexed by row, as in ``write_run_outputs``.
        extra_columns: constant values added to every metric row and to scores.parquet.
        overwrite: replace an existing ``out_dir``; otherwise an existing folder is a ConfigError.
    """
    extra = _extra_columns(extra_columns)

    def write(tmp: Path) -> None:
        rows = [_json_ready(dict(row)) | extra for row in metrics]
        (tmp / METRICS_FILE).write_text(json.dumps(rows, indent=2))
        _scores_table(evaluation.scores_frame(), image_ids, extra).to_parquet(tmp / SCORES_FILE, index=False)

    return _write_atomically(Path(out_dir), overwrite, write)
