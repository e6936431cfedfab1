"""What a suite will do and how long it will take, before it does anything (`generalad reproduce --plan`).

`flows.plan_build.plan_suite` lists every store the suite needs (images; complete or not; a missing dataset counted at its
official release's size and marked so), every class task with its training steps and test evaluations, and
estimates the wall time on this machine's device from a short calibration: one backbone batch and one
discriminator training step (and one scoring batch) at the suite's real shapes, timed after a warm-up, times
the counts; `flows.plan_report.render_plan` prints it. Nothing is extracted or trained, and no Prefect server
is needed.

The model behind the estimate (README "Devices and precision"):
- extraction: images x backbone seconds per image (timed with the flow's torch threads), stores spread over
  the GPU lanes (one lane on a CPU);
- training: steps x seconds per step (scaled by views and batch size) + evaluated test images x scoring
  seconds per image, timed with the torch threads a Dask worker of the run gets (`flows.runtime.plan_dask`),
  tasks spread over its workers (the CPU plan's workers, or one per GPU);
- plus a fixed start-up (local Prefect server, Dask cluster).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flows.suites import Suite, SuiteEntry

__all__ = [
    "StoreTarget",
    "StorePlan",
    "TaskPlan",
    "Calibration",
    "SuitePlan",
    "NOMINAL_SIZES",
    "suite_targets",
    "calibrate",
]

_STARTUP_S = 30.0  # the local Prefect server and the Dask LocalCluster coming up (measured: 20-35 s here)
_CAL_BATCH = 4  # images per calibration batch: timings scale linearly with the batch beyond a few images
_CPU_SMALL_SIZE = 224  # above this a CPU calibrates with one image


@dataclass(frozen=True)
class NominalSize:
    """A missing dataset's official size: classes, training images per normal class, test images per task, and
    images per store (semantic datasets: one store for every class; industrial: one store per category)."""

    classes: tuple[str, ...]
    train: int
    test: int
    store_images: int


def _names(n: int, prefix: str = "class") -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(n))


# Official release sizes, means per class where classes differ (docs/method.md section 6 names the protocols).
NOMINAL_SIZES: Mapping[str, NominalSize] = {
    "cifar10": NominalSize(_names(10), 5000, 10000, 60000),
    "cifar100": NominalSize(_names(20, "superclass"), 2500, 10000, 60000),
    "fmnist": NominalSize(_names(10), 6000, 10000, 70000),
    "view": NominalSize(_names(6), 2339, 3000, 17034),
    "aircraft": NominalSize(_names(10, "variant"), 33, 333, 666),
    "cars": NominalSize(_names(20), 41, 820, 1640),
    "mvtec_ad": NominalSize(_names(15, "category"), 242, 115, 357),
    "mvtec_loco": NominalSize(_names(5, "category"), 354, 314, 668),
    "visa": NominalSize(_names(12, "category"), 722, 180, 902),
    "mpdd": NominalSize(_names(6, "category"), 148, 76, 224),
}


@dataclass(frozen=True)
class StoreTarget:
    """One feature store an entry needs (a dataset, or one category of an industrial dataset)."""

    entry: SuiteEntry
    root: str
    category: str | None


def store_key(target: StoreTarget, weights: str) -> tuple:
    """Entries that share this key share one store."""
    entry = target.entry
    return (
        entry.dataset, target.category, entry.backbone, weights, entry.image_size, entry.layers,
        entry.dataset_options,
    )  # fmt: skip


def _targets(entry: SuiteEntry, root: str) -> list[StoreTarget]:
    """Industrial datasets get one store per category (the entry's, else every category under the root)."""
    from generalad.data import get_dataset_class

    cls = get_dataset_class(entry.dataset)
    if not cls.requires_category:
        return [StoreTarget(entry, root, None)]
    categories = entry.categories or tuple(cls(Path(root), None, **entry.options()).categories())
    return [StoreTarget(entry, root, c) for c in categories]


def suite_targets(
    suite: Suite,
    roots: Mapping[str, str],
    missing: Mapping[str, str],
    weights: str,
    resolve: Callable[[str, str], str],
) -> tuple[list[tuple[tuple, StoreTarget, str]], list[str]]:
    """(store key, target, resolved weights) of every store target of the available entries, in suite order, and
    the entries that failed to expand ("entry <where>: <error>"). `resolve(weights, backbone)` resolves "auto"."""
    out: list[tuple[tuple, StoreTarget, str]] = []
    failures: list[str] = []
    for entry in suite.entries:
        if entry.dataset in missing:
            continue
        where = f"{entry.dataset} ({entry.backbone}{', ' + entry.label if entry.label else ''})"
        try:
            entry_weights = resolve(entry.weights or weights, entry.backbone)
            targets = _targets(entry, roots[entry.dataset])
        except Exception as exc:  # noqa: BLE001 - recorded, the rest of the suite goes on
            failures.append(f"entry {where}: {type(exc).__name__}: {exc}")
            continue
        out.extend((store_key(t, entry_weights), t, entry_weights) for t in targets)
    return out, failures


@dataclass(frozen=True)
class StorePlan:
    dataset: str
    category: str | None
    backbone: str
    image_size: int
    layers: tuple[int, ...]
    images: int
    state: str  # "complete", "to extract", "partial" or "missing dataset (nominal size)"
    url: str | None = None

    @property
    def to_extract(self) -> int:
        return 0 if self.state == "complete" else self.images


@dataclass(frozen=True)
class TaskPlan:
    dataset: str
    class_name: str
    backbone: str
    image_size: int
    layers: tuple[int, ...]
    seed: int
    shots: int | None
    n_train: int
    n_test: int
    epochs: int
    steps: int  # training steps in all
    batch_size: int
    views: int
    evaluations: int  # scorings of the whole test split
    nominal: bool = False


@dataclass(frozen=True)
class Calibration:
    """Seconds measured at one (backbone, image size, layers) on the plan's device."""

    backbone_s_per_image: float
    step_s: float  # one training step of `batch` images with `views` views
    batch: int
    views: int
    score_s_per_image: float

    def step_seconds(self, batch: int, views: int) -> float:
        return self.step_s * (batch / self.batch) * (views / self.views)


@dataclass
class SuitePlan:
    suite: str
    device: str
    precision: str
    extract_precision: str
    lanes: int  # extraction lanes: one per GPU used, 1 on a CPU
    train_lanes: int = 1  # Dask workers training at once
    train_threads: int | None = None  # torch threads of each (None: the process default)
    stores: list[StorePlan] = field(default_factory=list)
    tasks: list[TaskPlan] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    calibration: dict[tuple, Calibration] = field(default_factory=dict)
    calibration_seconds: float = 0.0

    @property
    def totals(self) -> dict[str, int]:
        return {
            "stores": len(self.stores),
            "stores_to_extract": sum(1 for s in self.stores if s.to_extract),
            "images_to_extract": sum(s.to_extract for s in self.stores),
            "tasks": len(self.tasks),
            "training_steps": sum(t.steps for t in self.tasks),
            "test_evaluations": sum(t.evaluations for t in self.tasks),
            "test_images_scored": sum(t.evaluations * t.n_test for t in self.tasks),
        }

    def task_seconds(self, task: TaskPlan) -> float:
        cal = self.calibration[(task.backbone, task.image_size, task.layers)]
        train = task.steps * cal.step_seconds(task.batch_size, task.views)
        return train + task.evaluations * task.n_test * cal.score_s_per_image

    def estimate(self) -> dict[str, float]:
        """Seconds: extraction (on `lanes`), training incl. evaluation (on `train_lanes`), start-up, total."""
        extract = [
            s.to_extract * self.calibration[(s.backbone, s.image_size, s.layers)].backbone_s_per_image
            for s in self.stores
            if (s.backbone, s.image_size, s.layers) in self.calibration
        ]
        train = [self.task_seconds(t) for t in self.tasks]
        lanes = max(1, self.lanes)
        out = {
            "extract_s": _makespan(extract, lanes),
            "train_s": _makespan(train, max(1, self.train_lanes)),
            "startup_s": _STARTUP_S,
        }
        out["total_s"] = sum(out.values())
        return out


def _makespan(durations: list[float], lanes: int) -> float:
    """Wall time of independent jobs on `lanes` workers, longest first onto the least loaded (LPT)."""
    if lanes <= 1:
        return float(sum(durations))
    loads = [0.0] * lanes
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + duration)
    return max(loads)


