"""FGVC-Aircraft at the `variant` level, in the official `fgvc-aircraft-2013b` layout.

Layout (the root may hold `fgvc-aircraft-2013b/` or be it): `data/images/<id>.jpg`, `data/variants.txt` (one
variant name a line, 100 lines), `data/images_variant_train.txt` and `data/images_variant_test.txt` (lines
`<id> <variant name, may contain spaces>`).

Protocol (docs/method.md section 6): the paper lists ten normal classes as indices {91, 96, 59, 19, 37, 45, 90, 68, 74,
89}. We read them as 0-based positions in the line order of `data/variants.txt` (the order the authors' loader
enumerates the variant names in). Training uses the `train` split (not `trainval`). For normal variant v:
train = v's training images; test = v's test images (label 0) plus only the test images of the other nine listed
variants (label 1). The manifest therefore holds only the images of the ten listed variants (about 670), not the
other 90 variants. The 20-pixel copyright banner at the bottom of each photograph is not cropped.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from generalad.data.base import LABEL_BY_PROTOCOL, DatasetAdapter, OneClassSplit, Record
from generalad.data.layout import rel_inside, require_file
from generalad.data.oneclass import FileImagesMixin, one_vs_rest_split
from generalad.data.registry import register
from generalad.errors import DatasetError

__all__ = ["AircraftDataset", "AIRCRAFT_NORMAL_INDICES"]

# 0-based line positions in data/variants.txt, in the paper's order
AIRCRAFT_NORMAL_INDICES = (91, 96, 59, 19, 37, 45, 90, 68, 74, 89)
_FOLDER = "fgvc-aircraft-2013b"


@register
class AircraftDataset(FileImagesMixin, DatasetAdapter):
    """FGVC-Aircraft, variant level, ten listed normal variants (near-distribution anomalies)."""

    name = "aircraft"
    kind = "near_distribution"
    protocol_name = "listed_variants"
    how_to_get = (
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b.tar.gz, extract as it is)"
    )
    layout = "fgvc-aircraft-2013b/data/{images/<id>.jpg,variants.txt,images_variant_train.txt,images_variant_test.txt}"

    def data_dir(self) -> Path:
        """The `data/` folder of the release (under the root or under `root/fgvc-aircraft-2013b`)."""
        for candidate in (self.root / "data", self.root / _FOLDER / "data"):
            if candidate.is_dir():
                return candidate
        raise DatasetError(
            f"FGVC-Aircraft folder data/ is missing: looked for {self.root / 'data'} and {self.root / _FOLDER / 'data'}"
        )

    def variants(self) -> list[str]:
        """Every variant name, in the line order of `data/variants.txt`."""
        path = require_file(self.data_dir() / "variants.txt", "FGVC-Aircraft variant list")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) <= max(AIRCRAFT_NORMAL_INDICES):
            raise DatasetError(
                f"{path} lists {len(names)} variants; the protocol needs index {max(AIRCRAFT_NORMAL_INDICES)}"
            )
        return names

    def normal_classes(self) -> list[str]:
        names = self.variants()
        return [names[i] for i in AIRCRAFT_NORMAL_INDICES]

    def _split_lines(self, data: Path, split: str, known: set[str]) -> list[tuple[str, str]]:
        path = require_file(data / f"images_variant_{split}.txt", f"FGVC-Aircraft {split} annotations")
        pairs: list[tuple[str, str]] = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            image, _, variant = line.strip().partition(" ")
            variant = variant.strip()
            if not variant:
                raise DatasetError(f"{path} line {number}: expected '<id> <variant>', got {line!r}")
            if variant not in known:
                raise DatasetError(f"{path} line {number}: variant {variant!r} is not in variants.txt")
            pairs.append((image, variant))
        return pairs

    def records(self) -> list[Record]:
        data = self.data_dir()
        all_variants = set(self.variants())
        listed = set(self.normal_classes())
        records: list[Record] = []
        for split in ("train", "test"):
            for image, variant in self._split_lines(data, split, all_variants):
                if variant not in listed:
                    continue
                path = data / "images" / f"{image}.jpg"
                rel = rel_inside(path, self.root, f"image {image!r} listed in images_variant_{split}.txt")
                if not path.is_file():
                    raise DatasetError(
                        f"image {path} listed in images_variant_{split}.txt (variant {variant!r}) is missing"
                    )
                records.append(Record(rel, rel, split, variant, LABEL_BY_PROTOCOL))  # type: ignore[arg-type]
        return records

    def one_class_split(self, manifest: pd.DataFrame, normal_class: str) -> OneClassSplit:
        listed = self.normal_classes()
        return one_vs_rest_split(manifest, normal_class, listed, what=self.describe(), test_classes=listed)
