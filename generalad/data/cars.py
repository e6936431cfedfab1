"""Stanford-Cars in the official layout, annotations read from the devkit's `.mat` files.

Layout: `cars_train/*.jpg`, `cars_test/*.jpg`, `devkit/cars_train_annos.mat`, `devkit/cars_meta.mat` (196 class
names) and the test labels `cars_test_annos_withlabels.mat` (in `devkit/` or in the root). Each annotation has
`fname` and a 1-based `class`.

Protocol (docs/method.md section 6): normal classes are the class ids "1".."20"; train = the ~41 training images of
class c, test = every test image, the 195 other classes anomalous. Records carry the 1-based class id as a string
(`class_name` "7"); the human-readable name is `class_title("7")`. Training images of classes 21..196 are never
a training set, so the manifest leaves them out; all 8,041 test images are in it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from generalad.data.base import LABEL_BY_PROTOCOL, Record
from generalad.data.layout import find_file, rel_inside, require_dir, require_file
from generalad.data.oneclass import FileImagesMixin, SemanticAdapter
from generalad.data.registry import register
from generalad.errors import DatasetError

__all__ = ["CarsDataset", "CARS_NORMAL_CLASSES", "CARS_NUM_CLASSES"]

CARS_NUM_CLASSES = 196
CARS_NORMAL_CLASSES = tuple(str(i) for i in range(1, 21))


def _load_mat(path: Path) -> dict:
    import scipy.io  # imported here: it costs ~0.2 s and only Stanford-Cars needs it

    try:
        return scipy.io.loadmat(path, squeeze_me=True)
    except Exception as exc:  # scipy raises MatReadError, ValueError, TypeError, ... on a bad file
        raise DatasetError(f"cannot read MATLAB file {path}: {type(exc).__name__}: {exc}") from exc


def _annotations(path: Path) -> list[tuple[str, int]]:
    """(file name, 1-based class) of every annotation in a devkit `*_annos*.mat` file."""
    mat = _load_mat(path)
    ann = mat.get("annotations")
    if ann is None or getattr(ann, "dtype", None) is None or ann.dtype.names is None:
        raise DatasetError(f"{path} has no 'annotations' struct array")
    missing = [f for f in ("fname", "class") if f not in ann.dtype.names]
    if missing:
        raise DatasetError(
            f"{path}: annotations lack the field(s) {', '.join(missing)} (test labels come from "
            f"cars_test_annos_withlabels.mat)"
        )
    ann = np.atleast_1d(ann)
    out: list[tuple[str, int]] = []
    for fname, cls in zip(ann["fname"].tolist(), ann["class"].tolist(), strict=True):
        cls = int(np.asarray(cls).item())
        if not 1 <= cls <= CARS_NUM_CLASSES:
            raise DatasetError(f"{path}: class {cls} of {fname} is outside 1..{CARS_NUM_CLASSES}")
        out.append((str(np.asarray(fname).item()), cls))
    return out


@register
class CarsDataset(FileImagesMixin, SemanticAdapter):
    """Stanford-Cars: 196 classes; the first 20 class ids serve as normal classes."""

    name = "cars"
    kind = "near_distribution"
    how_to_get = (
        "Stanford-Cars release (cars_train.tgz, cars_test.tgz, car_devkit.tgz, cars_test_annos_withlabels.mat), "
        "e.g. from the Kaggle mirror, as ai.stanford.edu no longer serves it"
    )
    layout = "cars_train/*.jpg, cars_test/*.jpg, devkit/{cars_train_annos,cars_meta}.mat, cars_test_annos_withlabels.mat"
    class_names = CARS_NORMAL_CLASSES

    def class_titles(self) -> list[str]:
        """The 196 human-readable class names of `devkit/cars_meta.mat`, class id 1 first."""
        path = require_file(self.root / "devkit" / "cars_meta.mat", "Stanford-Cars class names")
        names = _load_mat(path).get("class_names")
        names = [str(n) for n in np.atleast_1d(names).tolist()] if names is not None else []
        if len(names) != CARS_NUM_CLASSES:
            raise DatasetError(f"{path}: 'class_names' holds {len(names)} names, expected {CARS_NUM_CLASSES}")
        return names

    def class_title(self, class_id: str) -> str:
        """The human-readable name of a class id ("1" -> "AM General Hummer SUV 2000")."""
        return self.class_titles()[int(class_id) - 1]

    def records(self) -> list[Record]:
        self.class_titles()  # validates the metadata
        train_annos = require_file(
            self.root / "devkit" / "cars_train_annos.mat", "Stanford-Cars train labels"
        )
        test_annos = find_file(
            [
                self.root / "devkit" / "cars_test_annos_withlabels.mat",
                self.root / "cars_test_annos_withlabels.mat",
            ],
            "Stanford-Cars test labels",
        )
        normal = {int(c) for c in CARS_NORMAL_CLASSES}
        records: list[Record] = []
        for split, folder_name, annos in (
            ("train", "cars_train", train_annos),
            ("test", "cars_test", test_annos),
        ):
            folder = require_dir(self.root / folder_name, f"Stanford-Cars {split} images")
            for fname, cls in _annotations(annos):
                if split == "train" and cls not in normal:
                    continue
                path = folder / fname
                rel = rel_inside(path, self.root, f"image {fname!r} listed in {annos.name}")
                if not path.is_file():
                    raise DatasetError(f"image {path} listed in {annos.name} is missing")
                records.append(Record(rel, rel, split, str(cls), LABEL_BY_PROTOCOL))  # type: ignore[arg-type]
        return records
