"""The fit-folder job's result folder: the model, its scores, and a visual report of the test images.

``generalad.apps.fit_folder`` fits the model; this module writes what it produced. It works on any
``FeatureSource`` (the grid recomputes patch logits from it), so it imports nothing from ``storage``.

Result folder (written as a hidden sibling, renamed into place at the end; nothing is left on failure):

    <out>/model.safetensors, model.json      the model, loadable by `generalad predict` / `generalad evaluate`
    <out>/threshold.json                     the max normal test score and those scores (when there are normal
                                             test images): `generalad predict`'s default threshold
    <out>/metrics.json, scores.parquet       as written by `generalad train` (metrics [] when train-only)
    <out>/report/summary.md                  data, backbone, settings, timings, metrics, threshold suggestion
    <out>/report/test_scores.csv             one row per test image: path, defect type, label, score
    <out>/report/grid.png                    test images with ground truth and anomaly maps (when any)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from generalad.apps.model_io import write_run_outputs
from generalad.apps.staging import staged_dir
from generalad.apps.thresholds import THRESHOLD_FILE, write_threshold
from generalad.apps.visualize import map_range, sample_grid
from generalad.data.base import manifest_record
from generalad.data.folder import NORMAL_CLASS, FolderDataset
from generalad.errors import ConfigError
from generalad.method.experiment import RunResult
from generalad.method.feature_source import FeatureSource
from generalad.method.scoring import anomaly_maps, patch_logits

__all__ = [
    "FitOutputs",
    "grid_rows",
    "render_grid",
    "write_fit_outputs",
    "REPORT_DIR",
    "GRID_FILE",
    "SUMMARY_FILE",
    "TEST_SCORES_FILE",
]

REPORT_DIR = "report"
GRID_FILE = "grid.png"
SUMMARY_FILE = "summary.md"
TEST_SCORES_FILE = "test_scores.csv"
PathLike = str | os.PathLike[str]


def grid_rows(manifest: pd.DataFrame, scores: pd.DataFrame, max_samples: int = 16) -> list[int]:
    """Manifest rows of the test images shown in the grid, in display order.

    All of them when there are at most ``max_samples``. Otherwise about a quarter of the slots go to normal
    images, highest score first (the likeliest false alarms), and the rest to anomalous images taken in turn from
    each defect type (in manifest order within a type); unused slots of one kind go to the other.
    """
    if max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1, got {max_samples}")
    table = scores.merge(manifest[["defect_type"]], left_on="row", right_index=True, how="left")
    normal = table[table["label"] == 0].sort_values("score", ascending=False, kind="stable")["row"].tolist()
    by_type: dict[str, list[int]] = {}
    for row, defect in table[table["label"] != 0][["row", "defect_type"]].itertuples(index=False):
        by_type.setdefault(str(defect), []).append(int(row))
    anomalous: list[int] = []
    queues = [list(rows) for _, rows in sorted(by_type.items())]
    while any(queues):
        for queue in queues:
            if queue:
                anomalous.append(queue.pop(0))
    n_normal = min(len(normal), max(1, max_samples // 4)) if normal else 0
    n_anomalous = min(len(anomalous), max_samples - n_normal)
    n_normal = min(len(normal), max_samples - n_anomalous)
    chosen_anomalous = anomalous[:n_anomalous]
    order = {defect: i for i, defect in enumerate(sorted(by_type))}
    defect_of = dict(zip(table["row"], table["defect_type"], strict=True))
    chosen_anomalous.sort(key=lambda r: (order[str(defect_of[r])], r))
    return [int(r) for r in normal[:n_normal]] + chosen_anomalous


def render_grid(
    dataset: FolderDataset,
    manifest: pd.DataFrame,
    rows: Sequence[int],
    logits: torch.Tensor,
    scores: Sequence[float],
    image_size: int,
    *,
    title: str | None = None,
    tile: int = 128,
    columns: int = 8,
) -> Image.Image:
    """The sample grid of ``rows`` (manifest rows) given their patch logits (len(rows), N) and scores.

    Maps are computed at the model's resolution ``image_size`` (one colour scale for all); masks come from the
    dataset's files (all zero for normal images when the dataset has masks, "no mask" otherwise).
    """
    images, masks, captions = [], [], []
    for row in rows:
        record = manifest_record(manifest.iloc[int(row)])
        image = dataset.load_image(record)
        images.append(image)
        if dataset.has_masks:
            masks.append(np.asarray(dataset.load_mask(record, image.size)))
        else:
            masks.append(None)
        captions.append(record.defect_type if record.label else f"{NORMAL_CLASS} (normal)")
    maps = list(anomaly_maps(logits, image_size).numpy())
    vmin, vmax = map_range(maps)
    return sample_grid(
        images,
        maps,
        masks,
        list(scores),
        captions=captions,
        vmin=vmin,
        vmax=vmax,
        tile=tile,
        columns=columns,
        title=title,
    )


@dataclass(frozen=True)
class FitOutputs:
    """Where a fit's results went."""

    out_dir: Path
    summary: Path
    test_scores: Path
    grid: Path | None


