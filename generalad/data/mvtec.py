"""MVTec-AD and MPDD: one category per store, in the official MVTec layout.

Layout per category: `<cat>/train/good/*.png`, `<cat>/test/<type>/*.png` (`good` = normal, every other folder a
defect type) and masks `<cat>/ground_truth/<type>/<stem>_mask.png` for every anomalous test image. Protocol:
train = `train/good`; test = all of `test/`, labels from the folder (good = 0, else 1). The category is the only
normal class. `IndustrialDataset` is the shared base (also used by MVTec-LOCO and the synthetic quickstart).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pandas as pd

from generalad.data.base import DatasetAdapter, OneClassSplit, Record
from generalad.data.layout import list_image_files, list_subdirs, rel_posix, require_dir
from generalad.data.oneclass import FileImagesMixin, labelled_split
from generalad.data.registry import register
from generalad.errors import DatasetError

__all__ = ["IndustrialDataset", "MVTecADDataset", "MPDDDataset", "MVTEC_AD_CATEGORIES", "MPDD_CATEGORIES"]

MVTEC_AD_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")

NORMAL_TYPE = "good"


class IndustrialDataset(FileImagesMixin, DatasetAdapter):
    """A dataset of categories in MVTec layout; one category per adapter, labels from the test folders.

    Subclasses set `known_categories` and, when their masks are stored differently, override `mask_paths`.
    """

    kind = "industrial"
    has_masks = True
    requires_category = True
    protocol_name = "official"
    known_categories: ClassVar[tuple[str, ...]] = ()

    def categories(self) -> list[str]:
        """The known categories that have a folder under the root."""
        return [c for c in self.known_categories if (self.root / c).is_dir()]

    def require_category(self) -> str:
        """The adapter's category, checked to be known and present.

        Raises:
            DatasetError: when no category was given, or it is unknown or absent (listing the available ones).
        """
        available = self.categories()
        listed = ", ".join(available) if available else f"none found under {self.root}"
        if self.category is None:
            raise DatasetError(
                f"{self.name} needs a category (one feature store per category); available: {listed}"
            )
        if self.category not in self.known_categories:
            raise DatasetError(
                f"{self.category!r} is not a {self.name} category; known: {', '.join(self.known_categories)}"
            )
        require_dir(
            self.root / self.category, f"{self.name} category {self.category!r} (available: {listed})"
        )
        return self.category

    def normal_classes(self) -> list[str]:
        return [self.category] if self.category is not None else self.categories()

    def mask_paths(self, category_dir: Path, defect_type: str, image: Path) -> tuple[str, ...]:
        """Mask files (relative to the root) of an anomalous test image: `ground_truth/<type>/<stem>_mask.png`.

        Raises:
            DatasetError: naming the image and the expected mask path when it is missing.
        """
        mask = category_dir / "ground_truth" / defect_type / f"{image.stem}_mask.png"
        if not mask.is_file():
            raise DatasetError(f"anomalous test image {image} has no mask: expected {mask}")
        return (rel_posix(mask, self.root),)

    def records(self) -> list[Record]:
        category = self.require_category()
        category_dir = self.root / category
        records = []
        for path in list_image_files(category_dir / "train" / NORMAL_TYPE):
            rel = rel_posix(path, self.root)
            records.append(Record(rel, rel, "train", category, 0, NORMAL_TYPE))
        test_dir = require_dir(category_dir / "test", f"{self.name} {category} test images")
        type_dirs = list_subdirs(test_dir)
        if not type_dirs:
            raise DatasetError(f"test folder {test_dir} has no <type> folders (good, <defect>, ...)")
        for type_dir in type_dirs:
            defect = type_dir.name
            for path in list_image_files(type_dir):
                rel = rel_posix(path, self.root)
                if defect == NORMAL_TYPE:
                    records.append(Record(rel, rel, "test", category, 0, NORMAL_TYPE))
                else:
                    masks = self.mask_paths(category_dir, defect, path)
                    records.append(Record(rel, rel, "test", category, 1, defect, masks))
        return records

    def one_class_split(self, manifest: pd.DataFrame, normal_class: str) -> OneClassSplit:
        return labelled_split(manifest, normal_class, self.normal_classes(), what=self.describe())


@register
class MVTecADDataset(IndustrialDataset):
    """MVTec AD: 15 industrial categories with pixel-precise masks."""

    name = "mvtec_ad"
    how_to_get = "https://www.mvtec.com/company/research/datasets/mvtec-ad (mvtec_anomaly_detection.tar.xz)"
    layout = "<category>/{train/good,test/<type>,ground_truth/<type>/<stem>_mask.png}"
    known_categories = MVTEC_AD_CATEGORIES


@register
class MPDDDataset(IndustrialDataset):
    """MPDD (Metal Parts Defect Detection): 6 categories in MVTec layout."""

    name = "mpdd"
    how_to_get = "https://github.com/stepanje/MPDD (download link in its README)"
    layout = "<category>/{train/good,test/<type>,ground_truth/<type>/<stem>_mask.png}"
    known_categories = MPDD_CATEGORIES
