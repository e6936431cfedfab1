"""Pictures of anomaly maps: heat-map overlays and per-class sample grids (sweep plots: `generalad.apps.plots`).

Everything is drawn with Pillow and NumPy (no plotting library): a 256-entry jet-like colour table for heat maps,
Pillow's line drawing for the sweep plots. Why not matplotlib: measured here, `import matplotlib.pyplot` takes
0.8-1.4 s (Pillow's drawing modules 8-17 ms) and adds a 35 MB dependency, while it would replace only the
sweep plot's axes and ticks (about 100 lines); predict and fit-folder pay the import on every call. Functions return ``PIL.Image`` objects; saving and publishing (files,
Prefect artifacts) is the caller's business. ``markdown_images`` embeds PNGs as data URIs, for a Prefect markdown
artifact (``prefect.artifacts.create_markdown_artifact``) without a web server for the files.

Colour scale: a map value ``v`` is drawn at ``(v - vmin) / (vmax - vmin)`` clipped to [0, 1], blue (low) to red
(high). Callers pass one ``(vmin, vmax)`` for a set of images so that colours compare across them.

Example:
    >>> heat = overlay(image, map_at_image_size, vmin=-2.0, vmax=3.0)  # doctest: +SKIP
    >>> sample_grid(images, maps, masks, scores).save("grid.png")  # doctest: +SKIP
    >>> plots = sweep_plots(ReportStore("reports").read_metrics())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from generalad.apps.drawing import load_font, text_size
from generalad.errors import ConfigError

__all__ = [
    "HEAT_COLORS",
    "colorize",
    "resize_map",
    "map_range",
    "overlay",
    "mask_tile",
    "sample_grid",
]

# Jet-like colour stops (position, R, G, B): dark blue -> blue -> cyan -> yellow -> red -> dark red.
_STOPS = np.array(
    [
        (0.000, 0, 0, 128),
        (0.125, 0, 0, 255),
        (0.375, 0, 255, 255),
        (0.625, 255, 255, 0),
        (0.875, 255, 0, 0),
        (1.000, 128, 0, 0),
    ],
    dtype=np.float64,
)
_POSITIONS = np.linspace(0.0, 1.0, 256)
HEAT_COLORS: np.ndarray = (
    np.stack([np.interp(_POSITIONS, _STOPS[:, 0], _STOPS[:, c]) for c in (1, 2, 3)], axis=1)
    .round()
    .astype(np.uint8)
)
"""(256, 3) uint8 RGB lookup table of the heat maps, index 0 = low, 255 = high."""


def colorize(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """(H, W) map values -> (H, W, 3) uint8 heat colours on the scale ``vmin`` .. ``vmax`` (clipped)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ConfigError(f"a map must be 2-D (H, W), got shape {values.shape}")
    span = float(vmax) - float(vmin)
    scaled = np.zeros_like(values) if span <= 0 else (values - float(vmin)) / span
    index = np.clip(np.nan_to_num(scaled, nan=0.0) * 255.0, 0, 255).round().astype(np.intp)
    return HEAT_COLORS[index]


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map (h, w) resized bilinearly to ``size`` = (width, height) as float32 (h', w') = (height, width).

    This is how a map computed at the model's S x S resolution is brought to an image's own size (the image was
    squashed to S x S without keeping its aspect ratio, so the map is stretched back the same way).
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ConfigError(f"a map must be 2-D (H, W), got shape {values.shape}")
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ConfigError(f"target size must be positive, got {size}")
    if values.shape == (height, width):
        return values.copy()
    resized = Image.fromarray(values).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def map_range(maps: Sequence[np.ndarray] | np.ndarray) -> tuple[float, float]:
    """(lowest, highest) finite value over all ``maps``: one colour scale for a set of images."""
    lows, highs = [], []
    for values in maps:
        finite = np.asarray(values)[np.isfinite(values)]
        if finite.size:
            lows.append(float(finite.min()))
            highs.append(float(finite.max()))
    if not lows:
        return 0.0, 1.0
    return min(lows), max(highs)


