"""Bad input, across every dataset: each error names the file or value, and nothing is published (no store gets
COMPLETE.json, so no training can read it and no report row can follow).

Decoding and layout errors per adapter are tested in tests/generalad/data; here they go through the whole
extraction. The backbone is loaded once per module (it is deterministic in its seed) to keep the cases cheap.
"""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import timm
import zarr
from PIL import Image
from safetensors.torch import save_file

from generalad.backbone import load_backbone
from generalad.cli import main
from generalad.data import get_dataset
from generalad.data.base import manifest_record
from generalad.errors import DatasetError, GeneralADError, ImageError, StoreError
from storage import urls
from storage.feature_store import FeatureStore
from tests.fixtures.datasets import BUILDERS
from tests.fixtures.stores import TINY_DEPTH, TINY_SPEC, extract, published

KINDS = ("truncated", "zero-byte", "not an image")
MASKED = ("folder", "mpdd", "mvtec_ad", "mvtec_loco", "quickstart", "visa")
REG4 = (
    "tiny_vit_base_patch14_reg4_dinov2_test"  # the tiny ViT with 4 registers: other weights than TINY_SPEC's
)


@cache
def _backbone(spec):
    return load_backbone(spec)


@pytest.fixture(autouse=True)
def _one_backbone(monkeypatch) -> None:
    monkeypatch.setattr("storage.extraction.load_backbone", _backbone)


def _build(name: str, root: Path):
    fx = BUILDERS[name](root / "data")
    return fx, get_dataset(fx.name, fx.root, fx.category, **fx.options)


def _reopen(fx):
    return get_dataset(fx.name, fx.root, fx.category, **fx.options)


def _break(path: Path, kind: str) -> None:
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "zero-byte": b"", "not an image": b"hello\n"}[kind]
    )


# every dataset once, the three kinds of broken file taking turns; MVTec gets all three
CORRUPTIONS = [(name, KINDS[i % 3]) for i, name in enumerate(sorted(BUILDERS))]
CORRUPTIONS += [("mvtec_ad", kind) for kind in KINDS if ("mvtec_ad", kind) not in CORRUPTIONS]


@pytest.mark.parametrize(("name", "kind"), CORRUPTIONS)
def test_a_broken_file_is_named_and_nothing_is_published(tmp_path, name: str, kind: str) -> None:
    fx, adapter = _build(name, tmp_path)
    path = adapter.image_path(
        manifest_record(adapter.manifest().iloc[-1])
    )  # the last row: earlier shards get written
    _break(path, kind)
    with pytest.raises(DatasetError, match=path.name):  # ImageError for image files, DatasetError for batches
        extract(_reopen(fx), tmp_path / "stores")
    assert not published(tmp_path / "stores")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_dataset_one_folder_too_deep_is_refused(tmp_path, name: str) -> None:
    fx = BUILDERS[name](tmp_path / "outer" / "inner")
    with pytest.raises(DatasetError) as info:
        get_dataset(fx.name, tmp_path / "outer", fx.category, **fx.options).manifest()
    assert str(tmp_path / "outer") in str(info.value) or repr(fx.category) in str(info.value)


@pytest.mark.parametrize("name", MASKED)
def test_a_missing_mask_is_named(tmp_path, name: str) -> None:
    fx, adapter = _build(name, tmp_path)
    manifest = adapter.manifest()
    row = manifest[manifest["mask_paths"].map(len) > 0].iloc[-1]
    mask = fx.root / row["mask_paths"][0]
    if name == "mvtec_loco":  # a LOCO mask is a folder of files; a missing mask is a missing folder
        shutil.rmtree(mask.parent)
    else:
        mask.unlink()
    with pytest.raises(DatasetError, match=Path(row["rel_path"]).name):
        extract(_reopen(fx), tmp_path / "stores")
    assert not published(tmp_path / "stores")