def _settings_line(result: RunResult) -> str:
    preset = result.preset
    if result.method != "generalad":  # the kNN baseline: no training settings
        return (
            f"- settings: {result.method}: coreset ratio {preset.coreset_ratio:g}, "
            f"{result.model.bank.shape[0]} bank patches, image score = max patch distance, seed {result.seed}"
        )
    return (
        f"- settings: preset {preset.name} ({preset.kind}): views {', '.join(preset.views)}, top-K "
        f"{preset.top_k}, sigma {preset.sigma:g}, {preset.epochs} epochs, seed {result.seed}"
    )


def _summary_markdown(
    result: RunResult,
    manifest: pd.DataFrame,
    feature_info: Mapping[str, Any],
    timings: Mapping[str, float],
    notes: Sequence[str],
    threshold: float | None,
    out_dir: Path,
) -> str:
    test = manifest.iloc[result.scores["row"].to_numpy()] if len(result.scores) else manifest.iloc[:0]
    defects = sorted(set(test.loc[test["label"] != 0, "defect_type"]))
    lines = [
        "# fit-folder report",
        "",
        f"- normal training images: {len(result.train_rows)}",
        f"- test images: {int((test['label'] == 0).sum())} normal, {int((test['label'] != 0).sum())} anomalous"
        + (f" ({', '.join(defects)})" if defects else ""),
        f"- backbone: {feature_info.get('backbone')} ({feature_info.get('weights')}), image size "
        f"{feature_info.get('image_size')}, layers {feature_info.get('layers')}, features "
        f"{feature_info.get('feature_dtype')}",
        f"- feature store: {feature_info.get('store')}",
        _settings_line(result),
        "- time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()),
    ]
    lines += [f"- {note}" for note in notes]
    lines += ["", "## Metrics", ""]
    if result.metrics:
        lines += ["| metric | value | selection | epoch |", "|---|---|---|---|"]
        lines += [
            f"| {row['metric']} | {row['value']:.4f} | {row['selection']} | {row['epoch']} |"
            for row in result.metrics
        ]
    else:
        lines.append("None: metrics need both normal and anomalous test images (train-only run).")
    lines += ["", "## Decision threshold", ""]
    if threshold is not None:
        lines.append(
            f"Highest score of a normal test image: {threshold:.6g}, stored in `{THRESHOLD_FILE}`: `generalad "
            f"predict --model {out_dir} IMAGES` flags images scoring above it by default; better, estimate it on "
            "normal images that are not in the test set: `--normal DIR`."
        )
    else:
        lines.append("No normal test images: estimate one with `generalad predict --normal DIR`.")
    return "\n".join(lines) + "\n"


