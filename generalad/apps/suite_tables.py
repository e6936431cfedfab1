"""The paper's layouts of each suite's results (what `generalad report --suite NAME` and `reproduce-all` print).

- table1 / quickstart / smoke: datasets as columns, a row per backbone (`render_table`), ours / paper.
- table2: pixel AUROC under `last` and `best_on_test_pixel` (the paper's Table 2 selects the epoch on pixel AUROC).
- table3: datasets x shots, mean ± sample std (ddof 1) over the seeds of each class-averaged run, beside the
  paper's mean.
- table4: a row per backbone of the paper's Table 4, a column per dataset, ours / paper.
- table5: a row per distortion set, a column per dataset, ours / paper.
- fig4: the sigma sweep and the K sweep as tables (a row per value, a column per dataset), plus `fig4_plots`.

Rows are only those of the named suite (column `suite`), the latest run of each configuration. Paper numbers
(docs/method.md sections 2 and 7) are `best_on_test` with pretrained weights; in these layouts they are printed
beside every row, and the caption names the rows' weights, so a random-init row is never mistaken for a
reproduction.

Example:
    >>> frame = ReportStore("reports").read_metrics()  # doctest: +SKIP
    >>> print(render_suite(frame, "table5"))  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import pandas as pd
from PIL import Image

from generalad.apps import paper
from generalad.apps.plots import sweep_plots, sweep_table
from generalad.apps.report_tables import TableFormat, cell_means, render_table, scoped_rows

__all__ = ["render_suite", "fig4_plots", "SUITE_LAYOUTS"]

_MISSING = "–"
SUITE_LAYOUTS = ("table1", "table2", "table3", "table4", "table5", "fig4", "quickstart", "smoke")


def _fmt(value: float | None, digits: int = 1) -> str:
    return (
        _MISSING
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def _weights_line(frame: pd.DataFrame) -> str:
    kinds = sorted(set(zip(frame["weights_kind"], frame["weights"], strict=True))) if len(frame) else []
    text = "; ".join(f"{kind} (`{ident}`)" for kind, ident in kinds) or "none"
    note = (
        " Random-init rows are plumbing checks, not comparable with the paper."
        if "random-init" in text
        else ""
    )
    return f"Weights: {text}.{note}"


def _grid(
    records: list[dict], rows: list[str], columns: list[str], fmt: TableFormat, head: str, digits: int
) -> str:
    """records: {row, column, ours, paper?, std?}; markdown cells `ours[ ± std][ / paper]`, CSV unrounded."""
    lookup = {(r["row"], r["column"]): r for r in records}
    if fmt == "csv":
        out = []
        for row in rows:
            line: dict = {head: row}
            for column in columns:
                cell = lookup.get((row, column), {})
                line[column] = cell.get("ours", math.nan)
                if any("std" in r for r in records):
                    line[f"{column} std"] = cell.get("std", math.nan)
                line[f"{column} paper"] = cell.get("paper", math.nan)
            out.append(line)
        buffer = io.StringIO()
        pd.DataFrame(out).to_csv(buffer, index=False, lineterminator="\n")
        return buffer.getvalue()
    titles = [paper.DATASET_TITLES.get(c, c) for c in columns]
    lines = ["| " + " | ".join([head, *titles]) + " |", "|" + "---|" * (len(columns) + 1)]
    for row in rows:
        cells = []
        for column in columns:
            cell = lookup.get((row, column))
            if cell is None:
                cells.append(_MISSING)
                continue
            text = _fmt(cell.get("ours"), digits)
            if cell.get("std") is not None:
                text += f" ± {_fmt(cell['std'], digits)}"
            if "paper" in cell:
                text += f" / {_fmt(cell['paper'])}"
            cells.append(text + ("*" if cell.get("n_failed") else ""))
        lines.append("| " + " | ".join([row, *cells]) + " |")
    return "\n".join(lines) + "\n"


def _datasets(frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame["dataset"]))
    return [d for d in paper.DATASET_TITLES if d in present] + sorted(
        d for d in present if d not in paper.DATASET_TITLES
    )


def _variant_table(
    frame: pd.DataFrame,
    suite: str,
    *,
    lookup: Callable[[str, str], float | None],
    order: Callable[[str], object],
    head: str,
    title: str,
    selection: str,
    fmt: TableFormat,
    digits: int,
) -> str:
    """A row per (variant, backbone when several), a column per dataset, ours / paper (tables 4 and 5)."""
    cells = cell_means(frame, metric="image_auroc", selection=selection, suite=suite)
    if cells.empty:
        return f"(no ok image_auroc rows of suite {suite} with selection {selection})\n"
    # name the backbone in the row only when one variant ran on several
    several = cells.groupby("variant")["backbone"].nunique().max() > 1
    cells["row"] = cells["variant"] + (" · " + cells["backbone"] if several else "")
    records = [
        {"row": r["row"], "column": r["column"], "ours": r["ours"], "paper": lookup(r["column"], r["variant"]),
         "n_failed": r["n_failed"]}
        for r in cells.to_dict("records")
    ]  # fmt: skip
    rows = sorted(dict.fromkeys(cells["row"]), key=lambda row: (order(row.split(" · ")[0]), row))
    scope = scoped_rows(frame, suite=suite)
    caption = [
        f"**{title}**: image AUROC (%), mean over classes, selection `{selection}`; cells ours / paper "
        f"(paper: `{paper.PAPER_SELECTION}`, pretrained). Backbones: {', '.join(sorted(set(cells['backbone'])))}.",
        _weights_line(scope),
        "",
    ]
    grid = _grid(records, rows, _datasets(cells.rename(columns={"column": "dataset"})), fmt, head, digits)
    return grid if fmt == "csv" else "\n".join(caption) + grid


def _table5_order(variant: str) -> object:
    return variant.count("+")


def _table4_order(variant: str) -> object:
    labels = list(paper.TABLE4_BACKBONES)
    label = variant.removeprefix("backbone=")
    return labels.index(label) if label in labels else len(labels)


def _table3(frame: pd.DataFrame, selection: str, fmt: TableFormat, digits: int) -> str:
    rows = scoped_rows(frame, suite="table3", by="shots")
    ok = rows[(rows["status"] == "ok") & (rows["metric"] == "image_auroc") & (rows["selection"] == selection)]
    if ok.empty:
        return f"(no ok few-shot image_auroc rows of suite table3 with selection {selection})\n"
    keys = ["method", "dataset", "backbone", "shots"]  # the kNN baseline (suite methods) gets rows of its own
    per_seed = ok.groupby([*keys, "seed"], as_index=False)[
        "value"
    ].mean()  # the class mean of each seed's run
    stats = per_seed.groupby(keys, as_index=False).agg(
        ours=("value", "mean"), std=("value", lambda v: v.std(ddof=1) if len(v) > 1 else math.nan),
        n_seeds=("seed", "nunique"),
    )  # fmt: skip
    records = []
    for r in stats.to_dict("records"):
        row = _table3_row(r)
        knn = r["method"] != "generalad"  # docs/method.md has no PatchCore numbers: no paper cell
        value = None if knn else paper.few_shot_image_auroc(r["backbone"], int(r["shots"]), r["dataset"])
        records.append(
            {"row": row, "column": f"{int(r['shots'])}-shot", "ours": r["ours"] * 100, "std": r["std"] * 100,
             "paper": value}
        )  # fmt: skip
    n_seeds = sorted(set(stats["n_seeds"]))
    columns = [f"{s}-shot" for s in sorted({int(s) for s in stats["shots"]})]
    caption = [
        f"**Paper Table 3**: few-shot image AUROC (%), mean ± sample std over seeds ({'/'.join(map(str, n_seeds))} "
        f"seeds) of the class mean, selection `{selection}`; cells ours ± std / paper mean (paper: seeds "
        f"{'/'.join(map(str, paper.FEW_SHOT_SEEDS))}, `{paper.PAPER_SELECTION}`).",
        _weights_line(rows),
        "",
    ]
    order = {_table3_row(r): (r["dataset"], r["method"], _size_order(r["backbone"]), r["backbone"]) for r in stats.to_dict("records")}  # fmt: skip
    if (stats["method"] != "generalad").any():
        caption.insert(2, "PatchCore-kNN rows: the kNN baseline on the same features (our backbone; the paper's "
                       "PatchCore used WideResNet-50 and docs/method.md gives no numbers for it, so no paper cell).")  # fmt: skip
    grid = _grid(records, sorted(order, key=order.get), columns, fmt, "dataset · backbone", digits)
    return grid if fmt == "csv" else "\n".join(caption) + grid


def _table3_row(r: dict) -> str:
    method = "" if r["method"] == "generalad" else " · PatchCore-kNN"
    return f"{paper.DATASET_TITLES.get(r['dataset'], r['dataset'])} · {r['backbone']}{method}"


def _size_order(backbone: str) -> int:
    size = paper.backbone_size(backbone)
    return paper.SIZES.index(size) if size else len(paper.SIZES)


def _sweep_rows(frame: pd.DataFrame, parameter: str) -> pd.DataFrame:
    rows = scoped_rows(frame, suite="fig4")
    return rows[rows["variant"].str.startswith(f"{parameter}=")]


_SWEEPS = (
    ("sigma", "noise sigma", f"paper: sigma {paper.FIG4_BEST_SIGMA:g} is best for every anomaly type"),
    (
        "top_k",
        "K (top-K patches in the image score)",
        "paper: K = N best for semantic, K = 10 for industrial",
    ),
)


def _sweep_records(frame: pd.DataFrame, parameter: str, selection: str) -> tuple[list[dict], list[str], list]:
    """One sweep's cells (row = the parameter's value), its row labels in order, and its datasets."""
    rows = _sweep_rows(frame, parameter)
    table = sweep_table(rows, parameter, selection=selection) if len(rows) else pd.DataFrame()
    if table.empty:
        return [], [], []
    table = table.assign(dataset=table["series"].str.split(" ").str[0])
    label = (lambda v: f"{v:g}") if parameter == "sigma" else (lambda v: f"{int(v)}")
    records = [{"row": label(float(r[parameter])), "column": r["dataset"], "ours": r["value"] * 100}
               for r in table.to_dict("records")]  # fmt: skip
    order = [label(v) for v in sorted(set(table[parameter].astype(float)))]
    return records, order, _datasets(table)


def _fig4(frame: pd.DataFrame, selection: str, fmt: TableFormat, digits: int) -> str:
    """Both sweeps: in markdown a table each with the best value per dataset; in CSV one table, rows `sigma=v`."""
    sweeps = {parameter: _sweep_records(frame, parameter, selection) for parameter, _, _ in _SWEEPS}
    if fmt == "csv":
        records = [{**r, "row": f"{p}={r['row']}"} for p, (recs, _, _) in sweeps.items() for r in recs]
        order = [f"{p}={row}" for p, (_, rows, _) in sweeps.items() for row in rows]
        datasets = list(dict.fromkeys(d for _, _, ds in sweeps.values() for d in ds))
        return _grid(records, order, datasets, fmt, "sweep", digits)
    scope = scoped_rows(frame, suite="fig4")
    backbones = ", ".join(sorted(set(scope["backbone"]))) or "none"
    parts = [f"Backbone: {backbones} (the paper does not restate Fig. 4's backbone: an assumption). "
             f"{_weights_line(scope)}\n"]  # fmt: skip
    for parameter, name, paper_best in _SWEEPS:
        records, order, datasets = sweeps[parameter]
        if not records:
            parts.append(f"(no ok rows of the {parameter} sweep of suite fig4)\n")
            continue
        bests = []
        for dataset in datasets:
            top = max((r for r in records if r["column"] == dataset), key=lambda r: r["ours"])
            bests.append(f"{paper.DATASET_TITLES.get(dataset, dataset)} {top['row']}")
        parts.append(
            f"**Paper Fig. 4, {name} sweep**: image AUROC (%), mean over classes, selection `{selection}`. "
            f"Best here: {', '.join(bests)} ({paper_best}).\n\n"
            + _grid(records, order, datasets, fmt, parameter, digits)
        )
    return "\n".join(parts)


def fig4_plots(frame: pd.DataFrame, *, selection: str = "last") -> dict[str, Image.Image]:
    """The Fig. 4 plots of suite fig4's rows: image AUROC vs sigma and vs K (keys "sigma", "top_k")."""
    plots = {}
    for parameter in ("sigma", "top_k"):
        rows = _sweep_rows(frame, parameter)
        if len(rows):
            plot = sweep_plots(rows, selection=selection).get(parameter)
            if plot is not None:
                plots[parameter] = plot
    return plots


