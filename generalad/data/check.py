"""`check_dataset`: what a dataset root holds, as a small text table, or exactly what is missing.

The CLI exposes it as `generalad datasets check NAME PATH [--category CAT]`.

Example output:
    mvtec_ad:grid at /data/mvtec_ad (kind industrial, protocol mvtec_ad_official, masks yes)
    split  class  defect_type          images  masks
    test   grid   bent                      3      3
    ...
    total                                  39     11
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from generalad.data.base import DatasetAdapter, Record
from generalad.data.registry import get_dataset, get_dataset_class
from generalad.errors import ConfigError, DatasetError

__all__ = ["DatasetCheck", "inspect_dataset", "check_dataset", "count_table"]

_MAX_LISTED_FAILURES = 20


@dataclass(frozen=True)
class DatasetCheck:
    """Outcome of checking one dataset root: `ok` is False when anything is missing or undecodable."""

    ok: bool
    text: str


def count_table(manifest: pd.DataFrame, *, industrial: bool) -> str:
    """Image counts per split and class (and defect type with mask counts for industrial data), with a total."""
    keys = ["split", "class_name", "defect_type"] if industrial else ["split", "class_name"]
    frame = manifest.assign(masks=manifest["mask_paths"].map(lambda m: int(len(m) > 0)))
    grouped = (
        frame.groupby(keys, sort=True).agg(images=("image_id", "size"), masks=("masks", "sum")).reset_index()
    )
    headers = (
        ["split", "class", "defect_type", "images", "masks"] if industrial else ["split", "class", "images"]
    )
    columns = [*keys, "images", "masks"] if industrial else [*keys, "images"]
    rows = [[str(v) for v in row] for row in grouped[columns].itertuples(index=False)]
    total = ["total"] + [""] * (len(keys) - 1) + [str(len(manifest))]
    if industrial:
        total.append(str(int(frame["masks"].sum())))
    rows.append(total)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    numeric = {"images", "masks"}

    def fmt(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if h in numeric else c.ljust(w) for c, w, h in zip(cells, widths, headers, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([fmt(headers), *(fmt(r) for r in rows)])


def _decode_failures(adapter: DatasetAdapter, manifest: pd.DataFrame) -> list[str]:
    failures = []
    for row in manifest.itertuples(index=False):
        record = Record(
            row.image_id,
            row.rel_path,
            row.split,
            row.class_name,
            int(row.label),
            row.defect_type,
            tuple(row.mask_paths),
        )
        try:
            image = adapter.load_image(record)
            if record.mask_paths:
                adapter.load_mask(record, image.size)
        except DatasetError as exc:
            failures.append(str(exc))
    return failures


def _check_one(adapter: DatasetAdapter, decode: bool) -> DatasetCheck:
    manifest = adapter.manifest()
    industrial = adapter.requires_category or adapter.kind in ("industrial", "logical")
    masks = "yes" if adapter.has_masks else "no"
    lines = [
        f"{adapter.describe()} at {adapter.root} (kind {adapter.kind}, protocol {adapter.protocol}, masks {masks})",
        count_table(manifest, industrial=industrial),
    ]
    ok = True
    if decode:
        failures = _decode_failures(adapter, manifest)
        ok = not failures
        lines.append(f"decoded {len(manifest)} images: {len(failures)} failed")
        lines.extend(f"  {f}" for f in failures[:_MAX_LISTED_FAILURES])
        if len(failures) > _MAX_LISTED_FAILURES:
            lines.append(f"  ... and {len(failures) - _MAX_LISTED_FAILURES} more")
    return DatasetCheck(ok, "\n".join(lines))


def inspect_dataset(
    name: str, root: str | Path, category: str | None = None, *, decode: bool = False, **options: Any
) -> DatasetCheck:
    """Check a dataset root; for a dataset with categories and no `category`, check every category found.

    Args:
        name: registered dataset name.
        root: the dataset root.
        category: one category of an industrial dataset (default: all present).
        decode: also decode every image and mask (slow on large datasets), listing the files that fail.
        **options: adapter options (e.g. `split="listing_80_20"` for VisA).

    Returns:
        `DatasetCheck(ok, text)`: the count table(s), or "ERROR: " and the message naming what is missing.
    """
    try:
        cls = get_dataset_class(name)
        if not (cls.requires_category and category is None):
            return _check_one(get_dataset(name, root, category, **options), decode)
        if not Path(root).expanduser().is_dir():
            get_dataset(name, root, None, **options)  # raises the missing-root message
        categories = cls(Path(root).expanduser(), None).categories()
    except (DatasetError, ConfigError) as exc:
        return DatasetCheck(False, f"ERROR: {exc}")
    if not categories:
        known = ", ".join(getattr(cls, "known_categories", ()))
        return DatasetCheck(
            False, f"ERROR: no {name} category folder under {root} (known categories: {known})"
        )
    results = [inspect_dataset(name, root, c, decode=decode, **options) for c in categories]
    return DatasetCheck(all(r.ok for r in results), "\n\n".join(r.text for r in results))


def check_dataset(name: str, root: str | Path, category: str | None = None, **options: Any) -> str:
    """`inspect_dataset(...).text`: a count table per split and class (and defect type), or the error message.

    Use `inspect_dataset` when the caller needs to know whether the check passed (e.g. for an exit code).
    """
    return inspect_dataset(name, root, category, **options).text
