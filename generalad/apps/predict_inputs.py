"""The inputs of prediction: files and folders expanded into the images to score, with unique output names.

Images of mixed sizes and formats are fine: each is scored at the model's resolution and drawn at its own size.

Example:
    >>> inputs, skipped = collect_images(["photos/"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from generalad.data.images import is_image_file
from generalad.data.layout import is_ignored
from generalad.errors import DatasetError

__all__ = ["InputImage", "collect_images", "output_names"]


@dataclass(frozen=True)
class InputImage:
    """One image to score: its file and a relative name (unique within a call) for its outputs."""

    path: Path
    name: str  # posix, e.g. "broken/000.png" (the argument folder's name, then the path inside it)


def _walk_images(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` recursively (sorted, hidden entries skipped) and the count of other files."""
    images: list[Path] = []
    others = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        for filename in sorted(filenames):
            if is_ignored(filename):
                continue
            if is_image_file(filename):
                images.append(Path(dirpath) / filename)
            else:
                others += 1
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix()), others


def collect_images(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[InputImage], int]:
    """Expand files and folders (recursively) into the images to score, in argument order then sorted.

    Non-image files inside folders are skipped (their count is returned); a file argument must be an image. The
    same file given twice is scored once.

    Returns:
        The images and the number of skipped non-image files.

    Raises:
        DatasetError: a path is missing, a file argument is not an image, a folder holds no image, or nothing
            was given.
    """
    if not paths:
        raise DatasetError("no images given: pass image files or folders")
    found: list[tuple[Path, str]] = []
    skipped = 0
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images, others = _walk_images(path)
            if not images:
                raise DatasetError(f"folder {path} holds no image files (searched recursively)")
            skipped += others
            label = path.resolve().name or "images"
            found += [(image, f"{label}/{image.relative_to(path).as_posix()}") for image in images]
        elif path.is_file():
            if not is_image_file(path):
                raise DatasetError(f"{path} is not an image file (by its extension)")
            found.append((path, path.name))
        else:
            raise DatasetError(f"{path} does not exist")
    seen: set[Path] = set()
    unique: list[tuple[Path, str]] = []
    for path, name in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((path, name))
    names = _unique_names([name for _, name in unique])
    return [InputImage(path, name) for (path, _), name in zip(unique, names, strict=True)], skipped


def _unique_names(names: Sequence[str]) -> list[str]:
    """Names made unique by a ``-2``, ``-3`` ... suffix on the first path part where two would collide."""
    counts = Counter(names)
    used: set[str] = set()
    out = []
    for name in names:
        candidate = name
        if counts[name] > 1 or candidate in used:
            head, _, tail = name.partition("/")
            index = 2
            while candidate in used:
                candidate = f"{head}-{index}/{tail}" if tail else f"{head}-{index}"
                index += 1
        used.add(candidate)
        out.append(candidate)
    return out


def output_names(names: Sequence[str]) -> list[str]:
    """Overlay file names (posix, relative): ``<name without extension>.png``; where two images would share one
    (``a.jpg`` and ``a.png``), the full name plus ``.png`` (``a.jpg.png``)."""
    stems = [str(PurePosixPath(name).with_suffix("")) for name in names]
    counts = Counter(stems)
    return [
        f"{stem}.png" if counts[stem] == 1 else f"{name}.png" for stem, name in zip(stems, names, strict=True)
    ]
