"""Synthetic user folders (a flat noisy green surface, defects are saturated red squares) and a CLI runner."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generalad.cli import main

DEFECT = 16  # side of the red square, pixels


@dataclass(frozen=True)
class Folders:
    root: Path
    normal: Path
    test_normal: Path
    anomalous: Path
    masks: Path
    defect_masks: dict[str, np.ndarray]  # anomalous image file name -> bool mask (H, W)


def surface(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The normal look: flat green-grey with pixel noise (std 8)."""
    pixels = np.full((height, width, 3), (120, 140, 100), dtype=np.float32)
    return pixels + rng.normal(0.0, 8.0, size=pixels.shape)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def make_folders(root: Path, *, n_normal: int = 32, seed: int = 0) -> Folders:
    """`normal/` (64 x 64 PNGs), `test_good/` and `bad/red/` of mixed sizes and formats, `masks/<stem>_mask.png`."""
    rng = np.random.default_rng(seed)
    for i in range(n_normal):
        save(root / "normal" / f"{i:03d}.png", surface(rng, 64, 64))
    for i, (size, ext) in enumerate(
        (((64, 64), "png"), ((80, 60), "jpg"), ((50, 70), "bmp"), ((96, 72), "png"))
    ):
        save(root / "test_good" / f"{i:03d}.{ext}", surface(rng, *size))
    masks = {}
    for i, (size, ext) in enumerate(
        (((64, 64), "png"), ((72, 64), "png"), ((64, 80), "tif"), ((90, 70), "png"))
    ):
        width, height = size
        pixels = surface(rng, width, height)
        y, x = int(rng.integers(0, height - DEFECT)), int(rng.integers(0, width - DEFECT))
        pixels[y : y + DEFECT, x : x + DEFECT] = (250, 30, 30)
        mask = np.zeros((height, width), dtype=bool)
        mask[y : y + DEFECT, x : x + DEFECT] = True
        name = f"{i:03d}.{ext}"
        save(root / "bad" / "red" / name, pixels)
        save(root / "masks" / f"{i:03d}_mask.png", mask.astype(np.float32) * 255)
        masks[name] = mask
    return Folders(root, root / "normal", root / "test_good", root / "bad" / "red", root / "masks", masks)


def run_cli(*argv: str | Path) -> tuple[int, str, str]:
    """`generalad ARGV` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Folders:
    return make_folders(tmp_path_factory.mktemp("user-folders"))
