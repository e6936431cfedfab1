"""Image and mask preprocessing, exactly as docs/method.md section 1 and 5 describe.

Images: resize to S x S with PIL LANCZOS (aspect ratio not kept, no crop), greyscale to 3 channels, scale to
[0, 1], normalise with the ImageNet mean/std. Masks: resize to the evaluation resolution with LANCZOS and
binarise as any non-zero (what the reference does).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from generalad.defaults import PATCH_SIZE
from generalad.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PATCH_SIZE",
    "PREPROCESSING_SPEC",
    "check_image_size",
    "default_image_size",
    "preprocess_image",
    "preprocess_mask",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Enters the feature-store key: change it whenever the function below changes its output.
PREPROCESSING_SPEC = "pil-lanczos-squash|rgb-after-resize|01|imagenet-meanstd|v1"

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]


def default_image_size(patch_size: int = PATCH_SIZE) -> int:
    """The documented input side for a patch size: 518 for patch-14 models (the paper's 37 x 37 grid), 224 for
    patch-16 and patch-8 models (the resolution their weights were trained at: 14 x 14 and 28 x 28 patches),
    else the smallest multiple of the patch size >= 224."""
    if patch_size == PATCH_SIZE:
        return 518
    return -(-224 // patch_size) * patch_size


def check_image_size(image_size: int, patch_size: int = PATCH_SIZE) -> int:
    """The image size as an int, or ConfigError when it is not a positive multiple of the model's patch size."""
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer) or image_size <= 0:
        raise ConfigError(f"image size must be a positive integer, got {image_size!r}")
    if image_size % patch_size:
        lower = max(patch_size, image_size // patch_size * patch_size)
        raise ConfigError(
            f"image size {image_size} is not a multiple of the patch size {patch_size}; valid sizes are "
            f"multiples of {patch_size}, e.g. {lower} or {lower + patch_size} "
            f"({default_image_size(patch_size)} is the default for patch-{patch_size} models)"
        )
    return int(image_size)


def preprocess_image(image: Image.Image, image_size: int) -> torch.Tensor:
    """A decoded PIL image as a normalised float32 tensor (3, S, S)."""
    resized = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    # Greyscale becomes 3 channels after the resize, not before (docs/method.md section 1).
    if resized.mode != "RGB":
        resized = resized.convert("RGB")
    array = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy((array - _MEAN) / _STD)


def preprocess_mask(mask: Image.Image, image_size: int) -> np.ndarray:
    """A mask (mode L, any non-zero = defect) at S x S as uint8 0/1."""
    resized = mask.convert("L").resize((image_size, image_size), Image.Resampling.LANCZOS)
    return (np.asarray(resized) > 0).astype(np.uint8)
