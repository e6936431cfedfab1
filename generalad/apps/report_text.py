"""The text of `render_table`: its markdown and CSV writers (split from report_tables to keep modules small)."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import pandas as pd

from generalad.apps import paper

__all__ = ["markdown_text", "csv_text", "column_title"]

TableAxis = Literal["dataset", "shots"]

METRIC_TITLES = {
    "image_auroc": "Image AUROC",
    "image_ap": "Image AP",
    "image_f1_max": "Image F1-max",
    "pixel_auroc": "Pixel AUROC",
    "pixel_ap": "Pixel AP",
    "aupro": "AUPRO (MVTec, FPR 0.3)",
    "aupro_reference": "AUPRO (reference variant)",
}
_MISSING = "–"
_METHOD_TITLES = {"generalad": "GeneralAD", "patchcore_knn": "PatchCore-kNN"}


def _shows_method(row_index: pd.DataFrame) -> bool:
    """A method column only when some row is not GeneralAD (tables of GeneralAD alone look as they did)."""
    return bool((row_index["method"] != "generalad").any())


def column_title(column: object, by: TableAxis) -> str:
    return f"{column}-shot" if by == "shots" else paper.DATASET_TITLES.get(str(column), str(column))


def _fmt(value: float, digits: int) -> str:
    return _MISSING if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _failed_in_row(failed: pd.DataFrame, row: dict, by: TableAxis) -> list[str]:
    match = failed[
        (failed["method"] == row["method"])
        & (failed["backbone"] == row["backbone"])
        & (failed["weights"] == row["weights"])
        & (failed["variant"] == row["variant"])
        & ((failed["dataset"] == row["dataset"]) if by == "shots" else True)
    ]
    return [f"{r['dataset']}/{r['class_name']}" for r in match.to_dict("records")]


def csv_text(row_index, keys, columns, lookup, failed, metric, by, with_paper) -> str:
    records = []
    shown = keys if _shows_method(row_index) else [k for k in keys if k != "method"]
    for row in row_index.to_dict("records"):
        out = {("weights_id" if k == "weights" else k): row[k] for k in shown}
        out["metric"] = metric
        for column in columns:
            cell = lookup.get((tuple(row[k] for k in keys), column))
            title = column_title(column, by)
            out[title] = cell["ours"] if cell else np.nan
            if with_paper:
                out[f"{title} paper"] = cell["paper"] if cell else np.nan
        out["failed"] = ";".join(dict.fromkeys(_failed_in_row(failed, row, by)))
        records.append(out)
    frame = pd.DataFrame(records).rename(columns={"weights_kind": "weights"})
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def _preamble(row_index, metric, selections, by, shots, with_paper, show_method) -> list[str]:
    """The lines above the table: title, selection and weights, and what the cells hold."""
    title = METRIC_TITLES.get(metric, metric)
    where = " on MVTec-AD" if by == "shots" and set(row_index.get("dataset", [])) == {"mvtec_ad"} else ""
    shot_note = f", {shots}-shot" if by == "dataset" and shots is not None else ""
    lines = [f"**{title} (%){where}{shot_note}**, mean over classes."]
    weights = sorted(set(zip(row_index["weights_kind"], row_index["weights"], strict=True)))
    lines.append(
        f"Selection: {', '.join(f'`{s}`' for s in selections)}. "
        f"Weights: {'; '.join(f'{kind} (`{ident}`)' for kind, ident in weights) or 'none'}."
    )
    if with_paper:
        paper_selection = paper.PAPER_PIXEL_SELECTION if metric == "pixel_auroc" else paper.PAPER_SELECTION
        lines.append(
            f"Cells: ours / paper. Paper numbers: `{paper_selection}` selection, {paper.PAPER_WEIGHTS} "
            "weights, shown on pretrained rows only."
        )
    if show_method:
        lines.append(
            "PatchCore-kNN: nearest-neighbour distance to a coreset of the normal training patches of the same "
            "feature store (our backbone). The paper's PatchCore used its own WideResNet-50 features; "
            "docs/method.md does not give its numbers, so paper cells are shown for GeneralAD only."
        )
    return lines


def _failed_lines(failed: pd.DataFrame) -> list[str]:
    """The list of failed classes under the table (none when every class succeeded)."""
    if failed.empty:
        return []
    lines = ["", "Failed classes (not in the means):"]
    for r in failed.to_dict("records"):
        error = (r["error"] or "").strip().splitlines()
        shots_note = "" if pd.isna(r["shots"]) else f", {int(r['shots'])}-shot"
        lines.append(
            f"- {r['dataset']} / {r['class_name']} ({r['backbone']}, {r['weights_kind']}, seed {r['seed']}"
            f"{shots_note}): {(error[0] if error else 'no message')[:200]}"
        )
    return lines


def markdown_text(
    row_index, keys, columns, lookup, failed, cells, metric, selections, by, shots, with_paper, digits
) -> str:
    show_method = _shows_method(row_index)
    lines = _preamble(row_index, metric, selections, by, shots, with_paper, show_method)
    lines.append("")
    variants = bool(row_index["variant"].astype(bool).any())  # a column only when some entry is labelled
    head = [
        *(["dataset"] if by == "shots" else []),
        *(["method"] if show_method else []),
        "backbone",
        "weights",
        *(["variant"] * variants),
        "selection",
    ]
    head += [column_title(c, by) for c in columns]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    any_partial = False
    for row in row_index.to_dict("records"):
        text = [*([paper.DATASET_TITLES.get(row["dataset"], row["dataset"])] if by == "shots" else [])]
        text += [_METHOD_TITLES.get(row["method"], row["method"])] if show_method else []
        text += [row["backbone"], row["weights_kind"], *([row["variant"]] * variants), row["selection"]]
        for column in columns:
            cell = lookup.get((tuple(row[k] for k in keys), column))
            if cell is None:
                text.append(_MISSING)
                continue
            value = _fmt(cell["ours"], digits)
            if with_paper:
                value = f"{value} / {_fmt(cell['paper'], 1)}"
            if cell["n_failed"]:
                value += "*"
                any_partial = True
            text.append(value)
        lines.append("| " + " | ".join(text) + " |")
    if row_index.empty:
        lines.append(f"(no ok rows of metric `{metric}` with selection {selections})")
    if any_partial:
        lines.append("")
        lines.append("`*` mean over the classes that succeeded; the failed ones are listed below.")
    lines += _failed_lines(failed)
    return "\n".join(lines) + "\n"
