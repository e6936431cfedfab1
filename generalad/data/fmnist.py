"""Fashion-MNIST from its official IDX files, gzipped (`.gz`) or not.

Layout: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
`t10k-labels-idx1-ubyte` (each optionally `.gz`) directly under the root. `image_id` uses the file name without
`.gz` (`train-images-idx3-ubyte#00042`), so a gzipped and a plain copy give the same ids; `rel_path` names the
file actually read. Images are 28x28 greyscale, returned as mode "L" (preprocessing makes them 3-channel after
resizing). Protocol: one-vs-rest (train 6,000 of the normal class, test the full 10,000).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from generalad.data.base import LABEL_BY_PROTOCOL, Record
from generalad.data.layout import rel_posix
from generalad.data.oneclass import SemanticAdapter
from generalad.data.registry import register
from generalad.errors import DatasetError, ImageError

__all__ = ["FashionMnistDataset", "FMNIST_CLASSES", "read_idx"]

# the official class names, label order 0..9 (note "T-shirt/top" contains a "/": never use it as a path)
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) of unsigned bytes as a numpy array of its declared shape.

    Raises:
        DatasetError: naming the file, for a bad magic number, an unsupported element type or a size that
            does not match the header.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != _UBYTE:
        raise DatasetError(f"{path}: IDX element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: header declares {shape} = {expected} bytes, file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@register
class FashionMnistDataset(SemanticAdapter):
    """Fashion-MNIST: 10 classes, 60,000 training and 10,000 test images of 28x28 greyscale."""

    name = "fmnist"
    how_to_get = (
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion/*.gz), or Debian's "
        "dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist/)"
    )
    layout = "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] directly under the root"
    class_names = FMNIST_CLASSES

    def __init__(self, root: str | Path, category: str | None = None, **options: Any) -> None:
        super().__init__(root, category, **options)
        self._images: dict[str, np.ndarray] = {}

    def _file(self, base: str) -> Path:
        for candidate in (self.root / base, self.root / f"{base}.gz"):
            if candidate.is_file():
                return candidate
        raise DatasetError(f"Fashion-MNIST file {base} (or {base}.gz) is missing from {self.root}")

    def _split_arrays(self, split: str) -> tuple[Path, np.ndarray, np.ndarray]:
        images_base, labels_base = _FILES[split]
        images_path, labels_path = self._file(images_base), self._file(labels_base)
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{images_path} {images.shape} and {labels_path} {labels.shape} do not match: "
                f"expected (n, rows, cols) images and (n,) labels"
            )
        if labels.size and labels.max() >= len(FMNIST_CLASSES):
            raise DatasetError(f"{labels_path}: labels outside 0..9")
        self._images[images_base] = images
        return images_path, images, labels

    def records(self) -> list[Record]:
        records: list[Record] = []
        for split in ("train", "test"):
            path, _, labels = self._split_arrays(split)
            rel = rel_posix(path, self.root)
            base = _FILES[split][0]
            for index, label in enumerate(labels.tolist()):
                records.append(
                    Record(f"{base}#{index:05d}", rel, split, FMNIST_CLASSES[label], LABEL_BY_PROTOCOL)  # type: ignore[arg-type]
                )
        return records

    def load_image(self, record: Record) -> Image.Image:
        base, _, index_text = record.image_id.rpartition("#")
        images = self._images.get(base)
        if images is None:
            images = read_idx(self.root / record.rel_path)
            self._images[base] = images
        try:
            return Image.fromarray(np.ascontiguousarray(images[int(index_text)]))
        except (ValueError, IndexError) as exc:
            raise ImageError(f"no image #{index_text} in {self.root / record.rel_path}") from exc
