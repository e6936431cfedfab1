"""A tiny in-test dataset adapter (generated images and masks on disk) for the feature-store tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from generalad.data.base import DatasetAdapter, OneClassSplit, Record
from generalad.data.images import open_image


class TinyAdapter(DatasetAdapter):
    """`n_train` normal train images, then test images alternating normal/anomalous, anomalies with a mask."""

    name = "tiny"
    kind = "industrial"
    has_masks = True

    def records(self) -> list[Record]:
        out = []
        for path in sorted(self.root.glob("*/*/*.png")):
            split, kind = path.parts[-3], path.parts[-2]
            rel = path.relative_to(self.root).as_posix()
            masks = (f"masks/{path.stem}.png",) if kind == "bad" else ()
            out.append(Record(rel, rel, split, "tiny", int(kind == "bad"), kind, masks))
        return out

    def load_image(self, record: Record) -> Image.Image:
        return open_image(self.root / record.rel_path)

    def normal_classes(self) -> list[str]:
        return ["tiny"]

    def one_class_split(self, manifest: pd.DataFrame, normal_class: str) -> OneClassSplit:
        train = np.flatnonzero(manifest["split"] == "train")
        test = np.flatnonzero(manifest["split"] == "test")
        return OneClassSplit(normal_class, train, test, manifest["label"].to_numpy()[test].astype(np.int8))


def make_tiny_dataset(root: Path, n_train: int = 5, n_test: int = 6, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("test", n_test)):
        for i in range(count):
            kind = "bad" if split == "test" and i % 2 else "good"
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                folder / f"{split}{i:03d}.png"
            )
            if kind == "bad":
                mask = np.zeros((size, size), np.uint8)
                mask[5:15, 10:30] = 255
                Image.fromarray(mask).save(root / "masks" / f"{split}{i:03d}.png")
    return root


@pytest.fixture()
def tiny_root(tmp_path) -> Path:
    return make_tiny_dataset(tmp_path / "tiny")


@pytest.fixture()
def tiny_adapter(tiny_root) -> TinyAdapter:
    return TinyAdapter(tiny_root)
