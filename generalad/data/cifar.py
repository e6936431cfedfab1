"""CIFAR-10 and CIFAR-100 (20 superclasses), from the official python batches or from image folders.

Layouts (the root may hold the batch folder or be it):
- CIFAR-10 batches: `cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`.
- CIFAR-100 batches: `cifar-100-python/{train, test, meta}`; the classes are the 20 `coarse_labels`.
- Folders: `{train,test}/<class>/<image>`. For CIFAR-100 a folder may be named by a fine label (mapped to its
  superclass with the standard table) or by a superclass.
When both a batch folder and `train/`/`test/` folders exist, the batches are used.

Protocol (docs/method.md section 6): train = the training images of the normal class, test = every test image,
label 1 for every other class. Batch records have `rel_path` = the batch file and
`image_id` = f"{rel_path}#{index:05d}"; the decoded arrays are cached per file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from generalad.data.base import LABEL_BY_PROTOCOL, Record
from generalad.data.images import is_image_file, open_image
from generalad.data.layout import class_folder_records, rel_posix, require_file
from generalad.data.oneclass import SemanticAdapter
from generalad.data.pickles import load_restricted_pickle
from generalad.data.registry import register
from generalad.errors import DatasetError, ImageError

__all__ = [
    "Cifar10Dataset",
    "Cifar100Dataset",
    "CIFAR10_CLASSES",
    "CIFAR100_SUPERCLASSES",
    "CIFAR100_FINE_TO_COARSE",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# the standard CIFAR-100 superclass table (coarse label order of `meta`), five fine labels each
_SUPERCLASS_TABLE: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_SUPERCLASSES = tuple(_SUPERCLASS_TABLE)
CIFAR100_FINE_TO_COARSE: dict[str, str] = {
    fine: c for c, fines in _SUPERCLASS_TABLE.items() for fine in fines
}

_SIDE = 32


class _CifarAdapter(SemanticAdapter):
    """Shared logic of the two CIFAR adapters: layout detection, batch records, cached array decoding."""

    batch_folder: ClassVar[str]
    train_files: ClassVar[tuple[str, ...]]
    test_files: ClassVar[tuple[str, ...]]
    meta_file: ClassVar[str]
    label_key: ClassVar[str]
    meta_names_key: ClassVar[str]

    def __init__(self, root: str | Path, category: str | None = None, **options: Any) -> None:
        super().__init__(root, category, **options)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # ---------------------------------------------------------------- layout
    def _batch_dir(self) -> Path | None:
        names = (*self.train_files, *self.test_files, self.meta_file)
        for candidate in (self.root / self.batch_folder, self.root):
            if any((candidate / n).is_file() for n in names):
                return candidate
        return None

    @property
    def source(self) -> str:
        """ "batches" or "folders": which official layout the root holds."""
        if self._batch_dir() is not None:
            return "batches"
        if (self.root / "train").is_dir() or (self.root / "test").is_dir():
            return "folders"
        files = ", ".join((*self.train_files, *self.test_files, self.meta_file))
        raise DatasetError(
            f"no {self.name} data under {self.root}: expected {self.batch_folder}/{{{files}}} "
            f"(the root may also be {self.batch_folder} itself) or train/<class>/*, test/<class>/* image folders"
        )

    def records(self) -> list[Record]:
        if self.source == "folders":
            split_dirs = {"train": self.root / "train", "test": self.root / "test"}
            return class_folder_records(self.root, split_dirs, self._folder_class, self.class_names)
        return self._batch_records()

    def _folder_class(self, folder_name: str, folder: Path) -> str:
        if folder_name in self.class_names:
            return folder_name
        raise DatasetError(
            f"class folder {folder} is not a {self.name} class; expected one of: {', '.join(self.class_names)}"
        )

    # ---------------------------------------------------------------- batches
    def _class_names_from_meta(self, batch_dir: Path) -> None:
        meta_path = require_file(batch_dir / self.meta_file, f"{self.name} metadata")
        meta = load_restricted_pickle(meta_path)
        if self.meta_names_key not in meta:
            raise DatasetError(f"{meta_path} has no {self.meta_names_key!r} entry")
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[self.meta_names_key])
        if names != self.class_names:
            raise DatasetError(
                f"{meta_path} lists classes {list(names)}, expected the official {list(self.class_names)}"
            )

    def _batch_records(self) -> list[Record]:
        batch_dir = self._batch_dir()
        assert batch_dir is not None
        expected = [*self.train_files, *self.test_files, self.meta_file]
        missing = [n for n in expected if not (batch_dir / n).is_file()]
        if missing:
            raise DatasetError(f"{self.name} batch folder {batch_dir} lacks: {', '.join(missing)}")
        self._class_names_from_meta(batch_dir)
        records: list[Record] = []
        for split, files in (("train", self.train_files), ("test", self.test_files)):
            for file_name in files:
                rel = rel_posix(batch_dir / file_name, self.root)
                _, labels = self._batch(rel)
                for index, label in enumerate(labels.tolist()):
                    records.append(
                        Record(f"{rel}#{index:05d}", rel, split, self.class_names[label], LABEL_BY_PROTOCOL)  # type: ignore[arg-type]
                    )
        return records

    def _batch(self, rel: str) -> tuple[np.ndarray, np.ndarray]:
        """(images (n, 32, 32, 3) uint8, labels (n,) int64) of one batch file, decoded once and cached."""
        cached = self._arrays.get(rel)
        if cached is not None:
            return cached
        path = self.root / rel
        batch = load_restricted_pickle(path)
        for key in ("data", self.label_key):
            if key not in batch:
                raise DatasetError(f"{path} has no {key!r} entry")
        data = np.asarray(batch["data"])
        labels = np.asarray(batch[self.label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE:
            raise DatasetError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (n, 3072)")
        if labels.shape != (data.shape[0],):
            raise DatasetError(f"{path}: {labels.size} labels for {data.shape[0]} images")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise DatasetError(f"{path}: labels outside 0..{len(self.class_names) - 1}")
        # rows are 1024 red, 1024 green, 1024 blue values, each row-major 32x32
        images = np.ascontiguousarray(data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1))
        self._arrays[rel] = (images, labels)
        return images, labels

    def load_image(self, record: Record) -> Image.Image:
        if is_image_file(record.rel_path):
            return open_image(self.root / record.rel_path)
        rel, _, index_text = record.image_id.rpartition("#")
        images, _ = self._batch(rel)
        try:
            return Image.fromarray(images[int(index_text)])
        except (ValueError, IndexError) as exc:
            raise ImageError(f"no image #{index_text} in {self.root / rel} ({len(images)} images)") from exc


@register
class Cifar10Dataset(_CifarAdapter):
    """CIFAR-10: 10 classes, 50,000 training and 10,000 test images of 32x32."""

    name = "cifar10"
    how_to_get = (
        "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version, cifar-10-python.tar.gz)"
    )
    layout = "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} or {train,test}/<class>/*"
    class_names = CIFAR10_CLASSES
    batch_folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    label_key = "labels"
    meta_names_key = "label_names"


@register
class Cifar100Dataset(_CifarAdapter):
    """CIFAR-100 with its 20 superclasses as the classes (the coarse labels)."""

    name = "cifar100"
    how_to_get = (
        "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-100 python version, cifar-100-python.tar.gz)"
    )
    layout = "cifar-100-python/{train,test,meta} or {train,test}/<fine label or superclass>/*"
    class_names = CIFAR100_SUPERCLASSES
    batch_folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    label_key = "coarse_labels"
    meta_names_key = "coarse_label_names"

    def _folder_class(self, folder_name: str, folder: Path) -> str:
        if folder_name in CIFAR100_FINE_TO_COARSE:
            return CIFAR100_FINE_TO_COARSE[folder_name]
        if folder_name in _SUPERCLASS_TABLE:
            return folder_name
        raise DatasetError(
            f"class folder {folder} is neither a CIFAR-100 fine label nor a superclass "
            f"(e.g. 'beaver' or 'aquatic_mammals')"
        )
