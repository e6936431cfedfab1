"""The Parquet report store: long-format metric rows and per-image scores on any fsspec URL.

Layout (hive partitions, one file per run and partition, never shared between runs):

    <url>/metrics/dataset=<dataset>/backbone=<backbone>/<run_id>-<uuid32>.parquet
    <url>/scores/dataset=<dataset>/backbone=<backbone>/<run_id>-<uuid32>.parquet

The partition columns live in the directory names only. Guarantees:
- no half-written file is ever visible: on a local disk each file is written under a hidden temporary name
  (`.<basename>.tmp`, skipped by pyarrow's discovery and by `*.parquet` globs) and then renamed into place; on
  an object store (no atomic rename there) each file is encoded in memory and placed by one PUT, which makes it
  visible whole or not at all;
- a run's score files are placed before its metric files, so a run whose metric rows are visible has all its
  scores too (a writer killed in between leaves scores without metrics, which no table reads as a result);
- a run appears (almost) at once: every file of a `write_run` is encoded first, then all are moved into place, so
  a writer killed while encoding leaves nothing visible (only a kill during the renames leaves part of a run, and
  one during the deletion of a rerun's older files leaves both versions; `bench/faults.py` measures this);
- writers of different run ids never touch the same file (unique basenames, no read-modify-write), so concurrent
  runs lose no rows;
- `write_run` of a run id that is already stored first writes all its new files, then deletes that run's older
  files, so a reader sees the old rows, briefly both, then the new rows; never none. If writing fails, the files
  already placed by that call are removed again and the older rows stay. One writer per run id at a time.

Example:
    >>> store = ReportStore("reports")  # or "memory://reports", "s3://bucket/reports"
    >>> store.write_run("2026-11-30-mvtec", metric_rows)
    >>> store.read_metrics(dataset="mvtec_ad", metric="image_auroc")
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from storage.metric_row import MetricRow, metric_table
from storage.report_schema import METRIC_SCHEMA, PARTITION_COLUMNS, SCORE_SCHEMA
from storage.report_values import check_name
from storage.score_rows import ScoreRow, score_table

__all__ = ["ReportStore", "WriteResult"]

_TABLES = {"metrics": METRIC_SCHEMA, "scores": SCORE_SCHEMA}
_BASENAME_RE = re.compile(r"^(?P<run_id>.+)-(?P<token>[0-9a-f]{32})\.parquet$")
_PARTITIONING = ds.partitioning(
    pa.schema([pa.field(c, pa.string()) for c in PARTITION_COLUMNS]), flavor="hive"
)

FilterValue = str | int | float | bool | Sequence[str | int | float | bool] | None


@dataclass(frozen=True)
class WriteResult:
    """What one `write_run` did: the files it placed, and the older files of the same run it removed."""

    written: tuple[str, ...]
    removed: tuple[str, ...]


class ReportStore:
    """Metric and score reports under one fsspec URL (a local path by default).

    Args:
        url: where the reports live: a local folder, or any fsspec URL (`memory://`, `s3://`, `gs://`, ...).
        storage_options: passed to the fsspec filesystem (credentials stay there, never in a report).
    """

    def __init__(self, url: str = "reports", **storage_options: Any) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/") or "/"
        if isinstance(self.fs, LocalFileSystem):
            self._arrow_fs: pafs.FileSystem = pafs.LocalFileSystem()
        else:
            self._arrow_fs = pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    def __repr__(self) -> str:
        return f"ReportStore({self.url!r})"

    # ---------------------------------------------------------------- writing

    def write_run(
        self,
        run_id: str,
        metric_rows: Sequence[MetricRow],
        score_rows: Sequence[ScoreRow] | pa.Table | pd.DataFrame | None = None,
    ) -> WriteResult:
        """Store every row of one run, replacing what an earlier write of the same run id stored.

        Args:
            run_id: the run's id; every row must carry it. Letters, digits, `_`, `.`, `-`.
            metric_rows: validated `MetricRow`s (failed classes included, as status="failed" rows).
            score_rows: per-image scores of the run, as ScoreRows, a DataFrame or a Table of SCORE_SCHEMA.

        Returns:
            The paths written and the paths of the run's older files removed.

        Raises:
            ValueError: when there is nothing to write, or a row belongs to another run or fails validation.
        """
        check_name("run_id", run_id)
        tables = {}
        if score_rows is not None:  # placed first: visible metric rows imply the run's scores are there
            tables["scores"] = score_table(score_rows)
        tables["metrics"] = metric_table(list(metric_rows))
        if not sum(t.num_rows for t in tables.values()):
            raise ValueError(f"run {run_id!r}: nothing to write (no metric or score rows)")
        for kind, table in tables.items():
            other = set(table.column("run_id").unique().to_pylist()) - {run_id}
            if other:
                raise ValueError(f"{kind} rows of run {run_id!r} carry other run ids: {sorted(other)}")

        older = self._run_files(run_id)
        # Encode every file first (hidden temporaries; bytes in memory on an object store), then place them all
        # (renames; one PUT each on an object store), scores before metrics: a writer killed while
        # encoding leaves nothing visible, and the window in which part of a run is visible shrinks to the
        # renames. Only then are the run's older files removed.
        staged: list[tuple[str | bytes, str]] = []
        written: list[str] = []
        try:
            for kind, table in tables.items():
                for (dataset, backbone), part in _split_partitions(table):
                    path = self._new_path(kind, run_id, dataset, backbone)
                    staged.append((self._stage(part, path), path))
            for tmp, path in staged:
                self._commit(tmp, path)
                written.append(path)
        except BaseException:
            for tmp, _ in staged:
                with contextlib.suppress(OSError):
                    if isinstance(tmp, str) and self.fs.exists(tmp):
                        self.fs.rm(tmp)
            for path in written:
                with contextlib.suppress(OSError):
                    self.fs.rm(path)
            raise
        keep = set(written)
        removed = [p for p in older if p not in keep]
        for path in removed:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)
        return WriteResult(tuple(written), tuple(removed))

    def delete_run(self, run_id: str) -> list[str]:
        """Remove every file of `run_id` (metrics and scores); returns the removed paths."""
        check_name("run_id", run_id)
        removed = self._run_files(run_id)
        for path in removed:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)
        return removed

    def run_ids(self) -> list[str]:
        """The run ids that have files in this store, sorted."""
        return sorted({run for _, run in self._files()})

    def remove_temporaries(self) -> list[str]:
        """Delete `.tmp` files left by writers that crashed; run only while no writer is active."""
        found = []
        for kind in _TABLES:
            base = f"{self.root}/{kind}"
            if self.fs.exists(base):
                found += [p for p in self.fs.find(base) if p.rsplit("/", 1)[-1].endswith(".tmp")]
        for path in found:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)
        return found

    def _new_path(self, kind: str, run_id: str, dataset: str, backbone: str) -> str:
        return f"{self.root}/{kind}/dataset={dataset}/backbone={backbone}/{run_id}-{uuid.uuid4().hex}.parquet"

    def _stage(self, table: pa.Table, path: str) -> str | bytes:
        """Write `table` to a hidden temporary file next to `path` (not yet visible) and return its path; on an
        object store, encode it in memory and return the bytes (one PUT places them in `_commit`)."""
        if not isinstance(self.fs, LocalFileSystem):
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            return sink.getvalue().to_pybytes()
        folder, name = path.rsplit("/", 1)
        tmp = f"{folder}/.{name}.tmp"
        self.fs.makedirs(folder, exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
        except BaseException:
            with contextlib.suppress(OSError):
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
            raise
        return tmp

    def _commit(self, staged: str | bytes, path: str) -> None:
        """Make a fully written file visible: an atomic rename on local disks, one PUT on an object store."""
        if isinstance(staged, bytes):
            self.fs.pipe_file(path, staged)
        else:
            self.fs.mv(staged, path)

    def _files(self, kinds: Iterable[str] = tuple(_TABLES)) -> list[tuple[str, str]]:
        """(path, run_id) of every visible report file."""
        out = []
        for kind in kinds:
            base = f"{self.root}/{kind}"
            self.fs.invalidate_cache(base)  # other processes write here: list the store, not a cached listing
            if not self.fs.exists(base):
                continue
            for path in self.fs.find(base):
                match = _BASENAME_RE.match(path.rsplit("/", 1)[-1])
                if match:
                    out.append((path, match["run_id"]))
        return out

    def _run_files(self, run_id: str) -> list[str]:
        return sorted(path for path, run in self._files() if run == run_id)

    # ---------------------------------------------------------------- reading

    def read_metrics(
        self,
        *,
        columns: Sequence[str] | None = None,
        where: pc.Expression | None = None,
        **filters: FilterValue,
    ) -> pd.DataFrame:
        """Metric rows as a DataFrame (columns in schema order), optionally filtered.

        Args:
            columns: the columns to return (default: all).
            where: an extra pyarrow filter expression, e.g. `pc.field("value") > 0.9`.
            **filters: column=value or column=[values] equality filters, e.g. `dataset="mvtec_ad"`,
                `selection="last"`, `shots=None` (matches nulls). Partition columns prune directories.
        """
        return self._read("metrics", columns, where, filters)

    def read_scores(
        self,
        *,
        columns: Sequence[str] | None = None,
        where: pc.Expression | None = None,
        **filters: FilterValue,
    ) -> pd.DataFrame:
        """Per-image score rows as a DataFrame; filters as in `read_metrics`."""
        return self._read("scores", columns, where, filters)

    def _read(
        self,
        kind: str,
        columns: Sequence[str] | None,
        where: pc.Expression | None,
        filters: dict[str, FilterValue],
    ) -> pd.DataFrame:
        schema = _TABLES[kind]
        names = list(columns) if columns is not None else schema.names
        unknown = [c for c in [*names, *filters] if c not in schema.names]
        if unknown:
            raise ValueError(f"unknown {kind} columns {unknown}; known: {', '.join(schema.names)}")
        expr = where
        for name, value in filters.items():
            term = _equals(name, value)
            expr = term if expr is None else expr & term
        base = f"{self.root}/{kind}"
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            table = schema.empty_table()
        else:
            dataset = ds.dataset(
                base,
                schema=schema,
                format="parquet",
                filesystem=self._arrow_fs,
                partitioning=_PARTITIONING,
            )
            table = dataset.to_table(filter=expr)
        return table.select(names).to_pandas()


def _equals(name: str, value: FilterValue) -> pc.Expression:
    if value is None:
        return pc.field(name).is_null()
    if isinstance(value, str | int | float | bool):
        return pc.field(name) == value
    values = list(value)
    term = pc.field(name).isin([v for v in values if v is not None])
    if any(v is None for v in values):
        term = term | pc.field(name).is_null()
    return term


def _split_partitions(table: pa.Table) -> list[tuple[tuple[str, str], pa.Table]]:
    """The table cut by (dataset, backbone), partition columns dropped (they live in the path)."""
    keys = table.select(list(PARTITION_COLUMNS)).group_by(list(PARTITION_COLUMNS)).aggregate([])
    out = []
    for dataset, backbone in zip(
        keys.column("dataset").to_pylist(), keys.column("backbone").to_pylist(), strict=True
    ):
        check_name("dataset", dataset)
        check_name("backbone", backbone)
        mask = pc.and_(
            pc.equal(table.column("dataset"), dataset), pc.equal(table.column("backbone"), backbone)
        )
        part = table.filter(mask).drop_columns(list(PARTITION_COLUMNS))
        out.append(((dataset, backbone), part))
    return sorted(out, key=lambda item: item[0])
