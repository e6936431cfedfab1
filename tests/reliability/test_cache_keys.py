"""Cache invalidation: every input of the store key moves the key, so a changed input never finds a complete store.

Each case changes one input against a complete store built from the unchanged inputs and checks that the new plan
points at another folder, which holds no complete store (the next extraction cannot be a stale hit). Module
constants are changed the way a new release would change them (monkeypatched where storage.fingerprint reads them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import generalad.data.preprocess
import storage.fingerprint
from generalad.backbone import BackboneSpec
from generalad.errors import StoreError
from storage.extraction import plan_store
from storage.feature_store import FeatureStore, is_complete
from tests.fixtures.stores import TINY_SPEC, extract, store_values, tiny_mvtec_adapter

Change = Callable[[pytest.MonkeyPatch, Path, Path], tuple[BackboneSpec, str]]


def _spec(**fields) -> Change:
    return lambda mp, data, tmp: (dataclasses.replace(TINY_SPEC, **fields), "float16")


def _weights_file(mp, data, tmp, content: bytes = b"weights-a") -> tuple[BackboneSpec, str]:
    path = tmp / "w.safetensors"
    path.write_bytes(content)
    return dataclasses.replace(TINY_SPEC, weights=str(path)), "float16"


def _image_resaved(mp, data, tmp):
    path = data / "bottle" / "train" / "good" / "000.png"
    Image.fromarray(np.zeros((16, 18, 3), np.uint8)).save(path)  # same name, other pixels (other size)
    return TINY_SPEC, "float16"


def _image_added(mp, data, tmp):
    Image.fromarray(np.full((16, 18, 3), 7, np.uint8)).save(data / "bottle" / "train" / "good" / "099.png")
    return TINY_SPEC, "float16"


def _mask_changed(mp, data, tmp):
    mask = next(iter(sorted((data / "bottle" / "ground_truth").rglob("*.png"))))
    Image.fromarray(np.full((16, 18), 255, np.uint8)).save(mask)
    return TINY_SPEC, "float16"


def _constant(module, name: str, value) -> Change:
    def change(mp, data, tmp):
        mp.setattr(module, name, value)
        return TINY_SPEC, "float16"

    return change


CHANGES: dict[str, Change] = {
    "backbone": _spec(name="tiny_vit_base_patch14_reg4_dinov2_test"),
    "weights: random seed": _spec(seed=1),
    "weights: random init values": _spec(init_values=1.0),
    "weights: a file": _weights_file,
    "image size": _spec(image_size=42),
    "layers": _spec(layers=(-2, -1)),
    "dtype": lambda mp, data, tmp: (TINY_SPEC, "float32"),
    "preprocessing spec": _constant(generalad.data.preprocess, "PREPROCESSING_SPEC", "pil-bicubic|v2"),
    "timm version": _constant(storage.fingerprint.timm, "__version__", "99.0.0"),
    "attention capture": _constant(storage.fingerprint, "ATTENTION_CAPTURE", "explicit-attention|v2"),
    "schema version": _constant(
        storage.fingerprint, "SCHEMA_VERSION", storage.fingerprint.SCHEMA_VERSION + 1
    ),
    "manifest: an image rewritten": _image_resaved,
    "manifest: an image added": _image_added,
    "manifest: a mask rewritten": _mask_changed,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, str]:
    """A tiny MVTec category and its complete store under `<tmp>/stores`: (data root, store root, store url)."""
    tmp = tmp_path_factory.mktemp("keys")
    adapter = tiny_mvtec_adapter(tmp / "mvtec")
    result = extract(adapter, tmp / "stores")
    return adapter.root, tmp / "stores", result.url


@pytest.mark.parametrize("name", list(CHANGES))
def test_changing_an_input_of_the_key_never_hits_the_old_store(
    built, tmp_path, monkeypatch, name: str
) -> None:
    import shutil

    from generalad.data import get_dataset

    data_root, store_root, base_url = built
    data = tmp_path / "mvtec"
    shutil.copytree(data_root, data)  # changes to the data stay in this test's copy
    adapter = get_dataset("mvtec_ad", data, "bottle")
    base_again, base = plan_store(adapter, TINY_SPEC, str(store_root))
    # the copy of the data has the same key: the key is a function of the inputs, not of where they lie
    assert base_again == base_url

    spec, dtype = CHANGES[name](monkeypatch, data, tmp_path)
    url, changed = plan_store(adapter, spec, str(store_root), dtype=dtype)
    assert changed.key != base.key and url != base_url
    assert is_complete(base_url) and not is_complete(url)


def test_another_weights_file_content_moves_the_key(tmp_path, tiny_adapter) -> None:
    first = plan_store(tiny_adapter, _weights_file(None, None, tmp_path)[0], str(tmp_path))[1]
    again = plan_store(tiny_adapter, _weights_file(None, None, tmp_path)[0], str(tmp_path))[1]
    other = plan_store(tiny_adapter, _weights_file(None, None, tmp_path, b"weights-b")[0], str(tmp_path))[1]
    assert first.key == again.key != other.key
    assert other.weights.startswith("file:sha256:") and other.weights != first.weights


def test_a_new_schema_version_re_extracts_and_refuses_the_old_store(built, monkeypatch) -> None:
    data_root, store_root, base_url = built
    from generalad.data import get_dataset

    adapter = get_dataset("mvtec_ad", data_root, "bottle")
    old_values = store_values(base_url)
    monkeypatch.setattr(storage.fingerprint, "SCHEMA_VERSION", storage.fingerprint.SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=r"schema version 1; this generalad reads version 2.*Re-extract"):
        FeatureStore(base_url)
    fresh = extract(adapter, store_root)
    assert fresh.url != base_url and fresh.images_extracted == 8
    assert FeatureStore(fresh.url).attrs["generalad_schema"] == 2
    for key, value in store_values(fresh.url).items():
        np.testing.assert_array_equal(value, old_values[key])  # same bytes, but never silently the old store
