"""`quickstart`: a small synthetic industrial dataset generated offline from real texture photographs.

scikit-image ships three real texture photographs (`skimage.data.brick()`, `grass()`, `gravel()`, 512x512
greyscale). `generate_quickstart` cuts tinted RGB crops out of them and writes one category per texture in the
MVTec layout:

    <root>/<category>/train/good/000.png ...             n_train normal crops
    <root>/<category>/test/good/000.png ...              n_test_good normal crops
    <root>/<category>/test/<defect>/000.png ...          n_test_defect anomalies, cycling over the defect types
    <root>/<category>/ground_truth/<defect>/000_mask.png exact binary masks (255 where pixels were changed)

Defect types: `patch` (a square cut from another texture pasted in), `scratch` (a dark line a few pixels wide),
`blob` (an ellipse blurred and colour-shifted). Everything is drawn from one seeded generator, so the same
arguments give byte-identical files. A marker file (`QUICKSTART_COMPLETE.json`, holding the arguments) is written
last; a rerun with the same arguments returns at once.

Example:
    >>> from generalad.data import generate_quickstart, get_dataset
    >>> root = generate_quickstart("/tmp/quickstart")  # doctest: +SKIP
    >>> ds = get_dataset("quickstart", root, category="brick")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from generalad.data.base import Record
from generalad.data.mvtec import IndustrialDataset
from generalad.data.registry import register
from generalad.errors import ConfigError, DatasetError

__all__ = [
    "generate_quickstart",
    "QuickstartDataset",
    "QUICKSTART_CATEGORIES",
    "QUICKSTART_DEFECTS",
    "MARKER",
]

QUICKSTART_CATEGORIES = ("brick", "grass", "gravel")
QUICKSTART_DEFECTS = ("patch", "scratch", "blob")
MARKER = "QUICKSTART_COMPLETE.json"
_FORMAT_VERSION = 1
# per-texture RGB tint, so the greyscale photographs become colour images (the blob defect shifts colour)
_TINTS = {"brick": (1.0, 0.72, 0.58), "grass": (0.68, 1.0, 0.55), "gravel": (0.92, 0.9, 0.86)}


def _texture(name: str, min_side: int) -> np.ndarray:
    """The tinted texture as float32 RGB (H, W, 3) in [0, 1], upscaled when smaller than `min_side`."""
    from skimage import data  # imported here: scikit-image is only needed to generate

    grey = Image.fromarray(getattr(data, name)())
    side = min(grey.size)
    if side < min_side:
        scale = min_side / side
        grey = grey.resize(
            (round(grey.size[0] * scale), round(grey.size[1] * scale)), Image.Resampling.BICUBIC
        )
    arr = np.asarray(grey, dtype=np.float32) / 255.0
    return arr[..., None] * np.asarray(_TINTS[name], dtype=np.float32)


def _crop(texture: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random size x size crop, rotated by a multiple of 90 degrees, maybe mirrored, brightness-jittered."""
    top = int(rng.integers(0, texture.shape[0] - size + 1))
    left = int(rng.integers(0, texture.shape[1] - size + 1))
    crop = np.rot90(texture[top : top + size, left : left + size], k=int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.clip(crop * np.float32(rng.uniform(0.92, 1.08)), 0.0, 1.0)


def _patch(img: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    side = int(rng.integers(max(4, size // 8), max(5, size // 4) + 1))
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    img[top : top + side, left : left + side] = _crop(other, side, rng)
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _scratch(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    width = max(2, size // 56)
    while True:
        start, end = rng.uniform(0.1 * size, 0.9 * size, size=(2, 2))
        if np.hypot(*(end - start)) >= size / 3:
            break
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line([tuple(start), tuple(end)], fill=255, width=width)
    mask = np.asarray(canvas) > 0
    img[mask] *= np.float32(0.25)
    return mask


def _blob(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    size = img.shape[0]
    rx, ry = rng.uniform(size / 10, size / 5, size=2)
    cx, cy = rng.uniform(size / 4, 3 * size / 4, size=2)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    mask = np.asarray(canvas) > 0
    blurred = gaussian_filter(img, sigma=(size / 80, size / 80, 0))
    shift = np.asarray(rng.permutation([1.35, 0.8, 0.55]), dtype=np.float32)
    img[mask] = np.clip(blurred[mask] * shift + 0.05, 0.0, 1.0)
    return mask


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.dtype == bool:
        Image.fromarray(arr.astype(np.uint8) * 255).save(path, format="PNG")
    else:
        Image.fromarray(np.rint(arr * 255.0).astype(np.uint8)).save(path, format="PNG")


def _generate_category(
    root: Path,
    index: int,
    name: str,
    seed: int,
    counts: tuple[int, int, int],
    size: int,
    textures: dict[str, np.ndarray],
) -> None:
    n_train, n_good, n_defect = counts
    rng = np.random.default_rng([seed, index])
    texture = textures[name]
    others = [c for c in QUICKSTART_CATEGORIES if c != name]
    base = root / name
    for i in range(n_train):
        _save(_crop(texture, size, rng), base / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        _save(_crop(texture, size, rng), base / "test" / "good" / f"{i:03d}.png")
    numbers = dict.fromkeys(QUICKSTART_DEFECTS, 0)
    for i in range(n_defect):
        defect = QUICKSTART_DEFECTS[i % len(QUICKSTART_DEFECTS)]
        img = np.array(_crop(texture, size, rng))
        if defect == "patch":
            mask = _patch(img, textures[others[i % len(others)]], rng)
        elif defect == "scratch":
            mask = _scratch(img, rng)
        else:
            mask = _blob(img, rng)
        stem = f"{numbers[defect]:03d}"
        numbers[defect] += 1
        _save(img, base / "test" / defect / f"{stem}.png")
        _save(mask, base / "ground_truth" / defect / f"{stem}_mask.png")


def _already_generated(marker: Path, params: dict) -> bool:
    """True when `marker` records exactly `params`; DatasetError when it records other ones."""
    if not marker.is_file():
        return False
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        done = None
    if done == params:
        return True
    raise DatasetError(
        f"{marker.parent} already holds a quickstart dataset made with {done}; asked for {params}: "
        f"choose another folder or delete this one"
    )


def generate_quickstart(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_train: int = 24,
    n_test_good: int = 6,
    n_test_defect: int = 10,
    image_size: int = 224,
) -> Path:
    """Write the synthetic quickstart dataset (MVTec layout, categories brick, grass, gravel) into `root`.

    Args:
        root: folder to write into (created if needed).
        seed: seed of every random choice; the same arguments give byte-identical files.
        n_train: normal training images per category.
        n_test_good: normal test images per category.
        n_test_defect: anomalous test images per category, cycling over patch, scratch, blob.
        image_size: side of the square PNG images in pixels.

    Returns:
        `root` as a Path, ready for `get_dataset("quickstart", root, category=...)`.

    Raises:
        ConfigError: for counts < 1 (n_test_defect < 3 leaves out defect types) or image_size < 16.
        DatasetError: when `root` already holds a quickstart made with other arguments.
    """
    if min(n_train, n_test_good, n_test_defect) < 1 or image_size < 16:
        raise ConfigError(
            f"quickstart needs n_train, n_test_good, n_test_defect >= 1 and image_size >= 16; got "
            f"{n_train}, {n_test_good}, {n_test_defect}, {image_size}"
        )
    root = Path(root)
    params = {
        "version": _FORMAT_VERSION,
        "seed": int(seed),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_defect": int(n_test_defect),
        "image_size": int(image_size),
    }
    marker = root / MARKER
    if _already_generated(marker, params):
        return root
    root.mkdir(parents=True, exist_ok=True)
    textures = {name: _texture(name, image_size) for name in QUICKSTART_CATEGORIES}
    counts = (n_train, n_test_good, n_test_defect)
    for index, name in enumerate(QUICKSTART_CATEGORIES):
        _generate_category(root, index, name, seed, counts, image_size, textures)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(params, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(marker)
    return root


@register
class QuickstartDataset(IndustrialDataset):
    """The synthetic quickstart dataset, read exactly like MVTec-AD (`generate_quickstart` writes it)."""

    name = "quickstart"
    how_to_get = (
        'generate it offline: python -c "from generalad.data import generate_quickstart; '
        "generate_quickstart('PATH')\""
    )
    layout = f"<category>/{{train/good,test/<type>,ground_truth/<type>/<stem>_mask.png}} and {MARKER}"
    known_categories = QUICKSTART_CATEGORIES

    def records(self) -> list[Record]:
        """As `IndustrialDataset.records`, after checking that the generation finished."""
        if not (self.root / MARKER).is_file():
            raise DatasetError(
                f"{self.root / MARKER} is missing: the quickstart generation did not finish; rerun "
                f"generate_quickstart({str(self.root)!r})"
            )
        return super().records()
