"""Step 3 of `reproduce-all`: one `train-class` task per job; cached classes read back in the flow's process, the
rest fanned out on Dask (a LocalCluster, or an existing scheduler), each outcome collected without raising."""

from __future__ import annotations

import contextlib
import inspect
import logging

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect_dask import DaskTaskRunner

from flows.class_cache import ClassCache
from flows.progress import Progress
from flows.runtime import api_for_subprocesses, plan_dask
from flows.train import ClassJob, ClassResult, as_reused, timeout_for, train_class

__all__ = ["Outcome", "train_all", "train_classes", "is_reused"]

Outcome = tuple[ClassJob, ClassResult | str]  # a job and its rows, or the error that stopped it


def _task_parameters(job: ClassJob, run_id: str, flow_run_id: str | None, **options) -> dict:
    """The parameters a class task run gets, defaults applied (what its cache key is computed from)."""
    bound = inspect.signature(train_class.fn).bind(job, run_id=run_id, flow_run_id=flow_run_id, **options)
    bound.apply_defaults()
    return dict(bound.arguments)


def train_all(
    jobs: list[ClassJob],
    run_id: str,
    *,
    cache: ClassCache,
    task_timeout_s: float | None,
    dask_address: str | None,
    n_workers: int | None,
    device: str = "auto",
    precision: str = "fp32",
) -> list[Outcome]:
    """Every job's outcome, in order. Cached classes are read back here, one by one (Prefect's cache: the task
    run ends `Cached`); the rest go to Dask. A cluster that fails as a whole fails each of its jobs with its
    error."""
    if not jobs:
        return []
    flow_run_id = _this_flow_run_id()
    progress = Progress.start("training-progress", len(jobs), "class tasks done")
    options = {"device": device, "precision": precision}
    cached = [cache.has(_task_parameters(job, run_id, flow_run_id, **options)) for job in jobs]
    outcomes: dict[int, Outcome] = {}
    task = train_class.with_options(**cache.task_options())
    for i, job in enumerate(jobs):
        if cached[i]:  # torch_threads=None: should the record vanish meanwhile, it trains here, as it is
            state = task(
                job, run_id=run_id, torch_threads=None, flow_run_id=flow_run_id, return_state=True, **options
            )
            outcomes[i] = _outcome(job, state, run_id, flow_run_id)
            progress.step()
    todo = [i for i in range(len(jobs)) if not cached[i]]
    get_run_logger().info(
        "%d of %d class tasks read back from the cache %s", len(outcomes), len(jobs), cache.url
    )
    if todo:
        rest = [jobs[i] for i in todo]
        timeouts = [timeout_for(job, task_timeout_s) for job in rest]
        done = _train_on_dask(rest, run_id, cache, timeouts, progress, dask_address, n_workers, options)
        outcomes.update(zip(todo, done, strict=True))
    return [outcomes[i] for i in range(len(jobs))]


def _train_on_dask(
    jobs: list[ClassJob],
    run_id: str,
    cache: ClassCache,
    timeouts: list[float],
    progress: Progress,
    dask_address: str | None,
    n_workers: int | None,
    options: dict,
) -> list[Outcome]:
    plan = plan_dask(len(jobs), address=dask_address, n_workers=n_workers, device=options["device"])
    logging.getLogger("distributed").setLevel(logging.WARNING)  # cluster chatter drowns the results
    get_run_logger().info(
        "training %d class tasks on %s",
        len(jobs),
        plan.address or f"a LocalCluster of {plan.n_workers} (torch threads {plan.torch_threads} each)",
    )
    if plan.gpus:
        get_run_logger().info("one GPU per worker: %d GPU(s), each task pinned to its worker's", plan.gpus)
    runner = DaskTaskRunner(**plan.runner_kwargs())
    try:
        with api_for_subprocesses():  # the workers report to this flow's server, never start their own
            return train_classes.with_options(task_runner=runner)(
                jobs,
                run_id,
                plan.torch_threads,
                _this_flow_run_id(),
                cache=cache,
                timeouts=timeouts,
                progress=progress,
                gpus=plan.gpus,
                **options,
            )
    except Exception as exc:  # noqa: BLE001 - e.g. an unreachable scheduler: every job is named as failed
        error = f"the Dask run failed: {type(exc).__name__}: {exc}"
        return [(job, error) for job in jobs]


@flow(name="train-classes")
def train_classes(
    jobs: list[ClassJob],
    run_id: str,
    torch_threads: int | None,
    flow_run_id: str | None = None,
    cache: ClassCache | None = None,
    timeouts: list[float] | None = None,
    progress: Progress | None = None,
    device: str = "auto",
    precision: str = "fp32",
    gpus: int = 0,
) -> list[Outcome]:
    """Submit every class job to the flow's task runner (Dask); collect every result or error, never raising.

    `flow_run_id`: the run the report rows name (the calling `reproduce-all` run). `cache`: where results are
    persisted (and read back: a task run that finds its record ends `Cached`). `timeouts`: seconds per job.
    `progress`: the artifact stepped as each job ends. `gpus` > 0: each task asks for one `GPU` resource (one
    task per GPU worker at a time) and runs on its worker's GPU.
    """
    import dask

    task = train_class.with_options(**cache.task_options()) if cache else train_class
    annotate = dask.annotate(resources={"GPU": 1}) if gpus else contextlib.nullcontext()
    with annotate:
        futures = [
            task.with_options(timeout_seconds=timeouts[i] if timeouts else None).submit(
                job,
                run_id=run_id,
                torch_threads=torch_threads,
                device=device,
                precision=precision,
                gpus=gpus,
                flow_run_id=flow_run_id,
            )
            for i, job in enumerate(jobs)
        ]
    index = {future: i for i, future in enumerate(futures)}
    outcomes: dict[int, Outcome] = {}
    for future in as_completed(futures):
        future.wait()  # done on Dask; wait() also brings its Prefect state up to date
        i = index[future]
        outcomes[i] = _outcome(jobs[i], future.state, run_id, flow_run_id)
        if progress:
            progress.step()
    return [outcomes[i] for i in range(len(jobs))]


def _outcome(job: ClassJob, state, run_id: str, flow_run_id: str | None) -> Outcome:
    """A task run's final state as the job's rows (re-labelled as this run's when read from the cache) or error."""
    if state.is_completed():
        result = state.result()
        if state.name == "Cached":
            result = as_reused(result, job, run_id=run_id, flow_run_id=flow_run_id)
        return job, result
    error = state.result(raise_on_failure=False)
    if isinstance(error, BaseException):
        return job, f"{type(error).__name__}: {error}"
    return job, f"{state.name}: {state.message}"


def is_reused(result: ClassResult) -> bool:
    return bool(result.metrics) and all(row.reused for row in result.metrics)


def _this_flow_run_id() -> str | None:
    run = flow_run.get_id()
    return str(run) if run else None
