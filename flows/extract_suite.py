"""Step 2 of `reproduce-all`: every store a suite needs, each once, and the class jobs on them.

Sequential in the flow's process on a CPU or one GPU; with several GPUs, one thread per GPU (store i on
`cuda:<i % GPUs>`), so several stores extract at once.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from flows.extract import extract_store
from flows.plan import StoreTarget, suite_targets
from flows.progress import Progress
from flows.runtime import gpu_lanes
from flows.suites import Suite
from flows.train import ClassJob
from generalad.backbone import resolve_weights
from storage.feature_store import FeatureStore

__all__ = ["Extraction", "extract_all"]


@dataclass
class Extraction:
    """What the extraction step produced: the class jobs to run, the stores, and what failed."""

    jobs: list[ClassJob] = field(default_factory=list)
    stores: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def extract_all(
    suite: Suite,
    roots: Mapping[str, str],
    missing: Mapping[str, str],
    *,
    weights: str,
    store: str,
    eval_every_epoch: bool,
    device: str = "auto",
    precision: str = "fp32",
    gpu_count: int | None = None,
    resolve: Callable[[str, str], str] = resolve_weights,
) -> Extraction:
    """Extract (or find complete) every store of the suite's available datasets, each store once; one failed
    entry or store is recorded and the rest goes on. `resolve(weights, backbone)` resolves "auto". A progress
    artifact counts the stores done."""
    out = Extraction()
    targets, out.failures = suite_targets(suite, roots, missing, weights, resolve)
    unique: dict[tuple, StoreTarget] = {}
    for key, target, _ in targets:
        unique.setdefault(key, target)
    progress = Progress.start(
        "extraction-progress", len(unique), "feature stores extracted or found complete"
    )
    lanes = gpu_lanes(device, gpu_count)
    built = _extract_on_lanes(unique, store, device, precision, lanes, progress)
    for key, target in unique.items():
        if "error" in built[key]:
            out.failures.append(
                f"extraction {target.entry.dataset}/{target.category or '*'} ({target.entry.backbone}): "
                f"{built[key]['error']}"
            )
        else:
            out.stores.append(built[key])
    for key, target, _ in targets:
        if "error" not in built[key]:
            out.jobs.extend(_jobs(target, built[key], eval_every_epoch, suite.name))
    return out


def _extract_one(key: tuple, target: StoreTarget, store: str, device: str, precision: str) -> dict:
    dataset, category, backbone, weights, image_size, layers, _ = key
    try:
        return extract_store(
            dataset, target.root, category, backbone=backbone, weights=weights, image_size=image_size,
            layers=layers, store=store, dataset_options=target.entry.options(), device=device,
            precision=precision,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - recorded, the rest of the suite goes on
        return {"error": f"{type(exc).__name__}: {exc}"}


def _extract_on_lanes(
    unique: Mapping[tuple, StoreTarget],
    store: str,
    device: str,
    precision: str,
    lanes: int,
    progress: Progress,
) -> dict[tuple, dict]:
    """Each store's result (or {"error"}): in order here, or with several GPUs one thread per GPU, store i on
    lane i % lanes (`cuda:<lane>`), each thread in a copy of this flow's context so its tasks log to the run."""
    items = list(unique.items())

    def one(key: tuple, target: StoreTarget, on: str) -> dict:
        built = _extract_one(key, target, store, on, precision)
        progress.step()
        return built

    if lanes <= 1:
        return {key: one(key, target, device) for key, target in items}

    def lane(index: int) -> dict[tuple, dict]:
        return {key: one(key, target, f"cuda:{index}") for key, target in items[index::lanes]}

    with ThreadPoolExecutor(lanes, thread_name_prefix="extract-gpu") as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, lane, i) for i in range(min(lanes, len(items)))
        ]
        results: dict[tuple, dict] = {}
        for future in futures:
            results |= future.result()
    return {key: results[key] for key, _ in items}


def _jobs(target: StoreTarget, built: dict, eval_every_epoch: bool, suite: str) -> list[ClassJob]:
    """One job per (method, normal class, seed, shots) of the entry on this store."""
    entry = target.entry
    classes = (
        [target.category]
        if target.category
        else list(entry.categories or FeatureStore(built["url"]).normal_classes)
    )
    extract_seconds = None if built["reused"] else built["seconds"]
    return [
        ClassJob(
            built["url"],
            c,
            seed,
            shots,
            entry.overrides() if method == "generalad" else {},
            eval_every_epoch,
            extract_seconds,
            variant=entry.label,
            suite=suite,
            select_on_pixel=entry.select_on_pixel and eval_every_epoch and method == "generalad",
            method=method,
            coreset_ratio=entry.coreset_ratio if method != "generalad" else None,
        )
        for method in entry.methods
        for c in classes
        for seed, shots in entry.variants()
    ]
