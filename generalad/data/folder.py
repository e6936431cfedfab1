"""Users' own images: a folder layout like MVTec's, or explicit folders anywhere.

Layout under the root:
    train/good/*            normal training images
    test/good/*             normal test images (optional)
    test/<anything else>/*  anomalous test images; the folder name is the defect type
    ground_truth/<type>/*   optional masks, named like their image (`scratch/007.png` for `test/scratch/007.jpg`):
                            the same file name, the same stem with any image extension, or `<stem>_mask.*`

Or `FolderDataset.from_dirs(normal, test_normal=..., test_anomalous=..., masks=...)` for folders anywhere; record
paths are then relative to the folders' common parent. Images may have any size and any common format
(png, jpg, jpeg, bmp, tif, tiff, webp). The only normal class is "good". Masks are optional, but all or nothing:
when a mask folder exists (`ground_truth/` with content, or `masks=` given), every anomalous image needs a mask
and `has_masks` is True.

Example:
    >>> ds = FolderDataset.from_dirs("shots/ok", test_normal="shots/ok_test", test_anomalous=["shots/dent"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from generalad.data.base import DatasetAdapter, OneClassSplit, Record
from generalad.data.images import is_image_file
from generalad.data.layout import is_ignored, list_image_files, list_subdirs, rel_posix, require_dir
from generalad.data.oneclass import FileImagesMixin, labelled_split
from generalad.data.registry import register
from generalad.errors import DatasetError

__all__ = ["FolderDataset"]

NORMAL_CLASS = "good"
PathLike = str | os.PathLike[str]


def _as_list(value: PathLike | Sequence[PathLike] | None) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        return [Path(value)]
    return [Path(v) for v in value]


def _mask_files(folder: Path) -> list[Path]:
    """Image files directly in `folder` (sub-folders, e.g. per defect type, and hidden files are skipped)."""
    if not folder.is_dir():
        return []
    files = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if is_ignored(path.name) or path.is_dir():
            continue
        if not is_image_file(path):
            raise DatasetError(f"unexpected non-image file {path} in mask folder {folder}")
        files.append(path)
    return files


class _MaskIndex:
    """Finds the mask of an image among the image files of some folders, by file name, stem or `<stem>_mask`."""

    def __init__(self, folders: Sequence[Path]) -> None:
        self._by_key: list[dict[str, list[Path]]] = []
        for folder in folders:
            keys: dict[str, list[Path]] = {}
            for path in _mask_files(folder):
                for key in {path.name, path.stem, path.stem.removesuffix("_mask")}:
                    keys.setdefault(key, []).append(path)
            self._by_key.append(keys)

    def find(self, image: Path) -> Path | None:
        for keys in self._by_key:
            for key in (image.name, image.stem):
                found = keys.get(key, [])
                exact = [p for p in found if p.name == image.name]
                if exact:
                    return exact[0]
                if len(found) > 1:
                    names = ", ".join(str(p) for p in found)
                    raise DatasetError(f"several mask files could belong to image {image}: {names}")
                if found:
                    return found[0]
        return None


@register
class FolderDataset(FileImagesMixin, DatasetAdapter):
    """Your own normal and anomalous images (see the module docstring for the layout)."""

    name = "folder"
    kind = "industrial"
    protocol_name = "folders"
    how_to_get = (
        "your own images: put them in train/good, test/good, test/<defect> (masks in ground_truth/<defect>)"
    )
    layout = "train/good/*, test/good/*, test/<defect>/*, optional ground_truth/<defect>/<image name>"

    def __init__(
        self,
        root: PathLike,
        category: str | None = None,
        *,
        normal: PathLike | None = None,
        test_normal: PathLike | None = None,
        test_anomalous: PathLike | Sequence[PathLike] | None = None,
        masks: PathLike | None = None,
    ) -> None:
        if category is not None:
            raise DatasetError(f"folder datasets have no categories; got category {category!r}")
        explicit = {
            "normal": normal,
            "test_normal": test_normal,
            "test_anomalous": test_anomalous,
            "masks": masks,
        }
        super().__init__(root, None, **{k: v for k, v in explicit.items() if v is not None})
        if normal is None and any(v is not None for v in explicit.values()):
            raise DatasetError("explicit folders need the `normal` folder of training images")
        self._normal = Path(normal) if normal is not None else None
        self._test_normal = Path(test_normal) if test_normal is not None else None
        self._test_anomalous = _as_list(test_anomalous)
        self._masks = Path(masks) if masks is not None else None
        # masks are all or nothing: given a mask folder, every anomalous image needs a mask
        if self._normal is not None:
            self.has_masks = self._masks is not None  # type: ignore[misc]
        else:
            gt = self.root / "ground_truth"
            self.has_masks = gt.is_dir() and any(not is_ignored(p.name) for p in gt.iterdir())  # type: ignore[misc]

    @classmethod
    def from_dirs(
        cls,
        normal: PathLike,
        test_normal: PathLike | None = None,
        test_anomalous: PathLike | Sequence[PathLike] | None = None,
        masks: PathLike | None = None,
    ) -> FolderDataset:
        """A dataset of explicit folders anywhere; the root is the folders' common parent.

        Args:
            normal: folder of normal training images.
            test_normal: folder of normal test images.
            test_anomalous: folder(s) of anomalous test images; each folder's name is the defect type.
            masks: folder of masks named like their image (directly in it, or in `<defect type>/`).

        Raises:
            DatasetError: when a folder is missing or two arguments name the same folder.
        """
        folders = [Path(normal), *_as_list(test_normal), *_as_list(test_anomalous), *_as_list(masks)]
        resolved = [f.expanduser().resolve() for f in folders]
        for folder in resolved:
            require_dir(folder, "image folder")
        if len(set(resolved)) != len(resolved):
            raise DatasetError(f"the same folder is given twice: {', '.join(str(f) for f in folders)}")
        root = Path(os.path.commonpath([f.parent for f in resolved]))
        anomalous = [f.expanduser().resolve() for f in _as_list(test_anomalous)]
        return cls(
            root,
            normal=Path(normal).expanduser().resolve(),
            test_normal=Path(test_normal).expanduser().resolve() if test_normal is not None else None,
            test_anomalous=anomalous or None,
            masks=Path(masks).expanduser().resolve() if masks is not None else None,
        )

    def normal_classes(self) -> list[str]:
        return [NORMAL_CLASS]

    def _sources(self) -> tuple[Path, Path | None, list[Path], list[Path]]:
        """(normal train folder, normal test folder, anomalous folders, mask folders by anomalous folder)."""
        if self._normal is not None:
            for folder in (self._normal, self._test_normal, *self._test_anomalous, self._masks):
                if folder is not None and not folder.resolve().is_relative_to(self.root.resolve()):
                    raise DatasetError(f"folder {folder} is not under the dataset root {self.root}")
            return self._normal, self._test_normal, self._test_anomalous, [self._masks] if self._masks else []
        require_dir(self.root / "train" / NORMAL_CLASS, "normal training images (train/good)")
        test_dir = require_dir(self.root / "test", "test images (test/good, test/<defect>)")
        types = [d for d in list_subdirs(test_dir) if d.name != NORMAL_CLASS]
        test_normal = test_dir / NORMAL_CLASS
        return self.root / "train" / NORMAL_CLASS, test_normal if test_normal.is_dir() else None, types, []

    def _mask_folders(self, defect_type: str, explicit_masks: list[Path]) -> list[Path]:
        if explicit_masks:
            return [explicit_masks[0] / defect_type, explicit_masks[0]]
        return [self.root / "ground_truth" / defect_type]

    def records(self) -> list[Record]:
        normal, test_normal, anomalous_dirs, explicit_masks = self._sources()
        records: list[Record] = []
        for path in list_image_files(normal):
            rel = rel_posix(path, self.root)
            records.append(Record(rel, rel, "train", NORMAL_CLASS, 0, NORMAL_CLASS))
        if test_normal is not None:
            for path in list_image_files(test_normal):
                rel = rel_posix(path, self.root)
                records.append(Record(rel, rel, "test", NORMAL_CLASS, 0, NORMAL_CLASS))
        for folder in anomalous_dirs:
            defect = folder.name
            mask_folders = self._mask_folders(defect, explicit_masks)
            index = _MaskIndex(mask_folders) if self.has_masks else None
            for path in list_image_files(folder):
                rel = rel_posix(path, self.root)
                masks: tuple[str, ...] = ()
                if index is not None:
                    mask = index.find(path)
                    if mask is None:
                        raise DatasetError(
                            f"anomalous test image {path} has no mask: expected a file named {path.name} "
                            f"(or {path.stem}.<ext>, {path.stem}_mask.<ext>) in "
                            f"{' or '.join(str(f) for f in mask_folders)} (masks are all or nothing)"
                        )
                    masks = (rel_posix(mask, self.root),)
                records.append(Record(rel, rel, "test", NORMAL_CLASS, 1, defect, masks))
        return records

    def one_class_split(self, manifest: pd.DataFrame, normal_class: str) -> OneClassSplit:
        return labelled_split(manifest, normal_class, self.normal_classes(), what=self.describe())