def calibrate(
    backbone: str,
    image_size: int,
    layers: tuple[int, ...],
    views: tuple[str, ...],
    *,
    device: str,
    precision: str,
    extract_precision: str,
    batch: int = _CAL_BATCH,
    train_threads: int | None = None,
) -> Calibration:
    """Time one backbone batch, one training step and one scoring batch of `batch` images at these shapes, each
    after a one-image warm-up; the training and scoring with `train_threads` torch threads.

    A random-init backbone of the same architecture stands in for the weights: same shapes, same FLOPs.
    """
    import torch

    from generalad.backbone import BackboneSpec, load_backbone
    from generalad.devices import autocast, resolve_device
    from generalad.method.feature_source import InMemoryFeatures
    from generalad.method.presets import preset_for
    from generalad.method.scoring import patch_logits
    from generalad.method.training import build_discriminator, make_optimizer, training_step

    where = resolve_device(device)
    sync = torch.cuda.synchronize if where.type == "cuda" else (lambda: None)
    # a CPU at paper shapes takes minutes per image of ViT-L: one image, no warm-up (per-image cost is flat in
    # the batch there, and first-call overheads are noise against it)
    big = where.type == "cpu" and image_size > _CPU_SMALL_SIZE
    batch = 1 if big else batch

    def timed(warm: Callable[[], object], fn: Callable[[], object]) -> float:
        if not big:
            warm()  # a one-image warm-up: allocation, kernel selection
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    net = load_backbone(BackboneSpec(name=backbone, weights="random", image_size=image_size, layers=layers))
    net = net.to(where)
    pixels = torch.randn(batch, 3, image_size, image_size, device=where)
    with torch.inference_mode(), autocast(where, extract_precision):
        forward_s = timed(lambda: net(pixels[:1]), lambda: net(pixels))
    n, e, h = net.num_patches, net.embed_dim, net.num_heads
    preset = preset_for("quickstart").with_overrides(views=tuple(views))
    model = build_discriminator(n, e, preset).to(where).train()
    optimizer, _ = make_optimizer(model, preset, 1)
    feats = torch.randn(batch, n, e, device=where)
    cls = torch.rand(batch, h, n, device=where).softmax(-1)
    generator = torch.Generator(device=where).manual_seed(0)

    def step(k: int):
        return lambda: training_step(
            model, optimizer, feats[:k], cls[:k], views=views, generator=generator, precision=precision
        )

    source = InMemoryFeatures(feats.cpu(), cls.cpu())

    def score(k: int):
        return lambda: patch_logits(model, source, range(k), batch_size=k, precision=precision)

    threads = torch.get_num_threads()
    torch.set_num_threads(train_threads or threads)  # what each Dask worker of the run sets
    try:
        step_s = timed(step(1), step(batch))
        score_s = timed(score(1), score(batch))
    finally:
        torch.set_num_threads(threads)
    return Calibration(forward_s / batch, step_s, batch, len(views), score_s / batch)
