"""Backbone: tokens against timm's own forward path, CLS attention against timm's explicit (unfused) softmax,
weights from files, and fast clear failures. Models are random-initialised with LayerScale init 1.0 so every
block changes the tokens (timm's default 1e-5 would make the blocks almost identity)."""

from __future__ import annotations

import socket
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from generalad.backbone import BackboneSpec, load_backbone, weights_identity
from generalad.errors import ConfigError, WeightsError

SIZE = 56  # 4 x 4 patches: fast on one CPU thread


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _explicit_cls_attention(model: torch.nn.Module, images: torch.Tensor, block: int) -> torch.Tensor:
    """The post-softmax attention of timm's own unfused path, taken from the input of `attn_drop`."""
    attn = model.blocks[block].attn
    captured = {}
    attn.fused_attn = False
    handle = attn.attn_drop.register_forward_hook(lambda m, args, out: captured.setdefault("a", args[0]))
    try:
        with torch.inference_mode():
            model.forward_features(images)
    finally:
        handle.remove()
        attn.fused_attn = True
    return captured["a"][:, :, 0, model.num_prefix_tokens :]


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_tokens_and_attention_match_timm(name: str) -> None:
    backbone = load_backbone(BackboneSpec(name=name, weights="random", image_size=SIZE, init_values=1.0))
    images = _images()
    with torch.inference_mode():
        tokens, cls_attn = backbone(images)
        reference = backbone.model.forward_features(images)[:, backbone.model.num_prefix_tokens :]
    assert backbone.model.blocks[-1].attn.fused_attn  # capture works with fused attention left on
    assert tokens.shape == (2, 16, 384) and cls_attn.shape == (2, 6, 16)
    torch.testing.assert_close(tokens, reference, rtol=0, atol=1e-5)
    explicit = _explicit_cls_attention(backbone.model, images, -1)
    torch.testing.assert_close(cls_attn, explicit, rtol=0, atol=1e-5)
    # softmax ran over prefix tokens too, so patch columns sum to less than one
    assert (cls_attn.sum(-1) < 1).all()


def test_several_layers_are_concatenated_and_attention_comes_from_the_last_kept() -> None:
    spec = BackboneSpec(weights="random", image_size=SIZE, layers=(5, -1), init_values=1.0)
    backbone = load_backbone(spec)
    images = _images()
    model = backbone.model
    with torch.inference_mode():
        tokens, cls_attn = backbone(images)
        kept = model.forward_intermediates(
            images, indices=[5, 11], norm=True, output_fmt="NLC", intermediates_only=True
        )
    assert backbone.layers == (5, 11) and backbone.embed_dim == 768 and tokens.shape == (2, 16, 768)
    torch.testing.assert_close(tokens[..., :384], kept[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(tokens[..., 384:], kept[1], rtol=0, atol=1e-6)
    assert not torch.allclose(kept[0], kept[1], atol=1e-2)  # the blocks really changed the tokens
    torch.testing.assert_close(cls_attn, _explicit_cls_attention(model, images, 11), rtol=0, atol=1e-5)

    only_block_5 = load_backbone(
        BackboneSpec(weights="random", image_size=SIZE, layers=(5,), init_values=1.0)
    )
    with torch.inference_mode():
        _, attn5 = only_block_5(images)
    torch.testing.assert_close(
        attn5, _explicit_cls_attention(only_block_5.model, images, 5), rtol=0, atol=1e-5
    )


def test_random_weights_are_reproducible_from_the_seed() -> None:
    images = _images()
    outputs = []
    for seed in (3, 3, 4):
        with torch.inference_mode():
            outputs.append(
                load_backbone(BackboneSpec(weights="random", seed=seed, image_size=SIZE))(images)[0]
            )
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_loads_and_position_embedding_is_resampled(tmp_path, suffix: str) -> None:
    # weights of the native 518 model, loaded at 56: the position embedding must be resampled
    source = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, init_values=1.0)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    spec = BackboneSpec(weights=str(path), image_size=SIZE)
    backbone = load_backbone(spec)
    reference = timm.create_model(
        "vit_small_patch14_dinov2",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        img_size=SIZE,
        num_classes=0,
    ).eval()
    images = _images()
    with torch.inference_mode():
        tokens, _ = backbone(images)
        expected = reference.forward_features(images)[:, 1:]
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)
    assert (
        weights_identity(spec).startswith("file:sha256:")
        and len(weights_identity(spec)) == len("file:sha256:") + 64
    )


def test_weights_of_another_architecture_are_refused_naming_the_file(tmp_path) -> None:
    other = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=SIZE)
    path = tmp_path / "reg4.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="reg4.safetensors.*vit_small_patch14_dinov2"):
        load_backbone(BackboneSpec(weights=str(path), image_size=SIZE))


def test_unreachable_hub_fails_fast_with_a_way_out(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    started = time.perf_counter()
    with pytest.raises(WeightsError, match="--weights"):
        load_backbone(BackboneSpec(weights="hub", image_size=SIZE))
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 100}, "not a multiple of the patch size 14"),
        ({"name": "resnet50"}, "not a timm VisionTransformer with a class token"),
        ({"name": "no_such_model_xyz"}, "unknown backbone"),
        ({"name": "vit_base_patch16_224", "image_size": 100}, "valid sizes are multiples of 16"),
        ({"layers": ()}, "at least one block"),
        ({"weights": "hubb"}, "weights must be"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BackboneSpec(**kwargs)


def test_layer_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="layer 12 is out of range"):
        load_backbone(BackboneSpec(weights="random", image_size=SIZE, layers=(12,)))
