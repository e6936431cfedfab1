"""Pictures: colour table, map resizing, overlays, the sample grid, sweep tables and plots, markdown embedding."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from generalad.apps.plots import line_plot, markdown_images, sweep_plots, sweep_table, write_sweep_plots
from generalad.apps.visualize import (
    HEAT_COLORS,
    colorize,
    map_range,
    mask_tile,
    overlay,
    resize_map,
    sample_grid,
)
from generalad.errors import ConfigError
from tests.fixtures.rows import row_config


def test_colour_table_runs_from_blue_to_red_and_clips():
    assert HEAT_COLORS.shape == (256, 3) and HEAT_COLORS.dtype == np.uint8
    low, high = HEAT_COLORS[0], HEAT_COLORS[-1]
    assert low[2] > 100 and low[0] == 0  # dark blue
    assert high[0] > 100 and high[2] == 0  # dark red
    values = np.array([[-5.0, 0.0, 0.5, 1.0, 9.0, np.nan]])
    colours = colorize(values, 0.0, 1.0)
    np.testing.assert_array_equal(colours[0, 0], HEAT_COLORS[0])  # below vmin clips to the low end
    np.testing.assert_array_equal(colours[0, 4], HEAT_COLORS[255])  # above vmax clips to the high end
    np.testing.assert_array_equal(colours[0, 2], HEAT_COLORS[128])
    np.testing.assert_array_equal(colours[0, 5], HEAT_COLORS[0])  # NaN drawn as low


def test_resize_map_gives_height_by_width_and_keeps_a_constant_map():
    values = np.full((7, 7), 2.5, dtype=np.float32)
    out = resize_map(values, (30, 20))
    assert out.shape == (20, 30) and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.5, rtol=1e-6)
    ramp = np.tile(np.arange(8, dtype=np.float32), (8, 1))  # increases left to right
    wide = resize_map(ramp, (64, 16))
    assert np.all(np.diff(wide[8]) >= -1e-5) and wide[8, -1] > wide[8, 0]
    with pytest.raises(ConfigError):
        resize_map(np.zeros(5), (3, 3))


def test_overlay_keeps_the_image_size_and_blends():
    image = Image.new("L", (40, 24), 200)
    values = np.zeros((24, 40), dtype=np.float32)
    values[:, 20:] = 1.0
    assert overlay(image, values, vmin=0, vmax=1, alpha=0.0).tobytes() == image.convert("RGB").tobytes()
    full = np.asarray(overlay(image, values, vmin=0, vmax=1, alpha=1.0))
    assert full.shape == (24, 40, 3)
    np.testing.assert_array_equal(full[0, 0], HEAT_COLORS[0])
    np.testing.assert_array_equal(full[0, 39], HEAT_COLORS[255])
    with pytest.raises(ConfigError, match="does not match the image"):
        overlay(image, np.zeros((40, 24)), vmin=0, vmax=1)


def test_mask_tile_white_defect_on_black():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[:5] = 255
    tile = np.asarray(mask_tile(mask, (20, 20)))
    assert (
        tile.shape == (20, 20, 3)
        and tile[0, 0].tolist() == [255, 255, 255]
        and tile[-1, -1].tolist() == [0, 0, 0]
    )
    assert mask_tile(None, (32, 32)).size == (32, 32)


def test_sample_grid_layout_and_validation():
    images = [Image.new("RGB", (50 + 10 * i, 40), (i * 40, 100, 100)) for i in range(5)]
    maps = [np.random.default_rng(i).random((8, 8)).astype(np.float32) for i in range(5)]
    masks = [None, np.zeros((40, 50)), np.ones((40, 60)), None, np.zeros((8, 8))]
    grid = sample_grid(
        images, maps, masks, [0.1, 0.2, 0.3, 0.4, 0.5], captions=list("abcde"), tile=32, columns=3
    )
    one_band = sample_grid(images[:3], maps[:3], masks[:3], [0, 0, 0], tile=32, columns=3)
    assert grid.width == one_band.width  # three columns either way
    assert grid.height > one_band.height  # a second band for images 4 and 5
    with pytest.raises(ConfigError, match="as many"):
        sample_grid(images, maps[:4], masks, [0] * 5)
    with pytest.raises(ConfigError, match="at least one"):
        sample_grid([], [], [], [])
    assert map_range(maps) == (min(float(m.min()) for m in maps), max(float(m.max()) for m in maps))


def _sweep_frame() -> pd.DataFrame:
    rows = []
    for dataset, offset in (("mvtec_ad", 0.0), ("cifar10", 0.1)):
        for class_name in ("a", "b"):
            for sigma in (0.01, 0.1, 0.25, 1.0):
                rows.append((dataset, class_name, sigma, 10, 0.5 + sigma / 4 + offset))
            for top_k in (1, 10, 100, 1369):
                rows.append((dataset, class_name, 0.25, top_k, 0.6 + np.log10(top_k) / 10 + offset))
    frame = pd.DataFrame(rows, columns=["dataset", "class_name", "sigma", "top_k", "value"])
    frame["metric"], frame["selection"], frame["status"] = "image_auroc", "last", "ok"
    other = frame.iloc[:1].assign(metric="pixel_auroc", value=0.0)
    failed = frame.iloc[:1].assign(status="failed", value=np.nan)
    best = frame.iloc[:1].assign(selection="best_on_test", value=0.0)
    return pd.concat([frame, other, failed, best], ignore_index=True)


def test_sweep_table_keeps_the_held_parameter_at_its_default_and_averages_classes():
    frame = _sweep_frame()
    sigma = sweep_table(frame, "sigma")
    assert list(sigma.columns) == ["series", "sigma", "value", "n"]
    mvtec = sigma[sigma["series"] == "mvtec_ad"].set_index("sigma")
    assert list(mvtec.index) == [0.01, 0.1, 0.25, 1.0]  # K-sweep rows (top_k != 10) are left out
    assert mvtec.loc[0.1, "n"] == 2 and mvtec.loc[0.1, "value"] == pytest.approx(0.5 + 0.1 / 4)
    assert mvtec.loc[0.25, "n"] == 4  # the default point appears in both sweeps, for both classes
    top_k = sweep_table(frame, "top_k").set_index(["series", "top_k"])
    assert top_k.loc[("cifar10", 100), "value"] == pytest.approx(0.6 + 0.2 + 0.1)
    assert len(top_k) == 8
    assert sweep_table(frame, "sigma", metric="aupro").empty
    with pytest.raises(ConfigError):
        sweep_table(frame, "epochs")


def test_sweep_plots_make_both_figures_only_when_a_sweep_exists():
    plots = sweep_plots(_sweep_frame())
    assert set(plots) == {"sigma", "top_k"}
    assert all(p.size == (640, 400) for p in plots.values())
    no_k_sweep = _sweep_frame().query("top_k == 10")
    assert set(sweep_plots(no_k_sweep)) == {"sigma"}
    assert sweep_plots(_sweep_frame().iloc[:0]) == {}


def test_line_plot_draws_each_series_in_its_colour():
    image = line_plot({"a": ([1, 10, 100], [0.1, 0.5, 0.9]), "b": ([1, 100], [0.9, 0.1])}, title="t")
    pixels = np.asarray(image).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours
    with pytest.raises(ConfigError):
        line_plot({})
    with pytest.raises(ConfigError, match="log"):
        line_plot({"a": ([0, 1], [0, 1])}, log_x=True)


def test_markdown_images_embed_decodable_pngs():
    text = markdown_images({"grid": Image.new("RGB", (7, 5), "red")}, heading="report")
    assert text.startswith("# report")
    encoded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", text).group(1)
    decoded = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert decoded.size == (7, 5) and decoded.format == "PNG"


def test_sweep_plots_from_a_real_report_store(tmp_path):
    """The columns and dtypes `ReportStore.read_metrics()` returns (partition columns included) plot as expected."""
    from storage.metric_row import MetricRow
    from storage.reports import ReportStore

    def row(sigma: float, top_k: int, value: float, class_name: str) -> MetricRow:
        return MetricRow(
            **row_config(sigma=sigma),
            run_id="fig4",
            dataset="mvtec_ad",
            category=class_name,
            backbone="vit_base_patch14_dinov2",
            weights="random:0",
            views="clean+noise_all+noise_random",
            epochs=1,
            top_k=top_k,
            class_name=class_name,
            metric="image_auroc",
            value=value,
        )

    rows = [row(s, 10, 0.5 + s / 2, c) for s in (0.05, 0.25, 1.0) for c in ("grid", "wood")]
    rows += [row(0.25, k, 0.6 + k / 2000, c) for k in (1, 100, 1369) for c in ("grid", "wood")]
    store = ReportStore(str(tmp_path / "reports"))
    store.write_run("fig4", rows)
    frame = store.read_metrics()
    table = sweep_table(frame, "top_k")
    assert table["top_k"].tolist() == [1, 10, 100, 1369] and table["series"].unique().tolist() == ["mvtec_ad"]
    assert table.set_index("top_k").loc[10, "value"] == pytest.approx(0.5 + 0.25 / 2)
    written = write_sweep_plots(frame, tmp_path / "plots")
    assert sorted(p.name for p in written.values()) == [
        "image_auroc_vs_sigma.png",
        "image_auroc_vs_top_k.png",
    ]
    for path in written.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (640, 400)
