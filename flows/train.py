"""The `train-class` task and flow: one discriminator per (store, normal class, seed, shots), results as rows.

The task receives a `ClassJob` (a store URL and a few settings, never arrays) and returns the report rows of that
one class; `failed_rows_of` turns a failure into the row that names it. The flow trains one class from an
existing store and writes its rows to the report store, a failure included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import torch
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.retry import transient_io_only
from flows.runtime import worker_device
from generalad.apps.train_job import resolve_preset, train_from_store
from generalad.defaults import default_reports_root
from generalad.devices import device_label, resolve_device
from generalad.errors import ConfigError, GeneralADError
from generalad.method.patchcore import METHOD as PATCHCORE
from generalad.method.patchcore import PatchCoreSettings
from storage.feature_store import FeatureStore
from storage.metric_row import MetricRow
from storage.report_rows import RunContext, failed_rows, metric_rows_of, score_table_of
from storage.reports import ReportStore

__all__ = [
    "ClassJob",
    "ClassResult",
    "ClassFailed",
    "train_class",
    "train_class_flow",
    "failed_rows_of",
    "as_reused",
    "estimate_train_seconds",
    "timeout_for",
]

# Per image and view, one training step's forward + backward at N=1369 patches, E=384, one thread (README
# Performance: 51 s per batch of 16 with 3 views); evaluation scores one view forward (about a third of that).
_TRAIN_S_PER_IMAGE_VIEW = 1.1
_EVAL_S_PER_IMAGE = 0.4
# A timeout only has to catch a hung task, never a slow one: a quickstart class took 5.4x its estimate on 2 cores
# at load average 15-20 (about 8 processes per core).
_TIMEOUT_FACTOR = 30.0
_TIMEOUT_FLOOR_S = 1800.0


@dataclass(frozen=True)
class ClassJob:
    """One training task: small and picklable (URLs and settings, never arrays).

    Attributes:
        store_url: the complete feature store to train from.
        class_name: the normal class.
        seed, shots: the variant (shots None = the full training set).
        overrides: preset fields this job changes (e.g. {"epochs": 5, "sigma": 0.5}).
        eval_every_epoch: evaluate after every epoch (reports `last` and `best_on_test`).
        extract_seconds: backbone time that built the store, copied into the rows (None when it was reused).
        variant: what the suite entry varies (e.g. "sigma=0.5"), for messages and the rows; "" for plain entries.
        suite: the suite the job belongs to (recorded in the rows); None outside suites.
        select_on_pixel: also select an epoch on pixel AUROC (`best_on_test_pixel`; stores with masks).
        method: "generalad" (train a discriminator) or "patchcore_knn" (a memory bank; the preset is unused).
        coreset_ratio: the kNN bank's coreset ratio (None = the default 0.1); only for "patchcore_knn".
    """

    store_url: str
    class_name: str
    seed: int = 0
    shots: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    eval_every_epoch: bool = True
    extract_seconds: float | None = None
    variant: str = ""
    suite: str | None = None
    select_on_pixel: bool = False
    method: str = "generalad"
    coreset_ratio: float | None = None

    @property
    def label(self) -> str:
        shots = "" if self.shots is None else f" shots={self.shots}"
        variant = f" {self.variant}" if self.variant else ""
        method = "" if self.method == "generalad" else f" [{self.method}]"
        return f"{self.class_name} seed={self.seed}{shots}{variant}{method}"

    def knn_settings(self) -> PatchCoreSettings | None:
        """The kNN settings of a "patchcore_knn" job, None for a GeneralAD one."""
        if self.method != PATCHCORE:
            return None
        if self.coreset_ratio is None:
            return PatchCoreSettings()
        return PatchCoreSettings(coreset_ratio=self.coreset_ratio)


@dataclass(frozen=True)
class ClassResult:
    """The rows of one trained class: metric rows (every selection) and per-image scores."""

    metrics: list[MetricRow]
    scores: pa.Table


def as_reused(result: ClassResult, job: ClassJob, *, run_id: str, flow_run_id: str | None) -> ClassResult:
    """A cached class result as rows of this run and `job`: same values, `reused` set, `computed_by_run_id` kept
    pointing at the run that computed them, and this job's labels (suite, variant: they are not part of the cache
    key, so table4 reuses what table1 computed with the same settings)."""
    now = datetime.now(UTC)
    metrics = [
        dataclasses.replace(
            row,
            run_id=run_id,
            flow_run_id=flow_run_id,
            created_at=now,
            suite=job.suite,
            variant=job.variant,
            reused=True,
            computed_by_run_id=row.computed_by_run_id or row.run_id,
        )
        for row in result.metrics
    ]
    scores = result.scores
    column = scores.schema.get_field_index("run_id")
    scores = scores.set_column(
        column, scores.schema.field(column), pa.array([run_id] * len(scores), pa.string())
    )
    return ClassResult(metrics, scores)


class ClassFailed(RuntimeError):
    """The `train-class` flow's class task failed; the message names the class and the error."""


