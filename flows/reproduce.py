"""The `reproduce-all` flow: a suite of the paper's experiments, end to end.

`reproduce_all` reads top to bottom as its five steps, each a helper below it:
(1) datasets: resolve every root the suite needs; a missing one is reported with its how-to-get line and the
    rest of the suite still runs;
(2) extraction: the backbone weights of every entry resolved first (a paper suite without its pretrained weights
    fails here, before any work), then every store the suite needs, once each, in this process before any training (a complete store
    costs nothing; extraction never shares the cores with training); sequentially on a CPU or one GPU, on one
    lane per GPU at once when several are visible;
(3) training: one task per (class, seed, shots); a class whose result is in the class-result cache
    (`flows.class_cache`) is read back in this process, the others are fanned out on Dask (one worker per core,
    or per GPU with each task pinned to its worker's GPU; no cluster when every class is cached); every task's
    outcome is collected, a failure included, without raising;
(4) reports: every row, one status="failed" row per failed class task included, to the Parquet report store,
    plus Prefect artifacts;
(5) the flow ends Failed with `SuiteFailed`, naming every failed dataset, extraction and class task (Prefect 3
    would not fail the flow by itself for a failed task whose state nobody checks).

With `plan_only=True` it stops before step 2 and returns the plan (`flows.plan`): what it would do and how long
that would take on this machine's device.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows.class_cache import ClassCache, default_cache_url
from flows.extract import suite_weights
from flows.extract_suite import extract_all as _extract_all
from flows.fanout import Outcome, is_reused, train_all, train_classes
from flows.plan_build import default_data_home, plan_suite, resolve_datasets
from flows.plan_report import render_plan
from flows.runtime import check_scheduler, new_run_id
from flows.suite_file import load_suite_file
from flows.suites import Suite, get_suite
from flows.train import ClassResult, failed_rows_of
from generalad.apps.plots import markdown_images
from generalad.apps.suite_tables import fig4_plots, render_suite
from generalad.backbone import resolve_weights
from generalad.defaults import default_reports_root, default_store_root
from storage.report_values import redact
from storage.reports import ReportStore

__all__ = ["reproduce_all", "train_classes", "new_run_id", "default_data_home", "SuiteFailed"]


class SuiteFailed(RuntimeError):
    """Some datasets, extractions or class tasks of the suite failed; the message names each one.

    `summary` is what the flow would have returned (run id, reports, table of the classes that ran, failures).
    """

    def __init__(self, message: str, summary: dict | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


@flow(name="reproduce-all")
def reproduce_all(
    suite: str = "quickstart",
    reports: str | None = None,
    store: str | None = None,
    weights: str = "auto",
    config: str | None = None,
    dask_address: str | None = None,
    n_workers: int | None = None,
    eval_every_epoch: bool = True,
    run_id: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    extract_precision: str = "fp32",
    plan_only: bool = False,
    class_cache: str | None = None,
    retrain: bool = False,
    task_timeout_s: float | None = None,
    suite_file: str | None = None,
) -> dict:
    """Run a named suite end to end and write its Parquet reports.

    Args:
        suite: a suite name (`flows.suites.list_suites()`): table1..table5, fig4, quickstart, smoke.
        suite_file: a user suite as TOML (`flows.suite_file.load_suite_file`); replaces `suite` when given.
        reports: report store URL (local path or fsspec URL); default `$GENERALAD_REPORTS`, else `./reports`.
        store: feature store root (local path or fsspec URL); default `$GENERALAD_STORE`, else `./stores`.
        weights: backbone weights for entries that do not fix them: "auto" (pretrained when the hub weights are
            cached or reachable; else a random init for the offline suites quickstart and smoke, and a failure
            before any work for the paper suites), "hub", "random", or a weights file.
        config: dataset-roots TOML (default `generalad.toml` / `$GENERALAD_CONFIG`; `GENERALAD_DATA_<NAME>`).
        dask_address: an existing Dask scheduler (default `$DASK_SCHEDULER_ADDRESS`, else a LocalCluster).
        n_workers: LocalCluster size (default: one per task up to the core count).
        eval_every_epoch: evaluate after every epoch, reporting both `last` and `best_on_test`.
        run_id: the report run id; a rerun with the same id replaces that run's rows only.
        device: auto (CUDA when visible, every GPU used), cpu, cuda, cuda:N; the rows record the device used.
        precision: training and scoring precision: fp32 (the paper's), tf32, bf16, fp16 (CUDA).
        extract_precision: the backbone's precision (part of the store key unless fp32).
        plan_only: only plan: count the work, calibrate and estimate the wall time; nothing is extracted,
            trained or written.
        class_cache: where class results are persisted and read back (local folder or fsspec URL; default
            `<store>/_class-results`).
        retrain: train every class again (and overwrite its cached result) instead of reading it back.
        task_timeout_s: the timeout of each class task (default: 30x its estimate, at least 30 minutes).

    Returns:
        {"run_id", "reports", "table" (markdown), "failures" (empty), "tasks", "trained" (classes computed),
        "reused" (classes read back from the cache), "seconds" (the flow's own wall time), "extractions" (one
        per store: url, images_extracted, seconds, reused)}; with `plan_only`, {"plan" (text), "estimate" (seconds by
        phase), "totals" (counts)}.

    Raises:
        SuiteFailed: naming every missing dataset, failed extraction and failed class task, after the rows of
            everything that ran were written.
        SchedulerUnreachable: at once, before any extraction, when the named scheduler does not answer.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    the_suite = load_suite_file(suite_file) if suite_file else get_suite(suite)
    reports, store = reports or default_reports_root(), store or default_store_root()
    if plan_only:
        return _plan_only(
            suite, logger, config=config, store=store, weights=weights, device=device, precision=precision,
            extract_precision=extract_precision, eval_every_epoch=eval_every_epoch,
        )  # fmt: skip
    dask_address = check_scheduler(dask_address)
    run_id = run_id or new_run_id(the_suite.name)

    # 1. datasets
    roots, missing = _resolve_datasets(the_suite, config, logger)
    failures = [f"dataset {message}" for message in missing.values()]

    # 2. extraction (the weights first: a missing pretrained backbone fails the suite before any work)
    extraction = _extract(
        the_suite,
        roots,
        missing,
        weights=weights,
        store=store,
        eval_every_epoch=eval_every_epoch,
        device=device,
        extract_precision=extract_precision,
    )
    failures += extraction.failures

    # 3. training
    cache = ClassCache(class_cache or default_cache_url(store), refresh=retrain)
    outcomes = train_all(
        extraction.jobs,
        run_id,
        cache=cache,
        task_timeout_s=task_timeout_s,
        dask_address=dask_address,
        n_workers=n_workers,
        device=device,
        precision=precision,
    )
    failures += _failed_tasks(outcomes)

    # 4. reports
    table_md = _write_reports(reports, run_id, the_suite.name, outcomes, failures)

    # 5. fail, naming every failure
    summary = _summary(run_id, reports, table_md, failures, extraction, outcomes, started)
    logger.info(
        "%d class tasks: %d trained, %d read back from %s",
        summary["tasks"],
        summary["trained"],
        summary["reused"],
        cache.url,
    )
    if failures:
        raise SuiteFailed(
            f"{len(failures)} failure(s) in suite {the_suite.name!r}:\n- " + "\n- ".join(failures), summary
        )
    return summary


# -- plan only ---------------------------------------------------------------------------------------------------


def _plan_only(suite: str, logger, **settings) -> dict:
    """The suite's plan (`plan_suite` with `settings`), logged and published as an artifact; nothing is run."""
    plan = plan_suite(suite, **settings)
    text = render_plan(plan)
    logger.info("plan of suite %s:\n%s", suite, text)
    create_markdown_artifact(f"```\n{text}\n```", key="reproduce-plan", description="reproduce-all plan")
    return {"plan": text, "estimate": plan.estimate(), "totals": plan.totals}


# -- 1. datasets -------------------------------------------------------------------------------------------------


def _resolve_datasets(suite: Suite, config: str | None, logger) -> tuple[dict[str, str], dict[str, str]]:
    """Dataset roots (the quickstart set generated when it has none) and the missing ones with how-to-get lines,
    each missing one logged as a warning (the rest of the suite still runs)."""
    roots, missing = resolve_datasets(suite, config)
    for message in missing.values():
        logger.warning("missing dataset, skipped: %s", message)
    return roots, missing


# -- 2. extraction -----------------------------------------------------------------------------------------------


def _extract(
    suite: Suite,
    roots: dict[str, str],
    missing: dict[str, str],
    *,
    weights: str,
    store: str,
    eval_every_epoch: bool,
    device: str,
    extract_precision: str,
):
    """Resolve the backbone weights of every entry whose dataset is there (a paper suite without its pretrained
    weights fails here, before any work), then extract every store the suite needs (`extract_all`)."""
    resolved = {
        (e.weights or weights, e.backbone): w
        for e, w in suite_weights(
            suite, [e for e in suite.entries if e.dataset not in missing], weights
        ).items()
    }
    return _extract_all(
        suite,
        roots,
        missing,
        weights=weights,
        store=store,
        eval_every_epoch=eval_every_epoch,
        device=device,
        precision=extract_precision,
        resolve=lambda asked, backbone: resolved.get((asked, backbone)) or resolve_weights(asked, backbone),
    )


# -- 3. training -------------------------------------------------------------------------------------------------


def _failed_tasks(outcomes: list[Outcome]) -> list[str]:
    """One failure line per class task whose outcome is not a `ClassResult`."""
    return [
        f"class task {job.label} of {job.store_url}: {outcome}"
        for job, outcome in outcomes
        if not isinstance(outcome, ClassResult)
    ]


def _this_flow_run_id() -> str | None:
    run = flow_run.get_id()
    return str(run) if run else None


# -- 4. reports --------------------------------------------------------------------------------------------------


def _write_reports(
    reports: str, run_id: str, suite: str, outcomes: list[Outcome], failures: list[str]
) -> str:
    """Write every class's rows (a failed one as its status="failed" row); publish artifacts; the suite's table
    in the paper's layout (`render_suite`)."""
    import pyarrow as pa

    metric_rows, score_tables = [], []
    for job, outcome in outcomes:
        if isinstance(outcome, ClassResult):
            metric_rows.extend(outcome.metrics)
            score_tables.append(outcome.scores)
        else:
            metric_rows.extend(failed_rows_of(job, run_id, outcome, _this_flow_run_id()))
    if not metric_rows:
        return ""
    report_store = ReportStore(reports)
    report_store.write_run(run_id, metric_rows, pa.concat_tables(score_tables) if score_tables else None)
    frame = report_store.read_metrics(run_id=run_id)
    table_md = render_suite(frame, suite)
    _publish_artifacts(frame, table_md, failures)
    return table_md


def _publish_artifacts(frame, table_md: str, failures: list[str]) -> None:
    """A table per dataset and a markdown summary (ours beside the paper's numbers) on the flow run."""
    ok = frame[frame["status"] == "ok"]
    for dataset, part in ok.groupby("dataset"):
        columns = ["method", "class_name", "backbone", "selection", "metric", "value", "weights"]
        rows = part[columns].to_dict("records")
        create_table_artifact(
            rows, key=f"{dataset.replace('_', '-')}-metrics", description=f"{dataset}: per-class metrics"
        )
    text = f"# GeneralAD results\n\n{table_md}\n"
    if failures:
        text += "\n## Failures\n\n" + "\n".join(f"- {redact(f)}" for f in failures) + "\n"
    create_markdown_artifact(text, key="reproduce-summary", description="reproduce-all summary")
    plots = fig4_plots(ok)  # paper Fig. 4, only for the rows of the fig4 suite's sweep entries
    if plots:
        pictures = {f"image AUROC vs {name}": image for name, image in plots.items()}
        create_markdown_artifact(
            markdown_images(pictures, heading="Sigma and K sweeps"),
            key="fig4-sweeps",
            description="Fig. 4 sweeps",
        )


# -- 5. summary --------------------------------------------------------------------------------------------------


def _summary(
    run_id: str,
    reports: str,
    table_md: str,
    failures: list[str],
    extraction,
    outcomes: list[Outcome],
    started: float,
) -> dict:
    """What the flow returns (and `SuiteFailed` carries): the run, its table, failures and class-task counts."""
    return {
        "run_id": run_id,
        "reports": reports,
        "table": table_md,
        "failures": failures,
        "tasks": len(extraction.jobs),
        "trained": sum(1 for _, o in outcomes if isinstance(o, ClassResult) and not is_reused(o)),
        "reused": sum(1 for _, o in outcomes if isinstance(o, ClassResult) and is_reused(o)),
        "extractions": extraction.stores,
        "seconds": time.perf_counter() - started,
    }
