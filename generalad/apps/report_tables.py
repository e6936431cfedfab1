"""Paper-style tables from long-format metric rows (a DataFrame of the report store's metric schema).

Rows are (backbone, weights, variant, selection), columns are datasets (or shot counts for the few-shot table), and each
cell is the mean over classes of one metric, in percent. When a class has several seeds (few-shot), its seeds are
averaged first, so every class weighs the same. Only `status == "ok"` rows enter the means; classes whose latest
run failed are listed under the table, and cells missing a class are marked `*`. The published number can be
shown beside ours ("ours / paper"); the paper's numbers are `best_on_test` with pretrained weights, so they are
shown only on pretrained rows.

Rows of the kNN baseline (`method` "patchcore_knn", generalad.method.patchcore) get rows of their own, labelled
with the method; docs/method.md gives no PatchCore numbers, so their paper cell is empty: the paper's PatchCore
used its own WideResNet-50 features, ours uses the store's backbone.

By default only the latest run of each configuration counts (`latest_only`), so a store that a weekly schedule
appends to gives this week's table. A suite that varies a setting (a sigma sweep, two view sets) labels each entry
(`variant`, e.g. `sigma=0.5`), and every variant is its own table row; rows of one variant that still differ in
configuration raise ValueError (filter them apart first). Rows of report files without `suite`/`variant`
(schema version 1) read as the plain variant "".

Example:
    >>> frame = ReportStore("reports").read_metrics(dataset=["mvtec_ad", "visa"])  # doctest: +SKIP
    >>> print(render_table(frame, with_paper=True))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd

from generalad.apps import paper
from generalad.apps.report_text import csv_text, markdown_text
from storage.report_schema import CONFIG_COLUMNS

__all__ = ["TableFormat", "TableAxis", "cell_means", "failed_classes", "render_table", "scoped_rows"]

TableFormat = Literal["markdown", "csv"]
TableAxis = Literal["dataset", "shots"]

_REQUIRED = (
    "run_id",
    "created_at",
    "dataset",
    "backbone",
    "weights",
    "pretrained",
    "class_name",
    "seed",
    "shots",
    "selection",
    "metric",
    "value",
    "status",
    "error",
    "config_hash",
)
# configuration columns named when one cell would mix several configurations
_CONFIG_COLUMNS = (*CONFIG_COLUMNS, "eval_resolution", "pixel_postprocess", "metric_impl")


def _check_frame(metrics: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in metrics.columns]
    if missing:
        raise ValueError(f"metric frame lacks columns {missing}; read it with ReportStore.read_metrics()")


def _latest(frame: pd.DataFrame) -> pd.DataFrame:
    """Only the rows of the latest run of each configuration (config_hash) of each suite entry (suite, variant):
    the same configuration run by two suites (table1's and table4's DINOv2-B) keeps a row in each."""
    if frame.empty:
        return frame
    config = ["config_hash", "suite", "variant"]
    runs = frame.groupby([*config, "run_id"], as_index=False)["created_at"].max()
    latest = runs.sort_values(["created_at", "run_id"]).groupby(config).tail(1)
    return frame.merge(latest[[*config, "run_id"]], on=[*config, "run_id"], how="inner")


def _weights_kind(pretrained: pd.Series) -> pd.Series:
    return pretrained.map({True: "pretrained", False: "random-init"}).astype(object)


def _scope(
    metrics: pd.DataFrame,
    *,
    by: TableAxis,
    shots: int | None,
    datasets: Sequence[str] | None,
    backbones: Sequence[str] | None,
    latest_only: bool,
    suite: str | None = None,
) -> pd.DataFrame:
    _check_frame(metrics)
    frame = metrics.copy()
    for column in ("suite", "variant"):  # absent or null in version-1 report files
        frame[column] = frame[column].fillna("") if column in frame.columns else ""
    if suite is not None:
        frame = frame[frame["suite"] == suite]
    if datasets is not None:
        frame = frame[frame["dataset"].isin(list(datasets))]
    if backbones is not None:
        frame = frame[frame["backbone"].isin(list(backbones))]
    if by == "dataset":
        frame = frame[frame["shots"].isna()] if shots is None else frame[frame["shots"] == shots]
    else:
        frame = frame[frame["shots"].notna()]
    if latest_only:
        frame = _latest(frame)
    frame = frame.copy()
    if "method" not in frame.columns:  # frames from before the kNN method: all GeneralAD
        frame["method"] = "generalad"
    frame["method"] = frame["method"].fillna("generalad")
    frame["weights_kind"] = _weights_kind(frame["pretrained"].astype(bool))
    frame["column"] = frame["dataset"] if by == "dataset" else frame["shots"].astype("int64")
    return frame


def scoped_rows(
    metrics: pd.DataFrame,
    *,
    suite: str | None = None,
    by: TableAxis = "dataset",
    shots: int | None = None,
    latest_only: bool = True,
) -> pd.DataFrame:
    """The rows a table would use: of `suite` (all when None), full-shot (by="dataset", or `shots`) or few-shot
    (by="shots"), the latest run of each configuration, with `weights_kind` and `column` added."""
    return _scope(
        metrics, by=by, shots=shots, datasets=None, backbones=None, latest_only=latest_only, suite=suite
    )


def _row_keys(by: TableAxis) -> list[str]:
    keys = ["method", "backbone", "weights_kind", "weights", "variant", "selection"]
    return ["dataset", *keys] if by == "shots" else keys


def failed_classes(
    metrics: pd.DataFrame,
    *,
    by: TableAxis = "dataset",
    shots: int | None = None,
    datasets: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    latest_only: bool = True,
    suite: str | None = None,
) -> pd.DataFrame:
    """The classes whose (latest) run failed: dataset, backbone, weights, variant, class_name, seed, shots, error."""
    frame = _scope(
        metrics,
        by=by,
        shots=shots,
        datasets=datasets,
        backbones=backbones,
        latest_only=latest_only,
        suite=suite,
    )
    failed = frame[frame["status"] == "failed"]
    cols = [
        "dataset",
        "method",
        "backbone",
        "weights_kind",
        "weights",
        "variant",
        "class_name",
        "seed",
        "shots",
        "error",
    ]
    failed = failed[cols].drop_duplicates(subset=cols[:-1])
    return failed.sort_values(cols[:-1], na_position="first").reset_index(drop=True)


def cell_means(
    metrics: pd.DataFrame,
    *,
    metric: str = "image_auroc",
    selection: str | Sequence[str] = "last",
    by: TableAxis = "dataset",
    shots: int | None = None,
    datasets: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    latest_only: bool = True,
    suite: str | None = None,
) -> pd.DataFrame:
    """One row per table cell: row keys, `column`, `ours` (mean over classes, percent, unrounded), `n_classes`,
    `n_failed`, and `paper` (the published number, NaN where there is none or the weights are random-init).

    Args:
        metrics: long-format metric rows (ReportStore.read_metrics()).
        metric: the metric of the cells.
        selection: one selection or several ("last", "best_on_test"); one table row each.
        by: "dataset" (a column per dataset, full-shot rows unless `shots` is given) or "shots" (a column per
            shot count, few-shot rows only, one row group per dataset).
        shots: with by="dataset", the shot count to tabulate (None = full-shot).
        datasets: keep only these datasets (and in this column order).
        backbones: keep only these backbones.
        latest_only: count only the latest run of each configuration.
        suite: keep only the rows of this suite (before picking the latest runs).

    Raises:
        ValueError: when a cell would average different configurations of one class and variant (filter first).
    """
    selections = [selection] if isinstance(selection, str) else list(selection)
    scope = {
        "by": by,
        "shots": shots,
        "datasets": datasets,
        "backbones": backbones,
        "latest_only": latest_only,
    }
    scope["suite"] = suite
    frame = _scope(metrics, **scope)
    keys = _row_keys(by)
    ok = frame[(frame["status"] == "ok") & (frame["metric"] == metric) & frame["selection"].isin(selections)]
    _check_one_config(ok, [*keys, "column"])
    per_class = ok.groupby([*keys, "column", "class_name"], as_index=False, dropna=False)["value"].mean()
    cells = per_class.groupby([*keys, "column"], as_index=False, dropna=False).agg(
        ours=("value", "mean"), n_classes=("class_name", "nunique")
    )
    cells["ours"] = cells["ours"] * 100.0
    failed = failed_classes(metrics, **scope)
    group = [k for k in keys if k != "selection"]
    if not failed.empty:
        failed = failed.assign(
            column=failed["dataset"] if by == "dataset" else failed["shots"].astype("int64")
        )
        n_failed = failed.groupby([*group, "column"], dropna=False)["class_name"].nunique().rename("n_failed")
        cells = cells.merge(n_failed.reset_index(), on=[*group, "column"], how="left")
        cells["n_failed"] = cells["n_failed"].fillna(0).astype(int)
    else:
        cells["n_failed"] = 0
    cells["paper"] = [_paper(metric, row, by) for row in cells.to_dict("records")]
    return cells


def _check_one_config(frame: pd.DataFrame, cell_keys: list[str]) -> None:
    counts = frame.groupby([*cell_keys, "class_name", "seed"], dropna=False)["config_hash"].nunique()
    mixed = counts[counts > 1]
    if mixed.empty:
        return
    first = dict(zip([*cell_keys, "class_name", "seed"], mixed.index[0], strict=True))
    rows = frame
    for key, value in first.items():
        rows = rows[rows[key] == value]
    differing = [c for c in _CONFIG_COLUMNS if c in rows.columns and rows[c].nunique(dropna=False) > 1]
    raise ValueError(
        f"a table cell would average different configurations of the same class ({first}); they differ in "
        f"{differing or ['config_hash']}: filter the frame to one configuration first"
    )


def _paper(metric: str, row: dict, by: TableAxis) -> float:
    if row["weights_kind"] != "pretrained" or row.get("method", "generalad") != "generalad":
        return float("nan")
    if by == "dataset":
        value = paper.paper_value(metric, row["column"], row["backbone"], shots=None)
    else:
        value = paper.paper_value(metric, row["dataset"], row["backbone"], shots=int(row["column"]))
    return float("nan") if value is None else value


def _backbone_order(name: str) -> tuple[int, str]:
    size = paper.backbone_size(name)
    return (paper.SIZES.index(size) if size else len(paper.SIZES), name)


def _columns(cells: pd.DataFrame, by: TableAxis, datasets: Sequence[str] | None) -> list:
    present = list(dict.fromkeys(cells["column"].tolist()))
    if by == "shots":
        return sorted(present)
    if datasets is not None:
        return [d for d in datasets if d in present]
    known = [d for d in paper.DATASET_TITLES if d in present]
    return known + sorted(d for d in present if d not in known)


def render_table(
    metrics: pd.DataFrame,
    *,
    metric: str = "image_auroc",
    selection: str | Sequence[str] = "last",
    by: TableAxis = "dataset",
    shots: int | None = None,
    datasets: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    with_paper: bool = False,
    fmt: TableFormat = "markdown",
    digits: int = 1,
    latest_only: bool = True,
    suite: str | None = None,
) -> str:
    """The paper's table layout as markdown or CSV.

    Markdown: a caption naming the metric, selection and weights; one row per (backbone, weights, selection);
    cells "ours" or "ours / paper" rounded to `digits`; `*` on cells that miss failed classes; the failed classes
    listed below. CSV: the same rows with unrounded percentages, a "<column> paper" column per column when
    `with_paper`, and a `failed` column naming the failed classes of the row. Arguments as in `cell_means`.
    """
    if fmt not in ("markdown", "csv"):
        raise ValueError(f"fmt must be 'markdown' or 'csv', got {fmt!r}")
    selections = [selection] if isinstance(selection, str) else list(selection)
    scope = {
        "by": by,
        "shots": shots,
        "datasets": datasets,
        "backbones": backbones,
        "latest_only": latest_only,
    }
    scope["suite"] = suite
    cells = cell_means(metrics, metric=metric, selection=selections, **scope)
    failed = failed_classes(metrics, **scope)
    keys = _row_keys(by)
    columns = _columns(cells, by, datasets)
    row_index = cells[keys].drop_duplicates()
    row_index = row_index.assign(
        _b=row_index["backbone"].map(_backbone_order),
        _s=row_index["selection"].map(lambda s: selections.index(s) if s in selections else len(selections)),
    )
    order = [
        *(["dataset"] if by == "shots" else []),
        "method",
        "_b",
        "weights_kind",
        "weights",
        "variant",
        "_s",
    ]
    row_index = row_index.sort_values(order).drop(columns=["_b", "_s"])
    lookup = {(tuple(r[k] for k in keys), r["column"]): r for r in cells.to_dict("records")}
    if fmt == "csv":
        return csv_text(row_index, keys, columns, lookup, failed, metric, by, with_paper)
    return markdown_text(
        row_index, keys, columns, lookup, failed, cells, metric, selections, by, shots, with_paper, digits
    )
