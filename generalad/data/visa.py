"""VisA (Visual Anomaly), 12 categories, with the official split by default.

Layout: `<cat>/Data/Images/{Normal,Anomaly}/*.JPG`, `<cat>/Data/Masks/Anomaly/<stem>.png` and the official split
file `split_csv/1cls.csv` (columns object, split, label, image, mask; paths relative to the root; label
"normal"/"anomaly"). Masks hold small non-zero object ids; `load_mask` makes any non-zero pixel foreground.

Splits (option `split`, the name is the adapter's `protocol`):
- "1cls_csv" (default, protocol "visa_1cls_csv"): the official `split_csv/1cls.csv`.
- "listing_80_20" (protocol "visa_listing_80_20"): the reference implementation's split, kept for comparison
  only: train = the first 80% (`int(0.8 * n)`) of `Data/Images/Normal` in sorted listing order, test = the
  remaining normal images plus every image of `Data/Images/Anomaly`.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

from generalad.data.base import Record
from generalad.data.layout import list_image_files, rel_posix, require_file
from generalad.data.mvtec import NORMAL_TYPE, IndustrialDataset
from generalad.data.registry import register
from generalad.errors import ConfigError, DatasetError

__all__ = ["VisaDataset", "VISA_CATEGORIES", "VisaSplit"]

VISA_CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
VisaSplit = Literal["1cls_csv", "listing_80_20"]
ANOMALY_TYPE = "anomaly"
_CSV_COLUMNS = ("object", "split", "label", "image", "mask")
_TRAIN_FRACTION = 0.8


@register
class VisaDataset(IndustrialDataset):
    """VisA; option `split` chooses the official CSV split (default) or the reference's 80/20 listing split."""

    name = "visa"
    how_to_get = (
        "https://github.com/amazon-science/spot-diff (VisA_20220922.tar, split_csv/1cls.csv in the repo)"
    )
    layout = "<category>/Data/{Images/{Normal,Anomaly},Masks/Anomaly} and split_csv/1cls.csv"
    known_categories = VISA_CATEGORIES

    def __init__(
        self, root: str | Path, category: str | None = None, *, split: VisaSplit = "1cls_csv", **options: Any
    ) -> None:
        if options:
            raise ConfigError(f"unknown VisA option(s) {sorted(options)}; VisA takes only split=")
        if split not in get_args(VisaSplit):
            raise ConfigError(
                f"VisA split {split!r} is unknown; choose one of {', '.join(get_args(VisaSplit))}"
            )
        # only a non-default split is an option: the official split's stores keep their key and protocol label
        super().__init__(root, category, **({} if split == "1cls_csv" else {"split": split}))
        self.split: VisaSplit = split

    @property
    def protocol(self) -> str:
        return f"visa_{self.split}"

    def records(self) -> list[Record]:
        category = self.require_category()
        if self.split == "listing_80_20":
            return self._listing_records(category)
        return self._csv_records(category)

    def _relative(self, value: str, csv_path: Path, number: int) -> Path:
        rel = PurePosixPath(value.strip())
        if not value.strip() or rel.is_absolute() or ".." in rel.parts:
            raise DatasetError(f"{csv_path} line {number}: path {value!r} is not relative to the root")
        return self.root / rel

    def _csv_records(self, category: str) -> list[Record]:
        csv_path = self.root / "split_csv" / "1cls.csv"
        if not csv_path.is_file():
            raise DatasetError(
                f"VisA split file {csv_path} is missing (it ships in the VisA archive; "
                f"split='listing_80_20' gives the reference's non-official split instead)"
            )
        records: list[Record] = []
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in _CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{csv_path} lacks the column(s) {', '.join(missing)}")
            for number, row in enumerate(reader, start=2):
                if row["object"] != category:
                    continue
                split, label = row["split"].strip(), row["label"].strip()
                if split not in ("train", "test") or label not in ("normal", "anomaly"):
                    raise DatasetError(f"{csv_path} line {number}: split {split!r} / label {label!r} unknown")
                image = self._relative(row["image"], csv_path, number)
                if not image.is_file():
                    raise DatasetError(f"image {image} listed in {csv_path} line {number} is missing")
                rel = rel_posix(image, self.root)
                if label == "normal":
                    records.append(Record(rel, rel, split, category, 0, NORMAL_TYPE))  # type: ignore[arg-type]
                    continue
                if split == "train":
                    raise DatasetError(f"{csv_path} line {number}: an anomalous image in the train split")
                mask = self._relative(row["mask"] or "", csv_path, number)
                if not mask.is_file():
                    raise DatasetError(f"anomalous test image {image} has no mask: expected {mask}")
                records.append(
                    Record(rel, rel, "test", category, 1, ANOMALY_TYPE, (rel_posix(mask, self.root),))
                )
        if not records:
            raise DatasetError(f"{csv_path} has no row for object {category!r}")
        return records

    def _listing_records(self, category: str) -> list[Record]:
        data = self.root / category / "Data"
        normals = list_image_files(data / "Images" / "Normal")
        n_train = int(_TRAIN_FRACTION * len(normals))
        records: list[Record] = []
        for position, path in enumerate(normals):
            rel = rel_posix(path, self.root)
            split = "train" if position < n_train else "test"
            records.append(Record(rel, rel, split, category, 0, NORMAL_TYPE))  # type: ignore[arg-type]
        for path in list_image_files(data / "Images" / "Anomaly"):
            mask = require_file(
                data / "Masks" / "Anomaly" / f"{path.stem}.png", f"mask of anomalous image {path}"
            )
            rel = rel_posix(path, self.root)
            records.append(Record(rel, rel, "test", category, 1, ANOMALY_TYPE, (rel_posix(mask, self.root),)))
        return records