@pytest.mark.parametrize("name", MASKED)
def test_a_mask_of_another_size_is_named(tmp_path, name: str) -> None:
    fx, adapter = _build(name, tmp_path)
    manifest = adapter.manifest()
    mask = fx.root / manifest[manifest["mask_paths"].map(len) > 0].iloc[0]["mask_paths"][0]
    Image.fromarray(np.full((5, 7), 255, np.uint8)).save(mask)
    with pytest.raises(ImageError, match=f"{mask.name} has size 7x5"):
        extract(_reopen(fx), tmp_path / "stores")
    assert not published(tmp_path / "stores")


def _cli_extract(tmp_path, *extra: str, dataset: str = "mvtec_ad", category: str = "bottle") -> list[str]:
    """`generalad extract` arguments for the MVTec fixture under `tmp_path/data` (built when absent)."""
    if not (tmp_path / "data").exists():
        BUILDERS["mvtec_ad"](tmp_path / "data")
    args = ["extract", "--dataset", dataset, "--root", str(tmp_path / "data"), "--weights", "random"]
    args += ["--backbone", TINY_SPEC.name, "--image-size", str(TINY_SPEC.image_size)]
    args += ["--store", str(tmp_path / "stores"), "--no-progress"]
    return [*args, *(["--category", category] if category else []), *extra]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "mvtec"}, "unknown dataset 'mvtec'"),
        ({"category": "bottles"}, "category 'bottles' of mvtec_ad not found"),
        ({"category": "../bottle"}, "category '../bottle' is not a plain name"),
        ({"extra": ("--backbone", "vit_nonexistent_patch16")}, "unknown backbone 'vit_nonexistent_patch16'"),
        (
            {"extra": ("--backbone", "resnet18")},
            "'resnet18' is not a timm VisionTransformer with a class token",
        ),
        ({"extra": ("--image-size", "30")}, "image size 30 is not a multiple of the patch size 14"),
        ({"extra": ("--layers", str(TINY_DEPTH))}, f"layer {TINY_DEPTH} is out of range"),
        ({"extra": ("--weights", "weights.bin.missing")}, "weights file weights.bin.missing does not exist"),
    ],
)
def test_the_extract_command_names_a_bad_value_and_publishes_nothing(
    tmp_path, monkeypatch, capsys, change: dict, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    args = _cli_extract(
        tmp_path, *change.get("extra", ()), **{k: v for k, v in change.items() if k != "extra"}
    )
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not published(tmp_path / "stores")


def test_weights_of_another_architecture_name_the_file_and_publish_nothing(tmp_path, capsys) -> None:
    other = timm.create_model(REG4, pretrained=False, num_classes=0, img_size=TINY_SPEC.image_size)
    path = tmp_path / "reg4.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    assert main(_cli_extract(tmp_path, "--weights", str(path))) == 2
    assert f"reg4.safetensors does not fit {TINY_SPEC.name}" in capsys.readouterr().err
    assert not published(tmp_path / "stores")


def test_a_store_of_an_older_schema_is_refused_by_every_reader(tiny_adapter, tmp_path, capsys) -> None:
    url = extract(tiny_adapter, tmp_path / "stores").url
    zarr.open_group(urls.zarr_store(url), mode="r+").attrs["generalad_schema"] = 0
    with pytest.raises(StoreError, match=r"schema version 0; this generalad reads version 1.*Re-extract"):
        FeatureStore(url)
    out = tmp_path / "model"
    assert main(["train", "--store", url, "--class", "bottle", "--out", str(out), "--no-progress"]) == 2
    assert "schema version 0" in capsys.readouterr().err and not out.exists()


def test_a_dataset_error_is_a_generaladerror_the_cli_reports(tmp_path, capsys) -> None:
    """The CLI turns every input error into exit 2 with a message, never a traceback."""
    BUILDERS["mvtec_ad"](tmp_path / "data")
    _break(tmp_path / "data" / "bottle" / "train" / "good" / "000.png", "truncated")
    code = main(_cli_extract(tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot decode image file") and "000.png" in err
    assert issubclass(ImageError, GeneralADError)
    assert not published(tmp_path / "stores")