def overlay(
    image: Image.Image, values: np.ndarray, *, vmin: float, vmax: float, alpha: float = 0.5
) -> Image.Image:
    """The heat map of ``values`` blended over ``image`` (RGB result, the image's size).

    Args:
        image: any PIL image (converted to RGB).
        values: the anomaly map at the image's size, (height, width); see ``resize_map``.
        vmin, vmax: the colour scale (map units).
        alpha: heat-map opacity, 0 (image only) .. 1 (heat map only).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    rgb = image.convert("RGB")
    values = np.asarray(values)
    if values.shape != (rgb.height, rgb.width):
        raise ConfigError(
            f"map shape {values.shape} does not match the image ({rgb.height}, {rgb.width}); resize it first"
        )
    heat = Image.fromarray(colorize(values, vmin, vmax))
    return Image.blend(rgb, heat, alpha)


def mask_tile(mask: np.ndarray | None, size: tuple[int, int]) -> Image.Image:
    """A ground-truth mask as a white-on-black RGB tile of ``size`` (width, height); grey with "no mask" for None."""
    width, height = int(size[0]), int(size[1])
    if mask is None:
        tile = Image.new("RGB", (width, height), (96, 96, 96))
        draw = ImageDraw.Draw(tile)
        font = load_font(max(9, height // 10))
        text_w, text_h = text_size(draw, "no mask", font)
        draw.text(((width - text_w) // 2, (height - text_h) // 2), "no mask", fill=(220, 220, 220), font=font)
        return tile
    binary = (np.asarray(mask) > 0).astype(np.uint8) * 255
    if binary.ndim == 3:
        binary = binary.max(axis=2)
    return Image.fromarray(binary).resize((width, height), Image.Resampling.NEAREST).convert("RGB")


def _colorbar(width: int, height: int, vmin: float, vmax: float, font) -> Image.Image:
    """A horizontal colour bar with its end values."""
    bar = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(bar)
    low, high = f"{vmin:.3g}", f"{vmax:.3g}"
    low_w, _ = text_size(draw, low, font)
    high_w, _ = text_size(draw, high, font)
    x0, x1 = low_w + 12, width - high_w - 12
    if x1 - x0 < 16:
        return bar
    strip = HEAT_COLORS[np.linspace(0, 255, x1 - x0).round().astype(np.intp)]
    strip_img = Image.fromarray(np.repeat(strip[None], height - 8, axis=0))
    bar.paste(strip_img, (x0, 4))
    draw.text((4, height // 2 - 6), low, fill="black", font=font)
    draw.text((x1 + 8, height // 2 - 6), high, fill="black", font=font)
    return bar


def sample_grid(
    images: Sequence[Image.Image],
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    scores: Sequence[float],
    *,
    captions: Sequence[str] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    tile: int = 128,
    columns: int = 8,
    alpha: float = 0.5,
    title: str | None = None,
) -> Image.Image:
    """A picture of test images with their anomaly maps and ground truth, one column per image.

    Each column shows the caption and score, the image, its ground-truth mask and the heat-map overlay; after
    ``columns`` images a new band starts. Every tile is ``tile`` x ``tile`` pixels (images are squashed like the
    model sees them). One colour scale for all images: ``vmin`` / ``vmax``, by default the range of all maps;
    a colour bar at the bottom gives it.

    Args:
        images: the test images (any size and mode).
        maps: their anomaly maps, any resolution (e.g. the model's S x S), float.
        masks: their ground-truth masks (non-zero = defect, any resolution), or None where there is none.
        scores: their image scores.
        captions: a short text per image (e.g. "good", "scratch"); default none.
        vmin, vmax: the colour scale in map units.
        tile: side of one tile in pixels.
        columns: images per band.
        alpha: heat-map opacity of the overlays.
        title: a line of text at the top.

    Raises:
        ConfigError: the sequences have different lengths, or there is no image.
    """
    n = len(images)
    captions = list(captions) if captions is not None else [""] * n
    if not n:
        raise ConfigError("sample_grid needs at least one image")
    if not (len(maps) == len(masks) == len(scores) == len(captions) == n):
        raise ConfigError(
            f"sample_grid needs as many maps, masks, scores and captions as images ({n}); got "
            f"{len(maps)}, {len(masks)}, {len(scores)}, {len(captions)}"
        )
    if tile < 16 or columns < 1:
        raise ConfigError(f"tile must be >= 16 and columns >= 1, got {tile}, {columns}")
    low, high = map_range(maps)
    vmin = low if vmin is None else float(vmin)
    vmax = high if vmax is None else float(vmax)

    font = load_font(max(10, tile // 11))
    small = load_font(max(9, tile // 13))
    pad = 4
    label_w = max(70, tile // 2 + 20)
    caption_h = 2 * (max(10, tile // 11) + 4)
    band_h = caption_h + 3 * (tile + pad) + pad
    cols = min(columns, n)
    bands = math.ceil(n / cols)
    title_h = (max(10, tile // 11) + 12) if title else 0
    bar_h = 28
    width = label_w + cols * (tile + pad) + pad
    height = title_h + bands * band_h + bar_h + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 4), title, fill="black", font=font)

    for i in range(n):
        band, col = divmod(i, cols)
        x = label_w + pad + col * (tile + pad)
        y = title_h + band * band_h
        draw.text((x, y + 2), captions[i][:24], fill="black", font=small)
        draw.text((x, y + 2 + caption_h // 2), f"score {float(scores[i]):.3f}", fill=(60, 60, 60), font=small)
        y += caption_h
        picture = images[i].convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR)
        values = resize_map(np.asarray(maps[i], dtype=np.float32), (tile, tile))
        canvas.paste(picture, (x, y))
        canvas.paste(mask_tile(masks[i], (tile, tile)), (x, y + tile + pad))
        canvas.paste(overlay(picture, values, vmin=vmin, vmax=vmax, alpha=alpha), (x, y + 2 * (tile + pad)))
    for band in range(bands):
        y = title_h + band * band_h + caption_h
        for row, name in enumerate(("image", "ground truth", "anomaly map")):
            draw.text((pad, y + row * (tile + pad) + tile // 2 - 6), name, fill="black", font=small)
    canvas.paste(_colorbar(width - 2 * pad, bar_h, vmin, vmax, small), (pad, height - bar_h - pad))
    return canvas
