"""The `train-class` task and flow: one discriminator per (store, normal class, seed, shots), results as rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.retry import transient_io_only
from storage.feature_store import FeatureStore
from storage.report_rows import RunContext, metric_rows_of, score_table_of
from storage.report_schema import MetricRow
from storage.reports import ReportStore
from storage.train_job import resolve_preset, train_from_store

__all__ = ["ClassJob", "ClassResult", "train_class", "train_class_flow"]


@dataclass(frozen=True)
class ClassJob:
    """One training task: small and picklable (URLs and settings, never arrays)."""

    store_url: str
    class_name: str
    seed: int = 0
    shots: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    eval_every_epoch: bool = True
    extract_seconds: float | None = None

    @property
    def label(self) -> str:
        shots = "" if self.shots is None else f" shots={self.shots}"
        return f"{self.class_name} seed={self.seed}{shots}"


@dataclass(frozen=True)
class ClassResult:
    metrics: list[MetricRow]
    scores: pa.Table


@task(name="train-class", retries=1, retry_delay_seconds=5, retry_condition_fn=transient_io_only)
def train_class(job: ClassJob, *, run_id: str, torch_threads: int = 1, device: str = "cpu") -> ClassResult:
    """Train and evaluate one discriminator from the store; returns its report rows."""
    torch.set_num_threads(torch_threads)
    store = FeatureStore.open(job.store_url)
    preset = resolve_preset(store, None, job.overrides)
    result = train_from_store(
        store,
        job.class_name,
        preset=preset,
        seed=job.seed,
        shots=job.shots,
        eval_every_epoch=job.eval_every_epoch,
        progress=False,
        device=device,
    )
    context = RunContext.of_store(
        store, run_id=run_id, flow_run_id=_flow_run_id(), device=device, extract_seconds=job.extract_seconds
    )
    auroc = next(
        r["value"] for r in result.metrics if r["metric"] == "image_auroc" and r["selection"] == "last"
    )
    get_run_logger().info("%s %s: image AUROC %.4f (last)", store.dataset, job.label, auroc)
    return ClassResult(
        metric_rows_of(result, context, num_patches=store.num_patches),
        score_table_of(result, context, store.manifest["image_id"].to_numpy()),
    )


def _flow_run_id() -> str | None:
    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


@flow(name="train-class")
def train_class_flow(
    store: str,
    class_name: str,
    seed: int = 0,
    shots: int | None = None,
    epochs: int | None = None,
    eval_every_epoch: bool = True,
    reports: str = "reports",
    run_id: str | None = None,
) -> dict:
    """Train one class from an existing store and append its rows to the report store."""
    from flows.reproduce import new_run_id

    run_id = run_id or new_run_id(f"train-{class_name}")
    job = ClassJob(store, class_name, seed, shots, {"epochs": epochs} if epochs else {}, eval_every_epoch)
    result = train_class(job, run_id=run_id, torch_threads=torch.get_num_threads())
    ReportStore(reports).write_run(run_id, result.metrics, result.scores)
    return {"run_id": run_id, "metrics": [(r.metric, r.selection, r.value) for r in result.metrics]}
