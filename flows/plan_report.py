"""The text of a suite plan (`generalad reproduce --plan`): stores, class tasks, totals, calibration, estimate."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flows.plan import SuitePlan

__all__ = ["render_plan", "format_duration"]

_MAX_TASK_LINES = 40


def _short(backbone: str) -> str:
    return backbone.replace("_patch14", "").replace("_dinov2", "")


def format_duration(seconds: float) -> str:
    """`812 s (13.5 min)`, `3.1e+06 s (36 days)`, `2.2e+07 s (8.4 months)`: seconds, then a plain unit."""
    for unit, size in (("years", 365 * 86400), ("months", 30.44 * 86400), ("days", 86400), ("h", 3600)):
        if seconds >= 2 * size:
            return f"{seconds:.3g} s ({seconds / size:.1f} {unit})"
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def render_plan(plan: SuitePlan, max_tasks: int = _MAX_TASK_LINES) -> str:
    """The plan as text: header, stores, missing datasets, failures, tasks (the first `max_tasks`), totals,
    calibration and the estimate."""
    lines = [
        f"Plan of suite {plan.suite!r} on {plan.device} (training {plan.precision} on {plan.train_lanes} Dask "
        f"worker(s) x {plan.train_threads or 'default'} torch thread(s); extraction {plan.extract_precision} on "
        f"{plan.lanes} lane(s)). Nothing has been extracted or trained.",
        "",
    ]
    totals = plan.totals
    lines.append(
        f"Stores ({totals['stores']}; {totals['stores_to_extract']} to extract, {totals['images_to_extract']} images):"
    )
    for s in plan.stores:
        name = s.dataset + (f"/{s.category}" if s.category else "")
        lines.append(f"  {name:<28} {_short(s.backbone)}@{s.image_size:<5} {s.images:>7} images  {s.state}")
    if plan.missing:
        lines += ["", "Missing datasets (counted at their official sizes where known):"]
        lines += [f"  - {m}" for m in plan.missing]
    if plan.failures:
        lines += ["", "Would fail:"] + [f"  - {f}" for f in plan.failures]
    lines += ["", f"Class tasks ({totals['tasks']}):"]
    for t in plan.tasks[:max_tasks]:
        shots = f" shots={t.shots}" if t.shots is not None else ""
        nominal = "  (nominal)" if t.nominal else ""
        lines.append(
            f"  {t.dataset}/{t.class_name} {_short(t.backbone)}@{t.image_size} seed={t.seed}{shots}: train {t.n_train}, "
            f"test {t.n_test}; {t.epochs} epochs, {t.steps} steps of {t.batch_size}, {t.evaluations} test "
            f"evaluations{nominal}"
        )
    if len(plan.tasks) > max_tasks:
        lines.append(f"  ... and {len(plan.tasks) - max_tasks} more")
    lines += [
        "",
        f"In all: {totals['images_to_extract']} images to extract, {totals['tasks']} class tasks, "
        f"{totals['training_steps']} training steps, {totals['test_evaluations']} test evaluations "
        f"({totals['test_images_scored']} test images scored).",
        "",
        f"Calibration on {plan.device} ({plan.calibration_seconds:.1f} s):",
    ]
    for (backbone, size, layers), cal in plan.calibration.items():
        lines.append(
            f"  {_short(backbone)}@{size} layers {list(layers)}: backbone {cal.backbone_s_per_image:.4g} s/image, "
            f"training step {cal.step_s:.4g} s ({cal.batch} images, {cal.views} views), "
            f"scoring {cal.score_s_per_image:.3g} s/image"
        )
    if plan.calibration or not plan.tasks:
        est = plan.estimate()
        lines += [
            "",
            f"Estimated wall time on {plan.device}: {format_duration(est['total_s'])} = extraction "
            f"{format_duration(est['extract_s'])} + training and evaluation {format_duration(est['train_s'])} "
            f"+ start-up {est['startup_s']:.0f} s.",
        ]
    return "\n".join(lines)
