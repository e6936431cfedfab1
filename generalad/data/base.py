"""The dataset-adapter interface and the manifest every adapter produces.

An adapter turns a dataset root in its official on-disk layout into a deterministic list of `Record`s
(the manifest), decodes single images, and knows the dataset's one-class protocol (docs/method.md section 6).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import ClassVar, Literal

import pandas as pd
from PIL import Image

from generalad.data.images import load_mask as _load_mask_files
from generalad.errors import DatasetError
from generalad.method.split import OneClassSplit  # re-exported: adapters build splits

__all__ = [
    "Record",
    "DatasetAdapter",
    "DatasetKind",
    "OneClassSplit",
    "manifest_frame",
    "manifest_record",
    "MANIFEST_COLUMNS",
    "LABEL_BY_PROTOCOL",
]

DatasetKind = Literal["semantic", "near_distribution", "industrial", "logical", "custom"]

# label value for datasets whose anomaly label depends on which class is the normal one (semantic datasets)
LABEL_BY_PROTOCOL = -1


@dataclass(frozen=True)
class Record:
    """One image of a dataset.

    image_id: stable identifier derived from the relative path (array-backed datasets append `#<index>`).
    rel_path: path of the file holding the image, relative to the dataset root (posix separators).
    split: "train" or "test".
    class_name: the image's class (semantic datasets) or the category (industrial datasets).
    label: 0 normal, 1 anomalous, -1 when only the one-class protocol defines it (semantic datasets).
    defect_type: "good" for normal industrial images, the defect folder name otherwise, "" for semantic data.
    mask_paths: ground-truth mask files relative to the root; several are united (MVTec-LOCO).
    """

    image_id: str
    rel_path: str
    split: Literal["train", "test"]
    class_name: str
    label: int
    defect_type: str = ""
    mask_paths: tuple[str, ...] = field(default_factory=tuple)


MANIFEST_COLUMNS = ["image_id", "rel_path", "split", "class_name", "label", "defect_type", "mask_paths"]


def manifest_record(row) -> Record:
    """The `Record` of one manifest row (``manifest.itertuples(index=False)`` or ``manifest.iloc[i]``)."""
    return Record(
        image_id=row.image_id,
        rel_path=row.rel_path,
        split=row.split,
        class_name=row.class_name,
        label=int(row.label),
        defect_type=row.defect_type,
        mask_paths=tuple(row.mask_paths),
    )


def manifest_frame(records: list[Record]) -> pd.DataFrame:
    """Records as a DataFrame in manifest order (sorted by split then image_id), index 0..n-1."""
    rows = [asdict(r) | {"mask_paths": list(r.mask_paths)} for r in records]
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    frame = frame.sort_values(["split", "image_id"], kind="stable").reset_index(drop=True)
    if frame["image_id"].duplicated().any():
        dup = frame.loc[frame["image_id"].duplicated(), "image_id"].iloc[0]
        raise DatasetError(f"duplicate image_id {dup!r} in manifest")
    frame["label"] = frame["label"].astype("int8")
    return frame


def check_name(value: object, what: str) -> str:
    """`value` as a plain folder name: not empty, no path separator, not `.`/`..`, not absolute.

    Args:
        value: a dataset or category name given by a user.
        what: what the name is ("dataset name", "category"), for the message.

    Raises:
        DatasetError: when the name could escape the dataset root.
    """
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{what} must be a non-empty string, got {value!r}")
    if (
        value in (".", "..")
        or "/" in value
        or "\\" in value
        or "\x00" in value
        or PurePosixPath(value).is_absolute()
        or PureWindowsPath(value).is_absolute()
        or PureWindowsPath(value).drive
    ):
        raise DatasetError(
            f"{what} {value!r} is not a plain name: path separators, '..' and absolute paths are not allowed"
        )
    return value


class DatasetAdapter(ABC):
    """One dataset in its official layout. Subclasses register themselves in `generalad.data.registry`."""

    name: ClassVar[str]
    kind: ClassVar[DatasetKind]
    has_masks: ClassVar[bool] = False
    # how to obtain the data, printed when the root is missing
    how_to_get: ClassVar[str] = ""
    # one line describing the expected on-disk layout, printed when the root is missing
    layout: ClassVar[str] = ""
    # a store is per category (industrial datasets): `category` must be given
    requires_category: ClassVar[bool] = False
    # second half of `protocol`; an adapter whose options change the split overrides `protocol` itself
    protocol_name: ClassVar[str] = "one_class"

    def __init__(self, root: str | Path, category: str | None = None, **options) -> None:
        if category is not None:
            check_name(category, "category")  # a category is a folder under the root: it must not escape it
        self.root = Path(root)
        self.category = category
        self.options = options

    @abstractmethod
    def records(self) -> list[Record]:
        """All images of the dataset (or of the category), validated; raises DatasetError naming what is wrong."""

    @abstractmethod
    def load_image(self, record: Record) -> Image.Image:
        """The decoded image (fully loaded, mode RGB or L); raises ImageError naming the file."""

    @abstractmethod
    def normal_classes(self) -> list[str]:
        """Classes that can serve as the normal class of a one-class run."""

    @abstractmethod
    def one_class_split(self, manifest: pd.DataFrame, normal_class: str) -> OneClassSplit:
        """Train/test rows and test labels of the protocol with `normal_class` as normal (docs/method.md section 6)."""

    def categories(self) -> list[str]:
        """Categories available under the root (industrial datasets); [] when the dataset has none."""
        return []

    def manifest(self) -> pd.DataFrame:
        return manifest_frame(self.records())

    def describe(self) -> str:
        return f"{self.name}:{self.category}" if self.category else self.name

    @property
    def protocol(self) -> str:
        """Name of the split protocol `one_class_split` applies, recorded with every result (e.g. "visa_1cls_csv")."""
        return f"{self.name}_{self.protocol_name}"

    def image_path(self, record: Record) -> Path:
        """Absolute path of the file holding the record's image (a batch file for array-backed datasets)."""
        return self.root / record.rel_path

    def load_mask(self, record: Record, expected_size: tuple[int, int]) -> Image.Image:
        """The record's ground truth as a 0/255 mode-L image of `expected_size` (all 0 without mask files).

        Raises:
            ImageError: naming the mask file, when it cannot be decoded or has another size.
        """
        return _load_mask_files([self.root / p for p in record.mask_paths], expected_size)
