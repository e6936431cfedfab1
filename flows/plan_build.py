"""Counting a suite's work without doing it: stores, class tasks, steps and evaluations (`flows.plan`).

Available datasets are counted from their manifests and one-class splits (what the flow would train on);
missing ones at their official sizes (`flows.plan.NOMINAL_SIZES`), marked as such. Store states come from the
store root: a complete store costs no extraction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from flows.plan import (
    NOMINAL_SIZES,
    Calibration,
    StorePlan,
    SuitePlan,
    TaskPlan,
    calibrate,
    suite_targets,
)
from flows.runtime import gpu_lanes, plan_dask
from flows.suites import Suite, SuiteEntry, dataset_roots, get_suite, missing_datasets

__all__ = ["plan_suite", "resolve_datasets", "default_data_home", "task_counts"]


def default_data_home() -> Path:
    """Where generated data (the quickstart set) lives: `$GENERALAD_HOME/data`, default `./.generalad/data`."""
    return Path(os.environ.get("GENERALAD_HOME", ".generalad")) / "data"


def resolve_datasets(suite: Suite, config: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """Dataset roots (the quickstart set generated when it has none) and the missing ones with how-to-get lines."""
    from generalad.data import generate_quickstart

    roots = dataset_roots(config)
    if "quickstart" in suite.datasets() and "quickstart" not in roots:
        roots["quickstart"] = str(generate_quickstart(default_data_home() / "quickstart"))
    return roots, missing_datasets(suite, roots)


def task_counts(
    entry: SuiteEntry, n_train_full: int, shots: int | None, eval_every_epoch: bool
) -> tuple[int, int, int, int, int]:
    """(n_train, epochs, steps in all, batch size, test evaluations) of one class task, as training does them:
    `effective_batch_size`, an epoch of `epoch_subset` (or every) image, drop_last."""
    from generalad.method.presets import preset_for

    preset = preset_for(entry.dataset).with_overrides(**entry.overrides())
    n_train = shots if shots is not None else n_train_full
    batch = max(1, min(preset.batch_size, n_train))
    per_epoch = (min(preset.epoch_subset, n_train) if preset.epoch_subset else n_train) // batch
    evaluations = preset.epochs if eval_every_epoch else 1
    return n_train, preset.epochs, preset.epochs * per_epoch, batch, evaluations


def _views(entry: SuiteEntry) -> tuple[str, ...]:
    from generalad.method.presets import preset_for

    return tuple(entry.views or preset_for(entry.dataset).views)


def _task(
    entry: SuiteEntry, cls: str, seed: int, shots, n_train: int, n_test: int, every: bool, nominal: bool
):
    n, epochs, steps, batch, evaluations = task_counts(entry, n_train, shots, every)
    return TaskPlan(
        entry.dataset, cls, entry.backbone, entry.image_size, entry.layers, seed, shots, n, n_test, epochs,
        steps, batch, len(_views(entry)), evaluations, nominal,
    )  # fmt: skip


def _plan_available(plan: SuitePlan, targets, store: str, eval_every_epoch: bool) -> None:
    """Stores and tasks of the available datasets (each store once; a failing one recorded)."""
    from generalad.backbone import BackboneSpec
    from generalad.data import get_dataset
    from storage import urls
    from storage.extraction import plan_store
    from storage.store_layout import is_complete

    seen: dict[tuple, tuple | None] = {}
    for key, target, weights in targets:
        entry = target.entry
        if key not in seen:
            try:
                adapter = get_dataset(entry.dataset, target.root, category=target.category, **entry.options())
                spec = BackboneSpec(
                    name=entry.backbone, weights=weights, image_size=entry.image_size, layers=entry.layers
                )
                url, _ = plan_store(adapter, spec, store, precision=plan.extract_precision)
                manifest = adapter.manifest()
                state = "complete" if is_complete(url) else ("partial" if urls.exists(url) else "to extract")
                plan.stores.append(
                    StorePlan(
                        entry.dataset,
                        target.category,
                        entry.backbone,
                        entry.image_size,
                        entry.layers,
                        len(manifest),
                        state,
                        url,
                    )  # fmt: skip
                )
                seen[key] = (adapter, manifest)
            except Exception as exc:  # noqa: BLE001 - the plan names it; the flow would fail the same way
                plan.failures.append(
                    f"store {entry.dataset}/{target.category or '*'}: {type(exc).__name__}: {exc}"
                )
                seen[key] = None
        if seen[key] is None:
            continue
        adapter, manifest = seen[key]
        classes = [target.category] if target.category else list(entry.categories or adapter.normal_classes())
        for cls in classes:
            split = adapter.one_class_split(manifest, cls)
            for seed, shots in entry.variants():
                plan.tasks.append(
                    _task(
                        entry,
                        cls,
                        seed,
                        shots,
                        len(split.train_rows),
                        len(split.test_rows),
                        eval_every_epoch,
                        False,
                    )
                )


def _plan_missing(plan: SuitePlan, suite: Suite, missing: dict[str, str], eval_every_epoch: bool) -> None:
    """Stores and tasks of the missing datasets at their official sizes."""
    from generalad.data import get_dataset_class

    seen: set[tuple] = set()
    for entry in suite.entries:
        size = NOMINAL_SIZES.get(entry.dataset)
        if entry.dataset not in missing or size is None:
            continue
        industrial = get_dataset_class(entry.dataset).requires_category
        classes = list(entry.categories or size.classes)
        for store_cls in classes if industrial else [None]:
            key = (entry.dataset, store_cls, entry.backbone, entry.image_size, entry.layers)
            if key not in seen:
                seen.add(key)
                images = size.store_images
                plan.stores.append(
                    StorePlan(
                        entry.dataset,
                        store_cls,
                        entry.backbone,
                        entry.image_size,
                        entry.layers,
                        images,
                        "missing dataset",
                    )  # fmt: skip
                )
            for cls in [store_cls] if industrial else classes:
                for seed, shots in entry.variants():
                    plan.tasks.append(
                        _task(entry, cls, seed, shots, size.train, size.test, eval_every_epoch, True)
                    )


def plan_suite(
    suite: str | Suite,
    *,
    config: str | None = None,
    store: str | None = None,
    weights: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    extract_precision: str = "fp32",
    eval_every_epoch: bool = True,
    calibrate_fn: Callable[..., Calibration] = calibrate,
    gpu_count: int | None = None,
) -> SuitePlan:
    """Count what `reproduce_all(suite, ...)` would do and calibrate its shapes on `device` (nothing is written
    but the generated quickstart data). `calibrate_fn` and `gpu_count` are for tests."""
    from generalad.backbone import resolve_weights
    from generalad.devices import check_precision, resolve_device

    the_suite = suite if isinstance(suite, Suite) else get_suite(suite)
    where = resolve_device(device)
    check_precision(precision, where)
    check_precision(extract_precision, where)
    plan = SuitePlan(
        the_suite.name, str(where), precision, extract_precision, max(1, gpu_lanes(device, gpu_count))
    )
    roots, missing = resolve_datasets(the_suite, config)
    plan.missing = list(missing.values())
    targets, plan.failures = suite_targets(
        the_suite, roots, missing, weights, lru_cache(None)(resolve_weights)
    )
    _plan_available(plan, targets, store, eval_every_epoch)
    _plan_missing(plan, the_suite, missing, eval_every_epoch)
    dask = plan_dask(max(1, len(plan.tasks)), device=device, gpu_count=gpu_count)
    plan.train_lanes, plan.train_threads = dask.gpus or dask.n_workers, dask.torch_threads
    views: dict[tuple, tuple[str, ...]] = {}
    for entry in the_suite.entries:
        views.setdefault((entry.backbone, entry.image_size, entry.layers), _views(entry))
    started = time.perf_counter()
    for (backbone, size, layers), entry_views in views.items():
        if any((t.backbone, t.image_size, t.layers) == (backbone, size, layers) for t in plan.tasks):
            plan.calibration[(backbone, size, layers)] = calibrate_fn(
                backbone, size, layers, entry_views, device=str(where), precision=precision,
                extract_precision=extract_precision, train_threads=plan.train_threads,
            )  # fmt: skip
    plan.calibration_seconds = time.perf_counter() - started
    return plan
