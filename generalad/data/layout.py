"""Listing and validating dataset folders: deterministic, and every error names the offending path.

Listings are sorted by file name (code-point order), never `os.listdir` order. Hidden entries (names starting
with ".", e.g. `.DS_Store`) and the operating systems' thumbnail files (`Thumbs.db`, `desktop.ini`) are ignored;
any other file that is not an image (by extension, see `generalad.data.images.IMAGE_EXTENSIONS`) in an image folder
is an error, and so is a sub-folder or an empty image folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from generalad.data.base import LABEL_BY_PROTOCOL, Record, check_name  # noqa: F401 (re-exported)
from generalad.data.images import IMAGE_EXTENSIONS, is_image_file
from generalad.errors import DatasetError

__all__ = [
    "check_name",
    "is_ignored",
    "rel_posix",
    "rel_inside",
    "require_dir",
    "require_file",
    "find_file",
    "list_subdirs",
    "list_image_files",
    "class_folder_records",
]

_IGNORED_NAMES = frozenset({"Thumbs.db", "desktop.ini"})
_EXTENSIONS_TEXT = ", ".join(sorted(IMAGE_EXTENSIONS))


def is_ignored(name: str) -> bool:
    """Hidden files and folders and OS thumbnail caches, which listings skip silently."""
    return name.startswith(".") or name in _IGNORED_NAMES


def rel_posix(path: Path, root: Path) -> str:
    """`path` relative to `root` with "/" separators (the form stored in manifests)."""
    return Path(os.path.relpath(path, root)).as_posix()


def rel_inside(path: Path, root: Path, what: str) -> str:
    """`rel_posix(path, root)` for a path built from a listing file's entry; DatasetError naming `what` when
    the entry (absolute, or with `..`) leads outside the dataset root."""
    rel = rel_posix(path, root)
    if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
        raise DatasetError(f"{what}: {path} lies outside the dataset root {root}")
    return rel


def require_dir(path: Path, what: str) -> Path:
    """`path` if it is a folder; otherwise a DatasetError naming it and what it should hold."""
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "is missing"
        raise DatasetError(f"{what}: folder {path} {state}")
    return path


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file; otherwise a DatasetError naming it and what it should hold."""
    if not path.is_file():
        state = "is not a file" if path.exists() else "is missing"
        raise DatasetError(f"{what}: file {path} {state}")
    return path


def find_file(candidates: Sequence[Path], what: str) -> Path:
    """The first existing file of `candidates`; otherwise a DatasetError naming every place looked at."""
    for path in candidates:
        if path.is_file():
            return path
    places = ", ".join(str(p) for p in candidates)
    raise DatasetError(f"{what}: none of these files exists: {places}")


def _visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as it:
        entries = [e for e in it if not is_ignored(e.name)]
    return sorted(entries, key=lambda e: e.name)


def list_subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders of `folder`, sorted by name (files are skipped)."""
    require_dir(folder, "expected a folder")
    return [Path(e.path) for e in _visible_entries(folder) if e.is_dir()]


def list_image_files(folder: Path, *, allow_empty: bool = False) -> list[Path]:
    """Image files directly inside `folder`, sorted by name.

    Args:
        folder: an image folder (a class folder, `train/good`, ...).
        allow_empty: return [] instead of raising when the folder holds no image.

    Raises:
        DatasetError: naming the folder when it is missing or empty, or naming the first non-image file or
            sub-folder found in it.
    """
    require_dir(folder, "expected an image folder")
    images: list[Path] = []
    for entry in _visible_entries(folder):
        path = Path(entry.path)
        if entry.is_dir():
            raise DatasetError(f"unexpected folder {path} inside image folder {folder}")
        if not is_image_file(entry.name):
            raise DatasetError(
                f"unexpected non-image file {path} in image folder {folder} "
                f"(image extensions: {_EXTENSIONS_TEXT}; hidden files are ignored)"
            )
        images.append(path)
    if not images and not allow_empty:
        raise DatasetError(f"image folder {folder} is empty (no {_EXTENSIONS_TEXT} files)")
    return images


def class_folder_records(
    root: Path,
    split_dirs: Mapping[str, Path],
    folder_class: Callable[[str, Path], str],
    required_classes: Sequence[str],
) -> list[Record]:
    """Records of a `<split>/<class>/<image>` layout, labels left to the one-class protocol.

    Args:
        root: the dataset root (record paths are relative to it).
        split_dirs: "train"/"test" -> the folder holding that split's class folders.
        folder_class: maps a class-folder name (and its path, for messages) to the class name; raises
            DatasetError for a folder that is no known class.
        required_classes: classes every split must have; a missing one is an error naming the split folder.

    Raises:
        DatasetError: naming the missing split folder, unknown or empty class folder, stray file, or the
            classes a split lacks.
    """
    records: list[Record] = []
    for split, split_dir in split_dirs.items():
        require_dir(split_dir, f"{split} split (class folders)")
        seen: set[str] = set()
        for folder in list_subdirs(split_dir):
            class_name = folder_class(folder.name, folder)
            seen.add(class_name)
            for path in list_image_files(folder):
                rel = rel_posix(path, root)
                records.append(Record(rel, rel, split, class_name, LABEL_BY_PROTOCOL))  # type: ignore[arg-type]
        missing = [c for c in required_classes if c not in seen]
        if missing:
            raise DatasetError(f"{split} folder {split_dir} has no class folder for: {', '.join(missing)}")
    return records
