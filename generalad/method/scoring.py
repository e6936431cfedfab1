"""From discriminator logits to image scores and pixel maps (docs/method.md section 5).

- Patch scores: logits on clean features, eval mode, no sigmoid.
- Image score: mean of the top-K patch logits (K = N, a plain mean, when ``top_k`` is None).
- Pixel map: logits (B, N) reshaped to (g, g), g = sqrt(N), bilinearly upsampled (align_corners=False) to
  S x S, then a Gaussian blur. The reproduction scripts blur 518 x 518 maps with sigma 16 px truncated at radius
  18 px; at another output size S both are scaled by S / 518 (radius rounded to an integer), so the blur covers
  the same fraction of the image, i.e. the same number of patches. The blur is a separable convolution of a
  normalised kernel of 2 * radius + 1 taps with reflect padding (``d c b | a b c d``, what scipy calls
  ``mode="mirror"``); when the radius is not smaller than S (tiny maps) the padding falls back to replicate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from generalad.devices import DEFAULT_PRECISION, autocast
from generalad.errors import ConfigError
from generalad.method.feature_source import FeatureSource

__all__ = [
    "REFERENCE_SIZE",
    "REFERENCE_SIGMA",
    "REFERENCE_RADIUS",
    "patch_logits",
    "image_scores",
    "blur_params",
    "gaussian_kernel1d",
    "gaussian_blur",
    "anomaly_maps",
]

REFERENCE_SIZE = 518
REFERENCE_SIGMA = 16.0
REFERENCE_RADIUS = 18


def patch_logits(
    model: nn.Module,
    source: FeatureSource,
    rows: Sequence[int] | np.ndarray,
    *,
    batch_size: int = 64,
    precision: str = DEFAULT_PRECISION,
) -> torch.Tensor:
    """Logits (n, N) float32 on the CPU for the given rows, in order; eval mode, no autograd.

    The model's train/eval mode is restored afterwards. Features go to the model's device batch by batch, and
    the forward runs in ``precision`` (`generalad.devices`).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    device = next(model.parameters()).device
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        with torch.inference_mode(), autocast(device, precision):
            batch_iter = source.iter_batches(batches)
            try:
                for tokens, _ in batch_iter:
                    out.append(model(tokens.to(device, non_blocking=True)).float().cpu())
            finally:
                close = getattr(batch_iter, "close", None)
                if close is not None:
                    close()
    finally:
        model.train(was_training)
    if not out:
        return torch.empty(0, source.num_patches)
    return torch.cat(out)


def image_scores(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Mean of the ``top_k`` largest logits of each row of (B, N); ``top_k=None`` means all N."""
    if logits.ndim != 2:
        raise ConfigError(f"logits must be (B, N), got shape {tuple(logits.shape)}")
    num_patches = logits.shape[1]
    if top_k is None:
        return logits.mean(dim=1)
    if not 1 <= top_k <= num_patches:
        raise ConfigError(f"top_k must be in 1..{num_patches} (the number of patches), got {top_k}")
    return logits.topk(top_k, dim=1).values.mean(dim=1)


def blur_params(size: int) -> tuple[float, int]:
    """(sigma, radius) of the blur for S x S maps: 16 * S / 518 and round(18 * S / 518)."""
    return REFERENCE_SIGMA * size / REFERENCE_SIZE, round(REFERENCE_RADIUS * size / REFERENCE_SIZE)


def gaussian_kernel1d(sigma: float, radius: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A normalised Gaussian of 2 * radius + 1 taps (sums to 1)."""
    if radius < 0 or sigma <= 0:
        raise ConfigError(f"Gaussian needs sigma > 0 and radius >= 0, got sigma={sigma}, radius={radius}")
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def gaussian_blur(maps: torch.Tensor, *, sigma: float, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps, reflect padding (replicate when radius >= H or W).

    Not torchvision's ``gaussian_blur``: it gives the same values (to 3e-7 at 518 px, a test checks it) but
    convolves with the full 2-D kernel, 2.8x slower here for 37 x 37 taps at 518 px, and fails when the radius
    is not smaller than the map (small maps of tests and low resolutions); two 1-D passes do neither.
    """
    if radius == 0:
        return maps
    kernel = gaussian_kernel1d(sigma, radius, dtype=maps.dtype).to(maps.device)
    mode = "reflect" if radius < min(maps.shape[-2:]) else "replicate"
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def anomaly_maps(
    logits: torch.Tensor, out_size: int, *, sigma: float | None = None, radius: int | None = None
) -> torch.Tensor:
    """Pixel anomaly maps (B, S, S) from patch logits (B, N).

    Args:
        logits: patch logits, N a perfect square.
        out_size: S, the evaluation resolution (518 in the paper).
        sigma: blur sigma in output pixels; default ``16 * S / 518``.
        radius: blur truncation radius in output pixels; default ``round(18 * S / 518)``.
    """
    if logits.ndim != 2:
        raise ConfigError(f"logits must be (B, N), got shape {tuple(logits.shape)}")
    grid = math.isqrt(logits.shape[1])
    if grid * grid != logits.shape[1]:
        raise ConfigError(f"{logits.shape[1]} patches do not form a square grid")
    if out_size < 1:
        raise ConfigError(f"out_size must be >= 1, got {out_size}")
    default_sigma, default_radius = blur_params(out_size)
    sigma = default_sigma if sigma is None else sigma
    radius = default_radius if radius is None else radius
    x = logits.float().reshape(-1, 1, grid, grid)
    x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False).squeeze(1)
    return gaussian_blur(x, sigma=sigma, radius=radius)