@task(name="train-class", retries=1, retry_delay_seconds=5, retry_condition_fn=transient_io_only)
def train_class(
    job: ClassJob,
    *,
    run_id: str,
    torch_threads: int | None = 1,
    device: str = "auto",
    precision: str = "fp32",
    gpus: int = 0,
    flow_run_id: str | None = None,
) -> ClassResult:
    """Train and evaluate one discriminator from the store; returns its report rows.

    Retried once on a transient I/O error (a shared store's hiccup), never on a deterministic one.
    `torch_threads`: intra-op threads for this task; None leaves the worker's setting alone (an external
    cluster, whose cores this process cannot see). `flow_run_id`: the flow run the rows name (default: the
    run this task belongs to; `reproduce-all` passes its own, not its `train-classes` subflow's).
    `device`/`precision`: where and how it trains (`generalad.devices`); with `gpus` > 1 (a multi-GPU plan) an
    auto/cuda task runs on its Dask worker's GPU. The rows record the device used (`cuda:1`, `cpu/bf16`).
    """
    if torch_threads:
        torch.set_num_threads(torch_threads)
    used = resolve_device(worker_device(device, gpus))
    if used.type == "cuda":
        torch.cuda.set_device(used)  # library calls without an explicit index go to this task's GPU too
    store = FeatureStore.open(job.store_url)
    preset = resolve_preset(store, None, job.overrides)
    result = train_from_store(
        store,
        job.class_name,
        preset=preset,
        seed=job.seed,
        shots=job.shots,
        eval_every_epoch=job.eval_every_epoch,
        select_on_pixel=job.select_on_pixel,
        progress=False,
        device=used,
        precision=precision,
        method=job.method,
        knn=job.knn_settings(),
    )
    context = RunContext.of_store(
        store,
        run_id=run_id,
        flow_run_id=flow_run_id or _flow_run_id(),
        device=device_label(used, precision),
        extract_seconds=job.extract_seconds,
        suite=job.suite,
        variant=job.variant,
    )
    auroc = next(
        (r["value"] for r in result.metrics if r["metric"] == "image_auroc" and r["selection"] == "last"),
        float("nan"),
    )
    get_run_logger().info("%s %s: image AUROC %.4f (last)", store.dataset, job.label, auroc)
    return ClassResult(
        metric_rows_of(result, context, num_patches=store.num_patches),
        score_table_of(result, context, store.manifest["image_id"].to_numpy()),
    )


def estimate_train_seconds(job: ClassJob) -> float:
    """Seconds one thread needs to train and evaluate `job`, from the store's sizes and the preset (a rough
    model: cost linear in the views, the images and the embedding width, and in N times (1 + N / 1369) for the
    MLP plus the attention)."""
    store = FeatureStore.open(job.store_url)
    preset = resolve_preset(store, None, job.overrides)
    split = store.split(job.class_name)
    n_train = len(split.train_rows) if job.shots is None else min(job.shots, len(split.train_rows))
    per_epoch = min(n_train, preset.epoch_subset or n_train)
    n_test = len(split.test_rows)
    n = store.num_patches
    scale = (n / 1369) * (1 + n / 1369) / 2 * (store.embed_dim / 384)
    evals = preset.epochs if job.eval_every_epoch else 1
    train = preset.epochs * per_epoch * len(preset.views) * _TRAIN_S_PER_IMAGE_VIEW
    return scale * (train + evals * n_test * _EVAL_S_PER_IMAGE)


def timeout_for(job: ClassJob, timeout_s: float | None = None) -> float:
    """The class task's timeout: `timeout_s` when given, else 30x the estimate, at least 30 minutes."""
    if timeout_s is not None:
        if not timeout_s > 0:
            raise ConfigError(f"task timeout must be > 0 seconds, got {timeout_s!r}")
        return float(timeout_s)
    return max(_TIMEOUT_FLOOR_S, _TIMEOUT_FACTOR * estimate_train_seconds(job))


def failed_rows_of(job: ClassJob, run_id: str, error: str, flow_run_id: str | None = None) -> list[MetricRow]:
    """The status="failed" row that names a failed class task in the report.

    The preset falls back to the dataset's own when the job's overrides are themselves the problem. A store that
    cannot be read gives no row (its dataset and backbone are unknown); the failure is still named by the flow.
    """
    try:
        store = FeatureStore.open(job.store_url)
    except (GeneralADError, OSError, KeyError, ValueError):
        return []
    try:
        preset = job.knn_settings() or resolve_preset(store, None, job.overrides)
    except GeneralADError:
        preset = resolve_preset(store, None, None)
    context = RunContext.of_store(
        store,
        run_id=run_id,
        flow_run_id=flow_run_id or _flow_run_id(),
        suite=job.suite,
        variant=job.variant,
    )
    return failed_rows(
        context,
        preset,
        class_name=job.class_name,
        seed=job.seed,
        shots=job.shots,
        error=error,
        num_patches=store.num_patches,
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
    reports: str | None = None,
    run_id: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    method: str = "generalad",
    coreset_ratio: float | None = None,
) -> dict:
    """Train one class from an existing store and append its rows to the report store, on `device` (auto, cpu,
    cuda, cuda:N) in `precision` (fp32, tf32, bf16, fp16 on CUDA). `method`: "generalad" or "patchcore_knn",
    whose bank uses `coreset_ratio` (default 0.1).

    A failed task still leaves its status="failed" row in the reports, and the flow ends Failed naming the class.
    """
    from flows.runtime import new_run_id

    run_id = run_id or new_run_id(f"train-{class_name}")
    reports = reports or default_reports_root()
    job = ClassJob(
        store,
        class_name,
        seed,
        shots,
        {"epochs": epochs} if epochs else {},
        eval_every_epoch,
        method=method,
        coreset_ratio=coreset_ratio,
    )
    try:
        result = train_class(
            job, run_id=run_id, torch_threads=torch.get_num_threads(), device=device, precision=precision
        )
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        ReportStore(reports).write_run(run_id, failed_rows_of(job, run_id, error))
        raise ClassFailed(f"class task {job.label} of {store} failed: {error}") from exc
    ReportStore(reports).write_run(run_id, result.metrics, result.scores)
    return {"run_id": run_id, "metrics": [(r.metric, r.selection, r.value) for r in result.metrics]}
