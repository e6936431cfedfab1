"""The synthetic quickstart dataset: deterministic, idempotent, exact masks, read like MVTec-AD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from generalad.data import generate_quickstart, get_dataset
from generalad.data.synthetic import MARKER, QUICKSTART_CATEGORIES, QUICKSTART_DEFECTS
from generalad.errors import ConfigError, DatasetError

SMALL = {"n_train": 2, "n_test_good": 1, "n_test_defect": 3, "image_size": 32}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = _files(generate_quickstart(tmp_path / "a", seed=3, **SMALL))
    b = _files(generate_quickstart(tmp_path / "b", seed=3, **SMALL))
    c = _files(generate_quickstart(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    assert a.keys() == c.keys() and a != c
    assert len([k for k in a if k.endswith("_mask.png")]) == 3 * 3


def test_rerun_skips_and_other_arguments_are_refused(tmp_path: Path) -> None:
    root = generate_quickstart(tmp_path, **SMALL)
    marker = json.loads((root / MARKER).read_text())
    assert marker["n_train"] == 2 and marker["image_size"] == 32
    stamp = (root / "brick" / "train" / "good" / "000.png").stat().st_mtime_ns
    generate_quickstart(tmp_path, **SMALL)
    assert (root / "brick" / "train" / "good" / "000.png").stat().st_mtime_ns == stamp
    with pytest.raises(DatasetError, match="already holds a quickstart"):
        generate_quickstart(tmp_path, **(SMALL | {"n_train": 3}))
    with pytest.raises(ConfigError):
        generate_quickstart(tmp_path / "x", n_train=0)


def test_incomplete_generation_is_reported(tmp_path: Path) -> None:
    root = generate_quickstart(tmp_path, **SMALL)
    (root / MARKER).unlink()
    with pytest.raises(DatasetError, match="generation did not finish"):
        get_dataset("quickstart", root, "grass").records()


def test_default_size_layout_and_masks(tmp_path: Path) -> None:
    root = generate_quickstart(tmp_path, n_train=2, n_test_good=1, n_test_defect=6)
    for category in QUICKSTART_CATEGORIES:
        ds = get_dataset("quickstart", root, category)
        manifest = ds.manifest()
        assert len(manifest) == 9 and ds.protocol == "quickstart_official"
        assert sorted(set(manifest["defect_type"])) == sorted(("good", *QUICKSTART_DEFECTS))
        for record in ds.records():
            img = ds.load_image(record)
            assert img.mode == "RGB" and img.size == (224, 224)
            mask = np.asarray(ds.load_mask(record, img.size)) > 0
            if record.label:
                # a visible defect that covers part of the image, never all of it
                assert 0 < mask.mean() < 0.5, record.image_id
            else:
                assert not mask.any()


@pytest.mark.parametrize("defect", QUICKSTART_DEFECTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_defect_pixels_change_only_inside_the_mask(defect: str, seed: int) -> None:
    from generalad.data import synthetic

    rng = np.random.default_rng(seed)
    brick, gravel = synthetic._texture("brick", 64), synthetic._texture("gravel", 64)
    clean = synthetic._crop(brick, 64, rng)
    img = np.array(clean)
    if defect == "patch":
        mask = synthetic._patch(img, gravel, rng)
    elif defect == "scratch":
        mask = synthetic._scratch(img, rng)
    else:
        mask = synthetic._blob(img, rng)
    changed = (img != clean).any(axis=2)
    assert mask.dtype == bool and mask.any()
    assert not (changed & ~mask).any()
    assert changed.mean() > 0.5 * mask.mean()  # most of the masked pixels really changed
