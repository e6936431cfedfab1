"""Plots from report rows: a minimal line plot, the paper's Fig. 4 sweeps (metric vs sigma and vs K), and
Markdown that shows images inline (for Prefect artifacts). Drawn with Pillow (see `generalad.apps.visualize` for
why not matplotlib).

Example:
    >>> plots = sweep_plots(ReportStore("reports").read_metrics())  # doctest: +SKIP
    >>> markdown_images(plots, heading="Fig. 4")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from generalad.apps.drawing import load_font, text_size
from generalad.errors import ConfigError

__all__ = ["line_plot", "sweep_table", "sweep_plots", "write_sweep_plots", "png_bytes", "markdown_images"]

# Line colours of the sweep plots (distinguishable on white; black is the axes).
_LINE_COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))


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


class _Axes:
    """The plot area of `line_plot`: data -> pixel mapping of a linear or log x axis and a padded y range."""

    def __init__(self, xs: list[float], ys: list[float], log_x: bool, box: tuple[int, int, int, int]) -> None:
        self.fx = math.log10 if log_x else float
        self.left, self.right, self.top, self.bottom = box
        self.x_lo, self.x_hi = self.fx(xs[0]), self.fx(xs[-1])
        if self.x_hi == self.x_lo:
            self.x_lo, self.x_hi = self.x_lo - 1, self.x_hi + 1
        y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        margin = (y_hi - y_lo) * 0.08 or 0.05
        self.y_lo, self.y_hi = y_lo - margin, y_hi + margin

    def px(self, x: float, y: float) -> tuple[float, float]:
        return (
            self.left + (self.fx(x) - self.x_lo) / (self.x_hi - self.x_lo) * (self.right - self.left),
            self.bottom - (y - self.y_lo) / (self.y_hi - self.y_lo) * (self.bottom - self.top),
        )


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
    width, height = size
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    axes = _Axes(xs_all, ys_all, log_x, (64, width - min(180, width // 4) - 12, 34, height - 48))
    _draw_ticks(draw, axes, xs_all)
    _draw_labels(canvas, draw, axes, title, xlabel + (" (log scale)" if xlabel and log_x else ""), ylabel)
    _draw_series(draw, axes, points)
    return canvas


def _draw_ticks(draw: ImageDraw.ImageDraw, axes: _Axes, xs: list[float]) -> None:
    small = load_font(11)
    draw.rectangle((axes.left, axes.top, axes.right, axes.bottom), outline="black")
    for tick in _nice_ticks(axes.y_lo, axes.y_hi):
        _, ty = axes.px(xs[0], tick)
        draw.line((axes.left - 4, ty, axes.left, ty), fill="black")
        draw.line((axes.left + 1, ty, axes.right - 1, ty), fill=(230, 230, 230))
        label = f"{tick:.3g}"
        tw, th = text_size(draw, label, small)
        draw.text((axes.left - 8 - tw, ty - th / 2 - 2), label, fill="black", font=small)
    for tick in xs:
        tx, _ = axes.px(tick, axes.y_lo)
        draw.line((tx, axes.bottom, tx, axes.bottom + 4), fill="black")
        label = f"{tick:g}"
        tw, _ = text_size(draw, label, small)
        draw.text((tx - tw / 2, axes.bottom + 6), label, fill="black", font=small)


def _draw_labels(canvas: Image.Image, draw, axes: _Axes, title: str, xlabel: str, ylabel: str) -> None:
    font = load_font(13)
    middle = (axes.left + axes.right) / 2
    if title:
        draw.text((middle - text_size(draw, title, font)[0] / 2, 8), title, fill="black", font=font)
    if xlabel:
        tw, _ = text_size(draw, xlabel, font)
        draw.text((middle - tw / 2, canvas.height - 24), xlabel, fill="black", font=font)
    if ylabel:
        label_img = Image.new("RGB", (text_size(draw, ylabel, font)[0] + 4, 18), "white")
        ImageDraw.Draw(label_img).text((2, 0), ylabel, fill="black", font=font)
        rotated = label_img.rotate(90, expand=True)
        canvas.paste(rotated, (6, int((axes.top + axes.bottom - rotated.height) / 2)))


def _draw_series(
    draw: ImageDraw.ImageDraw, axes: _Axes, points: dict[str, list[tuple[float, float]]]
) -> None:
    small = load_font(11)
    for index, (name, pts) in enumerate(points.items()):
        color = _LINE_COLORS[index % len(_LINE_COLORS)]
        coords = [axes.px(x, y) for x, y in pts if math.isfinite(y)]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=2)
        for cx, cy in coords:
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=color)
        ly = axes.top + 4 + index * 18
        draw.line((axes.right + 12, ly + 7, axes.right + 32, ly + 7), fill=color, width=2)
        draw.text((axes.right + 38, ly), name[:22], fill="black", font=small)


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
