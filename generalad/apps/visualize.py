"""Pictures of anomaly maps: heat-map overlays, per-class sample grids, and metric-vs-parameter sweep plots.

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

import base64
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from generalad.errors import ConfigError

__all__ = [
    "HEAT_COLORS",
    "colorize",
    "resize_map",
    "map_range",
    "overlay",
    "mask_tile",
    "sample_grid",
    "line_plot",
    "sweep_table",
    "sweep_plots",
    "write_sweep_plots",
    "png_bytes",
    "markdown_images",
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

# Line colours of the sweep plots (distinguishable on white; black is the axes).
_LINE_COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


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
        font = _font(max(9, height // 10))
        text_w, text_h = _text_size(draw, "no mask", font)
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
    low_w, _ = _text_size(draw, low, font)
    high_w, _ = _text_size(draw, high, font)
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

    font = _font(max(10, tile // 11))
    small = _font(max(9, tile // 13))
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


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * span:
        ticks.append(round(value, 12))
        value += step
    return ticks


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    log_x: bool | None = None,
    size: tuple[int, int] = (640, 400),
) -> Image.Image:
    """Lines with markers, one per series, on shared axes (a minimal matplotlib-free plot).

    Args:
        series: name -> (x values, y values); points are drawn in increasing x.
        title, xlabel, ylabel: texts.
        log_x: logarithmic x axis; default when every x is > 0 and they span at least a factor of 20.
        size: (width, height) in pixels.

    The x ticks are the distinct x values of the data (sweeps have few); the y ticks are round numbers.
    """
    points = {
        name: sorted(zip(map(float, xs), map(float, ys), strict=True))
        for name, (xs, ys) in series.items()
        if len(xs)
    }
    if not points:
        raise ConfigError("line_plot needs at least one series with points")
    xs_all = sorted({x for pts in points.values() for x, _ in pts})
    ys_all = [y for pts in points.values() for _, y in pts if math.isfinite(y)]
    if log_x is None:
        log_x = xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 20
    if log_x and xs_all[0] <= 0:
        raise ConfigError("a logarithmic x axis needs x > 0")
    fx = math.log10 if log_x else float

    width, height = size
    font = _font(13)
    small = _font(11)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    legend_w = min(180, width // 4)
    left, right, top, bottom = 64, width - legend_w - 12, 34, height - 48
    x_lo, x_hi = fx(xs_all[0]), fx(xs_all[-1])
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = (min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0)
    margin = (y_hi - y_lo) * 0.08 or 0.05
    y_lo, y_hi = y_lo - margin, y_hi + margin

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (fx(x) - x_lo) / (x_hi - x_lo) * (right - left),
            bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top),
        )

    draw.rectangle((left, top, right, bottom), outline="black")
    for tick in _nice_ticks(y_lo, y_hi):
        _, ty = px(xs_all[0], tick)
        draw.line((left - 4, ty, left, ty), fill="black")
        draw.line((left + 1, ty, right - 1, ty), fill=(230, 230, 230))
        label = f"{tick:.3g}"
        tw, th = _text_size(draw, label, small)
        draw.text((left - 8 - tw, ty - th / 2 - 2), label, fill="black", font=small)
    for tick in xs_all:
        tx, _ = px(tick, y_lo)
        draw.line((tx, bottom, tx, bottom + 4), fill="black")
        label = f"{tick:g}"
        tw, _ = _text_size(draw, label, small)
        draw.text((tx - tw / 2, bottom + 6), label, fill="black", font=small)
    if title:
        tw, _ = _text_size(draw, title, font)
        draw.text(((left + right - tw) / 2, 8), title, fill="black", font=font)
    if xlabel:
        text = xlabel + (" (log scale)" if log_x else "")
        tw, _ = _text_size(draw, text, font)
        draw.text(((left + right - tw) / 2, height - 24), text, fill="black", font=font)
    if ylabel:
        label_img = Image.new("RGB", (_text_size(draw, ylabel, font)[0] + 4, 18), "white")
        ImageDraw.Draw(label_img).text((2, 0), ylabel, fill="black", font=font)
        rotated = label_img.rotate(90, expand=True)
        canvas.paste(rotated, (6, int((top + bottom - rotated.height) / 2)))

    for index, (name, pts) in enumerate(points.items()):
        color = _LINE_COLORS[index % len(_LINE_COLORS)]
        coords = [px(x, y) for x, y in pts if math.isfinite(y)]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=2)
        for cx, cy in coords:
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=color)
        ly = top + 4 + index * 18
        draw.line((right + 12, ly + 7, right + 32, ly + 7), fill=color, width=2)
        draw.text((right + 38, ly), name[:22], fill="black", font=small)
    return canvas


_SWEEP_OTHER = {"sigma": "top_k", "top_k": "sigma"}


def sweep_table(
    frame: pd.DataFrame,
    parameter: str,
    *,
    metric: str = "image_auroc",
    selection: str = "last",
) -> pd.DataFrame:
    """The points of one sweep: mean metric value per (series, parameter value).

    Rows are those of ``metric`` and ``selection`` with a value (and ``status == "ok"`` when the column exists).
    A sweep varies one parameter with the other held at its default, so for the ``sigma`` sweep only rows whose
    ``top_k`` is the most frequent ``top_k`` of their dataset are kept, and vice versa (the default value is shared
    by every point of the other sweep, so it is the most frequent one). A series is a dataset (and backbone, when
    the frame holds several); values are averaged over its classes and seeds, ``n`` counts the rows averaged.

    Returns:
        Columns ``series``, the parameter, ``value``, ``n``; sorted; empty when nothing matches.
    """
    if parameter not in _SWEEP_OTHER:
        raise ConfigError(f"sweep parameter must be one of {sorted(_SWEEP_OTHER)}, got {parameter!r}")
    needed = {"dataset", "metric", "selection", "value", "sigma", "top_k"}
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise ConfigError(f"report frame lacks columns {missing}")
    rows = frame[(frame["metric"] == metric) & (frame["selection"] == selection) & frame["value"].notna()]
    if "status" in rows.columns:
        rows = rows[rows["status"] == "ok"]
    columns = ["series", parameter, "value", "n"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    other = _SWEEP_OTHER[parameter]
    rows = rows.copy()
    several_backbones = "backbone" in rows.columns and rows["backbone"].nunique() > 1
    rows["series"] = rows["dataset"].astype(str)
    if several_backbones:
        rows["series"] += " (" + rows["backbone"].astype(str).str.replace("vit_", "", regex=False) + ")"
    held = rows.groupby("series")[other].agg(lambda s: s.value_counts().index[0])
    rows = rows[rows[other].to_numpy() == held.loc[rows["series"]].to_numpy()]
    table = (
        rows.groupby(["series", parameter], as_index=False)
        .agg(value=("value", "mean"), n=("value", "size"))
        .sort_values(["series", parameter], kind="stable")
        .reset_index(drop=True)
    )
    return table[columns]


def sweep_plots(
    frame: pd.DataFrame, *, metric: str = "image_auroc", selection: str = "last"
) -> dict[str, Image.Image]:
    """Paper Fig. 4 style plots from a report frame: ``metric`` vs ``sigma`` and ``metric`` vs ``top_k`` (K).

    A plot is made for a parameter only when some series has at least two values of it (see ``sweep_table`` for
    which rows are used). Returns {"sigma": image, "top_k": image}, either key absent when there is no sweep.
    """
    plots: dict[str, Image.Image] = {}
    names = {"sigma": "noise sigma", "top_k": "K (top-K patches in the image score)"}
    for parameter in ("sigma", "top_k"):
        table = sweep_table(frame, parameter, metric=metric, selection=selection)
        if table.empty or table.groupby("series")[parameter].nunique().max() < 2:
            continue
        series = {
            name: (part[parameter].astype(float).tolist(), part["value"].astype(float).tolist())
            for name, part in table.groupby("series", sort=True)
        }
        plots[parameter] = line_plot(
            series,
            title=f"{metric} vs {parameter} ({selection}; mean over classes)",
            xlabel=names[parameter],
            ylabel=metric,
        )
    return plots


def write_sweep_plots(
    frame: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    metric: str = "image_auroc",
    selection: str = "last",
) -> dict[str, Path]:
    """Save ``sweep_plots(frame)`` as ``<out_dir>/<metric>_vs_sigma.png`` and ``<metric>_vs_top_k.png``.

    Returns:
        parameter -> the file written (only for the sweeps the frame holds).
    """
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for parameter, image in sweep_plots(frame, metric=metric, selection=selection).items():
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{metric}_vs_{parameter}.png"
        image.save(path, format="PNG", optimize=True)
        written[parameter] = path
    return written


def png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def markdown_images(images: Mapping[str, Image.Image | bytes], *, heading: str | None = None) -> str:
    """Markdown showing each image inline (PNG data URI) under its name, e.g. for a Prefect markdown artifact.

    Args:
        images: title -> a PIL image or PNG bytes.
        heading: an optional first line (``# heading``).
    """
    lines = [f"# {heading}", ""] if heading else []
    for name, image in images.items():
        data = image if isinstance(image, bytes) else png_bytes(image)
        encoded = base64.b64encode(data).decode("ascii")
        lines += [f"## {name}", "", f"![{name}](data:image/png;base64,{encoded})", ""]
    return "\n".join(lines)
