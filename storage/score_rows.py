"""Report rows of per-image scores: `ScoreRow`, and validated SCORE_SCHEMA tables built from rows or arrays.

The scores let a metric be recomputed without retraining; `storage.report_schema.SCORE_SCHEMA` holds the columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from generalad.defaults import METHODS
from storage.report_schema import SCORE_SCHEMA, SELECTIONS
from storage.report_values import check_name, opt_float

__all__ = ["ScoreRow", "score_table", "scores_from_arrays"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoreRow:
    """The score of one test image (for recomputing metrics without retraining); see SCORE_SCHEMA."""

    run_id: str
    dataset: str
    category: str | None = None
    backbone: str
    class_name: str
    seed: int = 0
    shots: int | None = None
    selection: str = "last"
    image_id: str
    score: float
    label: int
    method: str = "generalad"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        check_name("run_id", self.run_id)
        check_name("dataset", self.dataset)
        check_name("backbone", self.backbone)
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {self.label!r}")
        if opt_float("score", self.score) is None:
            raise ValueError("score must be a number")


def scores_from_arrays(
    *,
    run_id: str,
    dataset: str,
    backbone: str,
    class_name: str,
    image_ids: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    category: str | None = None,
    seed: int = 0,
    shots: int | None = None,
    selection: str = "last",
    method: str = "generalad",
) -> pa.Table:
    """The scores of one (run, class, selection) as a SCORE_SCHEMA table, built column-wise (fast for 10k images)."""
    n = len(image_ids)
    if len(scores) != n or len(labels) != n:
        raise ValueError(f"image_ids, scores and labels differ in length: {n}, {len(scores)}, {len(labels)}")
    table = pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "dataset": pa.array([dataset] * n, pa.string()),
            "category": pa.array([category] * n, pa.string()),
            "backbone": pa.array([backbone] * n, pa.string()),
            "class_name": pa.array([class_name] * n, pa.string()),
            "seed": pa.array([seed] * n, pa.int32()),
            "shots": pa.array([shots] * n, pa.int32()),
            "selection": pa.array([selection] * n, pa.string()),
            "image_id": pa.array(list(image_ids), pa.string()),
            "score": pa.array(np.asarray(scores, dtype=np.float64)),
            "label": pa.array(np.asarray(labels).astype(np.int8)),
            "method": pa.array([method] * n, pa.string()),
        },
        schema=SCORE_SCHEMA,
    )
    return score_table(table)


def score_table(rows: Sequence[ScoreRow] | pa.Table | pd.DataFrame) -> pa.Table:
    """Score rows (ScoreRow list, DataFrame or Table) as a validated pyarrow Table of SCORE_SCHEMA.

    Raises:
        ValueError: on missing or extra columns, nulls in required columns, unknown selections, labels other
            than 0/1, non-finite scores, or unsafe run/dataset/backbone names.
    """
    if isinstance(rows, pa.Table):
        table = rows
    elif isinstance(rows, pd.DataFrame):
        table = pa.Table.from_pandas(rows, preserve_index=False)
    else:
        for row in rows:
            if not isinstance(row, ScoreRow):
                raise ValueError(f"score rows must be ScoreRow instances, got {type(row).__name__}")
        table = pa.Table.from_pylist([asdict(r) for r in rows], schema=SCORE_SCHEMA)
    if "method" not in table.column_names:  # tables written before the kNN method existed
        table = table.append_column("method", pa.array(["generalad"] * table.num_rows, pa.string()))
    if set(table.column_names) != set(SCORE_SCHEMA.names):
        missing = sorted(set(SCORE_SCHEMA.names) - set(table.column_names))
        extra = sorted(set(table.column_names) - set(SCORE_SCHEMA.names))
        raise ValueError(f"score table columns differ from SCORE_SCHEMA: missing {missing}, extra {extra}")
    for f in SCORE_SCHEMA:
        if not f.nullable and table.column(f.name).null_count:
            raise ValueError(f"score column {f.name!r} has nulls (missing values, or NaN from pandas)")
    try:
        table = table.select(SCORE_SCHEMA.names).cast(SCORE_SCHEMA)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise ValueError(f"score table does not fit SCORE_SCHEMA: {exc}") from None
    for name in ("run_id", "dataset", "backbone"):
        for value in table.column(name).unique().to_pylist():
            check_name(name, value)
    bad_method = set(table.column("method").unique().to_pylist()) - set(METHODS)
    if bad_method:
        raise ValueError(f"method must be one of {METHODS}, got {sorted(bad_method)}")
    bad_sel = set(table.column("selection").unique().to_pylist()) - set(SELECTIONS)
    if bad_sel:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {sorted(bad_sel)}")
    labels = table.column("label").to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("label must be 0 or 1")
    if not np.isfinite(table.column("score").to_numpy()).all():
        raise ValueError("scores must be finite")
    return table.replace_schema_metadata(SCORE_SCHEMA.metadata)
