"""The `reproduce-all` flow: a suite of the paper's experiments, end to end.

Read top to bottom: (1) resolve the suite, dataset roots and weights; (2) extract every store the suite needs,
sequentially in this process (a complete store costs nothing); (3) fan the per-class training tasks out on Dask;
(4) write every row, failed classes included, to the Parquet report store and publish Prefect artifacts;
(5) end Failed, naming each failed task, if any task or dataset failed (Prefect 3 would not do so by itself).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect_dask import DaskTaskRunner

from flows.extract import extract_store
from flows.runtime import plan_dask
from flows.suites import SuiteEntry, dataset_roots, get_suite, missing_datasets
from flows.train import ClassJob, ClassResult, train_class
from generalad.backbone import resolve_weights
from generalad.datasets import generate_quickstart, get_dataset_class
from generalad.report_tables import render_table
from storage.feature_store import FeatureStore
from storage.report_rows import RunContext, failed_rows
from storage.reports import ReportStore
from storage.train_job import resolve_preset

__all__ = ["reproduce_all", "new_run_id", "default_data_home", "SuiteFailed"]


class SuiteFailed(RuntimeError):
    """Some class tasks or datasets of the suite failed; the message names each one."""


def new_run_id(prefix: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:6]}"


def default_data_home() -> Path:
    """Where generated data (the quickstart set) lives: `$GENERALAD_HOME/data`, default `./.generalad/data`."""
    return Path(os.environ.get("GENERALAD_HOME", ".generalad")) / "data"


@dataclass(frozen=True)
class StoreTarget:
    """One feature store an entry needs (a dataset, or one category of an industrial dataset)."""

    entry: SuiteEntry
    root: str
    category: str | None


def _targets(entry: SuiteEntry, root: str) -> list[StoreTarget]:
    """Industrial datasets get one store per category (the entry's, else every category under the root)."""
    cls = get_dataset_class(entry.dataset)
    if not cls.requires_category:
        return [StoreTarget(entry, root, None)]
    categories = entry.categories or tuple(cls(Path(root), None).categories())
    return [StoreTarget(entry, root, c) for c in categories]


def _jobs(target: StoreTarget, store: dict, eval_every_epoch: bool) -> list[ClassJob]:
    entry = target.entry
    classes = (
        [target.category]
        if target.category
        else list(entry.categories or FeatureStore(store["url"]).normal_classes)
    )
    return [
        ClassJob(store["url"], c, seed, shots, entry.overrides(), eval_every_epoch, store["seconds"])
        for c in classes
        for seed, shots in entry.variants()
    ]


@flow(name="train-classes")
def train_classes(
    jobs: list[ClassJob], run_id: str, torch_threads: int
) -> list[tuple[ClassJob, ClassResult | str]]:
    """Submit every class job to the flow's task runner (Dask); collect results and failures without raising."""
    futures = [train_class.submit(job, run_id=run_id, torch_threads=torch_threads) for job in jobs]
    outcomes: list[tuple[ClassJob, ClassResult | str]] = []
    for job, future in zip(jobs, futures, strict=True):
        future.wait()
        state = future.state
        if state.is_completed():
            outcomes.append((job, future.result()))
        else:
            error = state.result(raise_on_failure=False)
            outcomes.append(
                (
                    job,
                    f"{type(error).__name__}: {error}"
                    if isinstance(error, BaseException)
                    else str(state.message),
                )
            )
    return outcomes


@flow(name="reproduce-all")
def reproduce_all(
    suite: str = "quickstart",
    reports: str = "reports",
    store: str = "stores",
    weights: str = "auto",
    config: str | None = None,
    dask_address: str | None = None,
    n_workers: int | None = None,
    eval_every_epoch: bool = True,
    run_id: str | None = None,
) -> dict:
    """Run a named suite end to end and write its Parquet reports.

    Args:
        suite: a suite name (`flows.suites.list_suites()`): table1..table5, fig4, quickstart, smoke.
        reports: report store URL (local path or fsspec URL).
        store: feature store root (local path or fsspec URL).
        weights: backbone weights for entries that do not fix them: "auto" (pretrained when the hub weights are
            cached or reachable, else an explicit random init), "hub", "random", or a weights file.
        config: dataset-roots TOML (default `generalad.toml` / `$GENERALAD_CONFIG`; `GENERALAD_DATA_<NAME>`).
        dask_address: an existing Dask scheduler (default `$DASK_SCHEDULER_ADDRESS`, else a LocalCluster).
        n_workers: LocalCluster size (default: one per task up to the core count).
        eval_every_epoch: evaluate after every epoch, reporting both `last` and `best_on_test`.
        run_id: the report run id; a rerun with the same id replaces that run's rows only.
    """
    logger = get_run_logger()
    the_suite = get_suite(suite)
    run_id = run_id or new_run_id(the_suite.name)
    roots = dataset_roots(config)
    if "quickstart" in the_suite.datasets() and "quickstart" not in roots:
        roots["quickstart"] = str(generate_quickstart(default_data_home() / "quickstart"))
    missing = missing_datasets(the_suite, roots)
    for message in missing.values():
        logger.warning("missing dataset, skipped: %s", message)
    failures: list[str] = [f"dataset {m}" for m in missing.values()]

    # 1. extraction: sequential, in this process, never alongside training on the same cores
    jobs: list[ClassJob] = []
    for entry in the_suite.entries:
        if entry.dataset in missing:
            continue
        entry_weights = resolve_weights(entry.weights or weights, entry.backbone)
        for target in _targets(entry, roots[entry.dataset]):
            try:
                built = extract_store(
                    entry.dataset,
                    target.root,
                    target.category,
                    backbone=entry.backbone,
                    weights=entry_weights,
                    image_size=entry.image_size,
                    layers=entry.layers,
                    store=store,
                )
            except Exception as exc:  # noqa: BLE001 - recorded, the rest of the suite goes on
                where = f"{entry.dataset}/{target.category or '*'} ({entry.backbone})"
                failures.append(f"extraction {where}: {type(exc).__name__}: {exc}")
                continue
            jobs.extend(_jobs(target, built, eval_every_epoch))

    # 2. training: one task per (class, seed, shots) on Dask
    outcomes: list[tuple[ClassJob, ClassResult | str]] = []
    if jobs:
        plan = plan_dask(len(jobs), address=dask_address, n_workers=n_workers)
        logging.getLogger("distributed").setLevel(logging.WARNING)  # cluster chatter drowns the results
        logger.info(
            "training %d class tasks on %s", len(jobs), plan.address or f"a LocalCluster of {plan.n_workers}"
        )
        runner = DaskTaskRunner(**plan.runner_kwargs())
        outcomes = train_classes.with_options(task_runner=runner)(jobs, run_id, plan.torch_threads)

    # 3. reports: every row, failed tasks included
    metric_rows, score_tables = [], []
    for job, outcome in outcomes:
        if isinstance(outcome, ClassResult):
            metric_rows.extend(outcome.metrics)
            score_tables.append(outcome.scores)
            continue
        failures.append(f"class task {job.label} of {job.store_url}: {outcome}")
        store_ = FeatureStore(job.store_url)
        context = RunContext.of_store(store_, run_id=run_id)
        preset = resolve_preset(store_, None, job.overrides)
        metric_rows.extend(
            failed_rows(
                context,
                preset,
                class_name=job.class_name,
                seed=job.seed,
                shots=job.shots,
                error=outcome,
                num_patches=store_.num_patches,
            )
        )
    table_md = ""
    if metric_rows:
        import pyarrow as pa

        report_store = ReportStore(reports)
        report_store.write_run(run_id, metric_rows, pa.concat_tables(score_tables) if score_tables else None)
        frame = report_store.read_metrics(run_id=run_id)
        table_md = render_table(frame, with_paper=True)
        _publish_artifacts(frame, table_md, failures)
    summary = {
        "run_id": run_id,
        "reports": reports,
        "table": table_md,
        "failures": failures,
        "tasks": len(jobs),
    }
    if failures:
        raise SuiteFailed(
            f"{len(failures)} failure(s) in suite {the_suite.name!r}:\n- " + "\n- ".join(failures)
        )
    return summary


def _publish_artifacts(frame, table_md: str, failures: list[str]) -> None:
    """A table per dataset and a markdown summary (ours beside the paper's numbers) on the flow run."""
    ok = frame[frame["status"] == "ok"]
    for dataset, part in ok.groupby("dataset"):
        rows = part[["class_name", "backbone", "selection", "metric", "value", "weights"]].to_dict("records")
        create_table_artifact(
            rows, key=f"{dataset.replace('_', '-')}-metrics", description=f"{dataset}: per-class metrics"
        )
    text = f"# GeneralAD results\n\n{table_md}\n"
    if failures:
        text += "\n## Failures\n\n" + "\n".join(f"- {f}" for f in failures) + "\n"
    create_markdown_artifact(text, key="reproduce-summary", description="reproduce-all summary")
