"""generalad.data.images: full decoding to RGB/L, conversions, and errors that name the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from generalad.data.images import IMAGE_EXTENSIONS, is_image_file, load_mask, open_image
from generalad.errors import ImageError


def _save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    img.save(path, **kwargs)
    return path


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)


def test_rgb_and_l_pass_through_fully_loaded(tmp_path: Path, rgb: np.ndarray) -> None:
    img = open_image(_save(Image.fromarray(rgb), tmp_path / "a.png"))
    assert img.mode == "RGB" and img.size == (13, 9)
    np.testing.assert_array_equal(np.asarray(img), rgb)
    grey = open_image(_save(Image.fromarray(rgb[..., 0]), tmp_path / "g.png"))
    assert grey.mode == "L"
    np.testing.assert_array_equal(np.asarray(grey), rgb[..., 0])
    # fully decoded: the file can go away afterwards
    (tmp_path / "a.png").unlink()
    assert np.asarray(img).sum() == rgb.sum()


def test_rgba_drops_alpha(tmp_path: Path, rgb: np.ndarray) -> None:
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 17, np.uint8)], axis=2)
    img = open_image(_save(Image.fromarray(rgba), tmp_path / "a.png"))
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), rgb)


def test_palette_becomes_rgb(tmp_path: Path, rgb: np.ndarray) -> None:
    pal = Image.fromarray(rgb).quantize(colors=8)
    img = open_image(_save(pal, tmp_path / "p.png"))
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), np.asarray(pal.convert("RGB")))


def test_16bit_greyscale_becomes_scaled_l(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535], [32896, 1000, 65278]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    img = open_image(path)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), np.rint(values / 257.0).astype(np.uint8))


def test_cmyk_and_bilevel(tmp_path: Path, rgb: np.ndarray) -> None:
    cmyk = Image.fromarray(rgb).convert("CMYK")
    img = open_image(_save(cmyk, tmp_path / "c.jpg", quality=95))
    assert img.mode == "RGB" and img.size == (13, 9)
    bw = Image.fromarray(rgb[..., 0] > 128)
    one = open_image(_save(bw, tmp_path / "b.png"))
    assert one.mode == "L"
    np.testing.assert_array_equal(np.asarray(one), (rgb[..., 0] > 128).astype(np.uint8) * 255)


def test_webp_tiff_bmp(tmp_path: Path, rgb: np.ndarray) -> None:
    for name, kwargs in (("a.webp", {"lossless": True}), ("a.tif", {}), ("a.bmp", {})):
        img = open_image(_save(Image.fromarray(rgb), tmp_path / name, **kwargs))
        np.testing.assert_array_equal(np.asarray(img), rgb)


def test_image_extensions() -> None:
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} == set(IMAGE_EXTENSIONS)
    assert is_image_file("x/000.JPG") and is_image_file("a.tiff") and not is_image_file("notes.txt")


def test_missing_empty_and_non_image_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="missing.png.*does not exist"):
        open_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png is empty \(0 bytes\)"):
        open_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageError, match="text.png"):
        open_image(tmp_path / "text.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_errors(tmp_path: Path, rgb: np.ndarray, fmt: str) -> None:
    big = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageError, match=f"cut.{fmt.lower()}"):
        open_image(path)


def test_refuses_to_work_when_truncated_loading_is_enabled(
    tmp_path: Path, rgb: np.ndarray, monkeypatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="LOAD_TRUNCATED_IMAGES"):
        open_image(_save(Image.fromarray(rgb), tmp_path / "a.png"))


def test_load_mask_unites_any_non_zero(tmp_path: Path) -> None:
    a = np.zeros((6, 8), np.uint8)
    a[1, 2] = 255
    b = np.zeros((6, 8), np.uint8)
    b[4, 5] = 3  # VisA-style object id
    c = np.zeros((6, 8, 3), np.uint8)
    c[0, 0, 2] = 1  # an RGB mask, one channel set
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]
    for arr, path in zip((a, b, c), paths, strict=True):
        Image.fromarray(arr).save(path)
    mask = load_mask(paths, (8, 6))
    assert mask.mode == "L" and mask.size == (8, 6)
    want = np.zeros((6, 8), np.uint8)
    want[1, 2] = want[4, 5] = want[0, 0] = 255
    np.testing.assert_array_equal(np.asarray(mask), want)


def test_load_mask_without_files_is_background() -> None:
    mask = load_mask([], (5, 4))
    assert mask.size == (5, 4) and not np.asarray(mask).any()


def test_load_mask_size_mismatch_and_bad_file_name_the_mask(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "m_mask.png")
    with pytest.raises(ImageError, match=r"m_mask\.png has size 8x6.*image is 9x6"):
        load_mask([tmp_path / "m_mask.png"], (9, 6))
    (tmp_path / "broken_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match="broken_mask.png"):
        load_mask([tmp_path / "m_mask.png", tmp_path / "broken_mask.png"], (8, 6))
