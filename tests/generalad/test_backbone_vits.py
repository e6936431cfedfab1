"""Backbones beyond DINOv2: a supervised-ViT-B/16-shaped and a DINO-ViT-B/8-shaped tiny timm ViT (and the OpenCLIP-
and register-shaped ones) give CLS attention equal to an explicit softmax(q k^T * d^-1/2) computed here from the
block's own weights, and extract, train and evaluate through the store (with the pixel-AUROC epoch selection)."""

from __future__ import annotations

import pytest
import torch

from generalad.backbone import BackboneSpec, default_image_size, load_backbone, vit_info
from generalad.errors import ConfigError
from tests.fixtures.tiny_vits import TINY_IMAGE_SIZE, register_tiny_vits

register_tiny_vits()

SHAPED = [
    "tiny_vit_base_patch16_in21k_test",
    "tiny_vit_base_patch8_dino_test",
    "tiny_vit_base_patch16_clip_test",
    "tiny_vit_base_patch14_reg4_dinov2_test",
]


def _explicit_cls_attention(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """softmax over all tokens of (q_cls . k) / sqrt(d_head), from the last block's input and its qkv weights."""
    attn = model.blocks[-1].attn
    seen = {}
    handle = attn.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach().clone()))
    try:
        with torch.inference_mode():
            model.forward_features(images)
    finally:
        handle.remove()
    x = seen["x"].double()  # (B, T, D)
    batch, tokens, dim = x.shape
    heads = attn.num_heads
    head_dim = dim // heads
    qkv = x @ attn.qkv.weight.double().T + attn.qkv.bias.double()
    q = qkv[..., :dim].reshape(batch, tokens, heads, head_dim)
    k = qkv[..., dim : 2 * dim].reshape(batch, tokens, heads, head_dim)
    logits = torch.einsum("bhd,bthd->bht", q[:, 0], k) / head_dim**0.5  # the CLS query against every token
    return logits.softmax(dim=-1)[:, :, model.num_prefix_tokens :].float()


@pytest.mark.parametrize("name", SHAPED)
def test_cls_attention_matches_explicit_softmax(name):
    info = vit_info(name)
    size = TINY_IMAGE_SIZE[info.patch_size]
    backbone = load_backbone(BackboneSpec(name=name, weights="random", image_size=size))
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        tokens, cls_attn = backbone(images)
    grid = size // info.patch_size
    assert backbone.patch_size == info.patch_size and backbone.num_patches == grid * grid == 16
    assert tokens.shape == (2, 16, 32) and cls_attn.shape == (2, 2, 16)
    torch.testing.assert_close(cls_attn, _explicit_cls_attention(backbone.model, images), rtol=0, atol=1e-5)
    assert (cls_attn.sum(-1) < 1).all()  # the softmax ran over the prefix tokens too


def test_patch_size_comes_from_the_model_and_sizes_are_checked():
    assert vit_info("vit_base_patch16_224").patch_size == 16
    assert vit_info("vit_base_patch8_224").patch_size == 8
    assert vit_info("vit_base_patch14_reg4_dinov2").num_prefix_tokens == 5
    assert (default_image_size(14), default_image_size(16), default_image_size(8)) == (518, 224, 224)
    spec = BackboneSpec(name="vit_base_patch8_224.dino", weights="random", image_size=224)
    assert spec.grid == 28
    with pytest.raises(ConfigError, match="valid sizes are multiples of 8, e.g. 96 or 104"):
        BackboneSpec(name="vit_base_patch8_224.dino", weights="random", image_size=100)


@pytest.mark.parametrize("name", ["tiny_vit_base_patch16_in21k_test", "tiny_vit_base_patch8_dino_test"])
def test_extract_train_evaluate(name, tmp_path):
    from generalad.apps.train_job import train_from_store
    from generalad.data import get_dataset
    from generalad.method.presets import preset_for
    from storage.extraction import extract_features
    from storage.feature_store import FeatureStore
    from tests.fixtures.industrial_datasets import make_mvtec

    size = TINY_IMAGE_SIZE[vit_info(name).patch_size]
    fx = make_mvtec(tmp_path / "mvtec", n_train=4, n_test_good=3, defects={"crack": 3}, side=24)
    spec = BackboneSpec(name=name, weights="random", image_size=size)
    result = extract_features(
        get_dataset("mvtec_ad", fx.root, fx.category), spec, str(tmp_path / "s"), progress=False
    )
    store = FeatureStore.open(result.url)
    assert (store.num_patches, store.embed_dim, store.image_size) == (16, 32, size)
    preset = preset_for("mvtec_ad").with_overrides(epochs=3, batch_size=2)
    run = train_from_store(
        store, fx.category, preset=preset, eval_every_epoch=True, select_on_pixel=True, progress=False
    )
    by = {(r["selection"], r["metric"]): r for r in run.metrics}
    assert {"last", "best_on_test", "best_on_test_pixel"} == {s for s, _ in by}
    # the pixel selection is the epoch whose per-epoch pixel AUROC is the highest (earliest on ties)
    per_epoch = [(m["pixel_auroc"], -m["epoch"]) for m in run.epoch_metrics]
    best_value, best_epoch = max(per_epoch)
    assert by["best_on_test_pixel", "pixel_auroc"]["epoch"] == -best_epoch
    assert by["best_on_test_pixel", "pixel_auroc"]["value"] == pytest.approx(best_value, abs=1e-12)
    assert 0.0 <= by["last", "image_auroc"]["value"] <= 1.0


def test_weights_load_from_a_file_and_name_their_hub_repo(tmp_path):
    from safetensors.torch import save_file

    from generalad.backbone import weights_identity

    name = "tiny_vit_base_patch16_in21k_test"
    source = load_backbone(BackboneSpec(name=name, weights="random", seed=3, image_size=64))
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = load_backbone(BackboneSpec(name=name, weights=str(path), image_size=64))
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        for a, b in zip(source(images), loaded(images), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert weights_identity(loaded.spec).startswith("file:sha256:")
    # the paper's Table 4 backbones resolve to their own hub repositories (no download: timm's registry)
    for timm_name in paper_table4().values():
        spec = BackboneSpec(
            name=timm_name, weights="hub", image_size=224 if "patch14" not in timm_name else 518
        )
        assert (
            weights_identity(spec) == f"hub:timm/{timm_name if '.' in timm_name else timm_name + '.lvd142m'}"
        )


def paper_table4() -> dict[str, str]:
    from generalad.apps import paper

    return dict(paper.TABLE4_BACKBONES)