def _test_scores_table(result: RunResult, dataset: FolderDataset, manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per test image: its path, defect type, label and score (report/test_scores.csv)."""
    scores = result.scores
    rows = scores["row"].to_numpy()
    return pd.DataFrame(
        {
            "image": [str(dataset.root / p) for p in manifest["rel_path"].to_numpy()[rows]],
            "defect_type": manifest["defect_type"].to_numpy()[rows],
            "label": scores["label"].to_numpy(),
            "score": scores["score"].to_numpy(),
        }
    )


def _write_grid(
    result: RunResult,
    report: Path,
    *,
    dataset: FolderDataset,
    manifest: pd.DataFrame,
    source: FeatureSource,
    image_size: int,
    max_grid: int,
) -> Path:
    """Render the test images' sample grid into ``report`` (the caller checks there are test scores)."""
    scores = result.scores
    rows = grid_rows(manifest, scores, max_grid)
    logits = patch_logits(result.model, source, rows)
    by_row = dict(zip(scores["row"], scores["score"], strict=True))
    title = f"{len(rows)} of {len(scores)} test images; colours: one scale for all"
    grid = render_grid(dataset, manifest, rows, logits, [by_row[r] for r in rows], image_size, title=title)
    grid_path = report / GRID_FILE
    grid.save(grid_path, format="PNG", optimize=True)
    return grid_path


def write_fit_outputs(
    result: RunResult,
    out_dir: PathLike,
    *,
    dataset: FolderDataset,
    manifest: pd.DataFrame,
    source: FeatureSource,
    image_size: int,
    feature_info: Mapping[str, Any],
    timings: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
    max_grid: int = 16,
    overwrite: bool = False,
) -> FitOutputs:
    """Write the model, metrics, scores and the report folder, atomically (see the module docstring).

    Args:
        result: from ``fit_one_class``.
        out_dir: the result folder.
        dataset: the folders (to load images and masks for the grid).
        manifest: the manifest the feature rows follow (the store's).
        source: the features, to recompute the grid images' patch logits.
        image_size: the model's resolution S.
        feature_info: recorded in model.json under ``features`` (backbone, weights, image size, ...).
        timings: name -> seconds, for the summary.
        notes: extra lines for the summary.
        max_grid: at most this many images in the grid (see ``grid_rows``).
        overwrite: replace an existing ``out_dir``.
    """
    out_dir = Path(out_dir)
    scores = result.scores
    normal_scores = scores.loc[scores["label"] == 0, "score"]
    threshold = float(normal_scores.max()) if len(normal_scores) else None
    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        write_run_outputs(
            result,
            tmp,
            image_ids=manifest["image_id"].to_numpy(),
            extra_columns={
                "dataset": "folder",
                "class_name": result.normal_class,
                "seed": result.seed,
                "method": result.method,
            },
            feature_info=feature_info,
        )
        if threshold is not None:
            write_threshold(tmp, normal_scores.to_numpy(), source="normal test images of fit-folder")
        report = tmp / REPORT_DIR
        report.mkdir()
        _test_scores_table(result, dataset, manifest).to_csv(report / TEST_SCORES_FILE, index=False)
        grid_path = None
        if len(scores):
            grid_path = _write_grid(
                result,
                report,
                dataset=dataset,
                manifest=manifest,
                source=source,
                image_size=image_size,
                max_grid=max_grid,
            )
        (report / SUMMARY_FILE).write_text(
            _summary_markdown(result, manifest, feature_info, dict(timings or {}), notes, threshold, out_dir)
        )
        (report / "fit.json").write_text(
            json.dumps(
                {
                    "timings": dict(timings or {}),
                    "threshold_max_test_normal": threshold,
                    "notes": list(notes),
                },
                indent=2,
            )
        )
    final_report = out_dir / REPORT_DIR
    return FitOutputs(
        out_dir,
        final_report / SUMMARY_FILE,
        final_report / TEST_SCORES_FILE,
        final_report / GRID_FILE if grid_path is not None else None,
    )
