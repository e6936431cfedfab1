"""Decoding image and mask files into fully loaded PIL images, with errors that name the file.

Only decoding lives here: no resizing (preprocessing resizes to the evaluation resolution) and no EXIF
rotation (the reference does not apply it either, and a mask must stay aligned with its image).

Example:
    >>> img = open_image("bottle/test/broken_large/000.png")  # doctest: +SKIP
    >>> mask = load_mask(["bottle/ground_truth/broken_large/000_mask.png"], img.size)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from generalad.errors import ImageError

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "open_image", "load_mask"]

# lower-case suffixes of the image files the dataset adapters list (matched case-insensitively: VisA uses .JPG)
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError, IndexError)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has one of `IMAGE_EXTENSIONS` (case-insensitive); the content is not read."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _decode(path: Path, what: str) -> Image.Image:
    """Open and fully load `path`; truncated files fail because `LOAD_TRUNCATED_IMAGES` is never enabled."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageError(
            f"PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated files would load silently; "
            f"refusing to decode {what} {path} (something in this process enabled it: disable it)"
        )
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise ImageError(f"cannot read {what} file {path}: {exc}") from exc
    if size == 0:
        raise ImageError(f"{what} file {path} is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()
            # the context manager closes the file; a loaded copy keeps the pixels
            return (
                img.copy()
                if img.mode != "P"
                else img.convert("RGBA" if "transparency" in img.info else "RGB")
            )
    except _DECODE_ERRORS as exc:
        raise ImageError(f"cannot decode {what} file {path}: {exc}") from exc


def _scale_to_l(img: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float single-channel image as 8-bit L (16-bit range mapped onto 0..255)."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
        top = 1.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 255.0
        out = np.clip(np.nan_to_num(arr) / top * 255.0, 0, 255)
    else:
        # I;16* and I (how PIL opens 16-bit PNG/TIFF): values 0..65535, 65535 -> 255
        out = np.clip(arr.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.rint(out).astype(np.uint8))


def _to_rgb_or_l(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode in ("1", "LA", "La"):
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        return _scale_to_l(img)
    # RGBA / RGBa / RGBX / CMYK / YCbCr / LAB / HSV / P (already expanded): alpha is dropped
    return img.convert("RGB")


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file completely, as mode "RGB" or "L".

    Conversions: RGBA and palette images become RGB (alpha is dropped), CMYK/YCbCr/LAB become RGB,
    1-bit and LA become L, 16-bit and 32-bit integer greyscale becomes L scaled from 0..65535 to 0..255,
    float greyscale becomes L from 0..1 (or 0..255 when its maximum exceeds 1). Multi-frame files give
    their first frame.

    Args:
        path: the image file.

    Returns:
        The decoded image; its pixels are loaded and the file is closed.

    Raises:
        ImageError: naming the file, when it is missing, empty, truncated or not a decodable image.
    """
    path = Path(path)
    img = _decode(path, "image")
    try:
        return _to_rgb_or_l(img)
    except _DECODE_ERRORS as exc:
        raise ImageError(f"cannot convert image file {path} (mode {img.mode}) to RGB or L: {exc}") from exc


def _foreground(img: Image.Image) -> np.ndarray:
    """Boolean (H, W): pixels whose value (any colour channel, alpha ignored) is non-zero."""
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        img = img.convert("RGB" if img.mode != "LA" and img.mode != "La" else "L")
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim == 3:
        return (arr != 0).any(axis=2)
    return arr != 0


def load_mask(paths: Sequence[str | os.PathLike[str]], expected_size: tuple[int, int]) -> Image.Image:
    """The union of ground-truth mask files as one binary mask.

    Any non-zero pixel of any file is foreground (VisA masks hold small object ids, MVTec masks 255).
    An empty `paths` gives an all-background mask (normal images).

    Args:
        paths: mask files of one image (several for MVTec-LOCO, united with a logical OR).
        expected_size: (width, height) of the image the masks belong to.

    Returns:
        Mode "L" image of size `expected_size` with values 0 (background) and 255 (anomalous).

    Raises:
        ImageError: naming the mask file, when it cannot be decoded or its (width, height) differs from
            `expected_size`.
    """
    width, height = int(expected_size[0]), int(expected_size[1])
    union = np.zeros((height, width), dtype=bool)
    for raw in paths:
        path = Path(raw)
        img = _decode(path, "mask")
        if img.size != (width, height):
            raise ImageError(
                f"mask file {path} has size {img.size[0]}x{img.size[1]} (width x height), "
                f"but its image is {width}x{height}"
            )
        union |= _foreground(img)
    return Image.fromarray(union.astype(np.uint8) * 255)
