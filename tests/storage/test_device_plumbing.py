"""The device reaches every torch call of extraction, store-based training and prediction (run on `meta`, see
tests/fixtures/meta_device.py), and the extraction precision is part of the store key without moving fp32 keys."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from generalad.apps.predictor import Predictor
from generalad.apps.train_job import train_from_store
from generalad.backbone import load_backbone
from generalad.method.presets import preset_for
from generalad.method.training import build_discriminator
from storage import urls
from storage.extraction import extract_features, plan_store
from storage.feature_store import FeatureStore
from storage.store_layout import COMPLETE_FILE
from tests.fixtures.meta_device import OnMeta
from tests.fixtures.stores import TINY_CLASS, TINY_SPEC


def test_extraction_runs_the_backbone_on_the_requested_device(tiny_adapter, tmp_path) -> None:
    with OnMeta() as mode:
        result = extract_features(
            tiny_adapter, TINY_SPEC, str(tmp_path / "stores"), device="meta", shard_size=4, progress=False
        )
    assert mode.devices() == {"meta"}, mode.heavy
    assert {"conv", "linear", "layer_norm", "softmax"} <= mode.families()  # patch embed, blocks, capture
    assert result.device == "meta" and result.images_extracted == len(tiny_adapter.manifest())
    complete = json.loads(Path(urls.join(result.url, COMPLETE_FILE)).read_text())
    assert complete["device"] == "meta" and complete["precision"] == "fp32"


def test_store_training_and_scoring_run_on_the_requested_device(tiny_adapter, tmp_path) -> None:
    url = extract_features(
        tiny_adapter, TINY_SPEC, str(tmp_path / "stores"), device="cpu", progress=False
    ).url
    store = FeatureStore.open(url)
    preset = preset_for("mvtec_ad").with_overrides(epochs=2, batch_size=2, top_k=2, mlp_dim=16)
    with OnMeta() as mode:
        result = train_from_store(
            store, TINY_CLASS, preset=preset, eval_every_epoch=True, progress=False, device="meta"
        )
    # the pixel maps' blur is a convolution of CPU logits after scoring: post-processing, not the model
    model_devices = {device for family, device in mode.heavy if family != "conv"}
    assert model_devices == {"meta"}, mode.heavy
    assert result.device == "meta"


def test_prediction_runs_both_networks_on_the_requested_device(tmp_path) -> None:
    backbone = load_backbone(TINY_SPEC).to("meta")
    preset = preset_for("folder").with_overrides(mlp_dim=16)
    model = build_discriminator(backbone.num_patches, backbone.embed_dim, preset).to("meta").eval()
    predictor = Predictor(model, backbone, {}, None, "float16", tmp_path, device="meta")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    with OnMeta() as mode:
        logits = predictor.logits([image, image])
    assert mode.devices() == {"meta"}, mode.heavy
    assert "conv" in mode.families() and "scaled_dot_product" in mode.families()
    assert logits.shape == (2, backbone.num_patches) and logits.device.type == "cpu"


def test_fp32_store_keys_are_the_keys_stores_had_before_precisions(tiny_adapter, tmp_path) -> None:
    _, fp32 = plan_store(tiny_adapter, TINY_SPEC, str(tmp_path))
    fields = fp32.as_dict()
    assert "precision" not in fields
    # the key is the sha256 of exactly the fields stores were keyed by before (no precision among them)
    before = {k: v for k, v in fields.items()}
    assert fp32.key == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    url_bf16, bf16 = plan_store(tiny_adapter, TINY_SPEC, str(tmp_path), precision="bf16")
    assert bf16.as_dict()["precision"] == "bf16" and bf16.key != fp32.key
    assert "-bf16-" in url_bf16 and "-bf16-" not in fp32.dirname