def render_suite(
    frame: pd.DataFrame,
    suite: str,
    *,
    selection: str = "last",
    fmt: TableFormat = "markdown",
    digits: int = 1,
) -> str:
    """The paper's layout of one suite's rows (see the module docstring); other suite names get `render_table`
    of that suite's rows."""
    if fmt not in ("markdown", "csv"):
        raise ValueError(f"fmt must be 'markdown' or 'csv', got {fmt!r}")
    common = {"selection": selection, "fmt": fmt, "digits": digits}
    if suite == "table5":
        return _variant_table(frame, suite, lookup=paper.distortion_ablation, order=_table5_order,
                              head="distortions", title="Paper Table 5 (distortion ablation)", **common)  # fmt: skip
    if suite == "table4":
        return _variant_table(frame, suite, lookup=paper.backbone_ablation, order=_table4_order,
                              head="backbone", title="Paper Table 4 (backbones)", **common)  # fmt: skip
    if suite == "table3":
        return _table3(frame, selection, fmt, digits)
    if suite == "fig4":
        return _fig4(frame, selection, fmt, digits)
    if suite == "table2":
        text = render_table(frame, metric="pixel_auroc", selection=["last", "best_on_test_pixel"], suite=suite,
                            with_paper=True, fmt=fmt, digits=digits)  # fmt: skip
        note = ("Paper Table 2's pixel numbers select the epoch on pixel AUROC: compare them with the "
                "`best_on_test_pixel` rows.\n\n")  # fmt: skip
        return text if fmt == "csv" else note + text
    return render_table(frame, selection=selection, suite=suite, with_paper=True, fmt=fmt, digits=digits)
