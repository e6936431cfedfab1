"""Turning one experiment's results into report rows with full provenance (docs/design.md "Reports")."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from generalad.method.experiment import RunResult
from generalad.method.presets import Preset
from generalad.method.scoring import blur_params
from storage.feature_store import FeatureStore
from storage.metric_row import MetricRow
from storage.report_values import format_layers, format_views
from storage.run_identity import config_hash
from storage.score_rows import scores_from_arrays

__all__ = [
    "RunContext",
    "metric_rows_of",
    "failed_rows",
    "score_table_of",
    "pixel_postprocess_label",
    "preset_columns",
]


def preset_columns(preset: Preset, *, num_patches: int) -> dict[str, Any]:
    """The whole resolved preset as report columns (top_k None resolved to N, the plain mean it means).

    For the kNN method (`PatchCoreSettings`): its fixed values (views clean, epochs 0, lr 0, sigma 0, top_k 1) and
    None in the discriminator's training columns."""
    if getattr(preset, "method", "generalad") != "generalad":
        untrained = (
            "batch_size",
            "weight_decay",
            "lr_min_factor",
            "epoch_subset",
            "disc_blocks",
            "disc_heads",
        )
        return {
            "preset": preset.name,
            "views": format_views(preset.views),
            "epochs": preset.epochs,
            "lr": preset.lr,
            "top_k": preset.top_k,
            "sigma": preset.sigma,
            "exclude_fixed_points": False,
            **dict.fromkeys((*untrained, "mlp_dim", "dropout")),
        }
    return {
        "preset": preset.name,
        "views": format_views(preset.views),
        "epochs": preset.epochs,
        "lr": preset.lr,
        "top_k": preset.top_k or num_patches,
        "sigma": preset.sigma,
        "batch_size": preset.batch_size,
        "weight_decay": preset.weight_decay,
        "lr_min_factor": preset.lr_min_factor,
        "epoch_subset": preset.epoch_subset,
        "exclude_fixed_points": preset.exclude_fixed_points,
        "disc_blocks": preset.num_blocks,
        "disc_heads": preset.num_heads,
        "mlp_dim": preset.mlp_dim,
        "dropout": preset.dropout,
    }


def pixel_postprocess_label(image_size: int) -> str:
    """How pixel maps were made, as stored in reports: e.g. `bilinear+gauss(s=16,r=18)@518`."""
    sigma, radius = blur_params(image_size)
    return f"bilinear+gauss(s={sigma:g},r={radius})@{image_size}"


@dataclass(frozen=True)
class RunContext:
    """What a report row says about where a result came from (everything but the measured values)."""

    run_id: str
    dataset: str
    category: str | None
    backbone: str
    weights: str
    image_size: int
    layers: tuple[int, ...]
    feature_dtype: str
    store_key: str
    split_protocol: str
    flow_run_id: str | None = None
    suite: str | None = None
    variant: str = ""
    device: str = "cpu"
    extract_seconds: float | None = None

    @classmethod
    def of_store(cls, store: FeatureStore, *, run_id: str, **kwargs: Any) -> RunContext:
        fp = store.fingerprint
        return cls(
            run_id=run_id,
            dataset=store.dataset,
            category=store.category,
            backbone=fp["backbone"],
            weights=fp["weights"],
            image_size=store.image_size,
            layers=tuple(fp["layers"]),
            feature_dtype=fp["dtype"],
            store_key=store.key,
            split_protocol=store.attrs.get("protocol", "official"),
            **kwargs,
        )

    def common(self, preset: Preset, *, seed: int, shots: int | None, num_patches: int) -> dict[str, Any]:
        """The columns every row of one class shares. `preset` may be a PatchCoreSettings (the kNN method): it
        has the same views/epochs/lr/top_k/sigma attributes and a `method`."""
        return {
            "run_id": self.run_id,
            "method": getattr(preset, "method", "generalad"),
            "flow_run_id": self.flow_run_id,
            "dataset": self.dataset,
            "category": self.category,
            "backbone": self.backbone,
            "weights": self.weights,
            "image_size": self.image_size,
            "layers": format_layers(self.layers),
            **preset_columns(preset, num_patches=num_patches),
            "seed": seed,
            "shots": shots,
            "feature_dtype": self.feature_dtype,
            "store_key": self.store_key,
            "split_protocol": self.split_protocol,
            "suite": self.suite,
            "variant": self.variant,
            "device": self.device,
            "extract_seconds": self.extract_seconds,
            # computed by this run; a rerun that reads the class result back from the cache says otherwise
            "reused": False,
            "computed_by_run_id": self.run_id,
        }


def metric_rows_of(result: RunResult, context: RunContext, *, num_patches: int) -> list[MetricRow]:
    """One MetricRow per metric value of `result` (every selection)."""
    common = context.common(result.preset, seed=result.seed, shots=result.shots, num_patches=num_patches)
    rows = []
    for row in result.metrics:
        pixel = row["metric"] in ("pixel_auroc", "aupro")
        rows.append(
            MetricRow(
                **common,
                class_name=result.normal_class,
                metric=row["metric"],
                value=row["value"],
                selection=row["selection"],
                epoch=row["epoch"],
                n_test=row["n_test"],
                n_anomalous=row["n_anomalous"],
                eval_resolution=context.image_size if pixel else None,
                pixel_postprocess=pixel_postprocess_label(context.image_size) if pixel else None,
                train_seconds=result.train_seconds,
                eval_seconds=result.eval_seconds,
            )
        )
    return [_with_method_settings(row, result.preset) for row in rows]


def _with_method_settings(row: MetricRow, settings: Any) -> MetricRow:
    """A kNN row's config_hash also covers its own settings (the coreset ratio), which have no column."""
    if getattr(settings, "method", "generalad") == "generalad":
        return row
    return dataclasses.replace(row, config_hash=config_hash({"row": row.config_hash, **settings.to_dict()}))


def failed_rows(
    context: RunContext,
    preset: Preset,
    *,
    class_name: str,
    seed: int,
    shots: int | None,
    error: str | BaseException,
    num_patches: int,
) -> list[MetricRow]:
    """The row that records a failed class task, so the report names it."""
    common = context.common(preset, seed=seed, shots=shots, num_patches=num_patches)
    return [_with_method_settings(MetricRow.failed(error=error, class_name=class_name, **common), preset)]


def score_table_of(result: RunResult, context: RunContext, image_ids: Mapping[int, str] | Any) -> pa.Table:
    """Per-image scores of every selection of `result` (image_ids: manifest image_id by row)."""
    tables = []
    for selection, evaluation in result.evaluations.items():
        tables.append(
            scores_from_arrays(
                run_id=context.run_id,
                dataset=context.dataset,
                backbone=context.backbone,
                class_name=result.normal_class,
                category=context.category,
                seed=result.seed,
                shots=result.shots,
                selection=selection,
                image_ids=[image_ids[int(r)] for r in evaluation.rows],
                scores=evaluation.scores,
                labels=evaluation.labels,
                method=result.method,
            )
        )
    return pa.concat_tables(tables)
