"""The frozen ViT backbone: weights from the hub, a local file or an explicit random init; patch tokens and
CLS-to-patch attention per image (docs/method.md section 1).

Any timm VisionTransformer with a class token works (DINOv2 with or without registers, supervised ViT, OpenCLIP,
DINO): the patch size comes from the model (N = (S/p)^2), and the image size must be a multiple of it
(`default_image_size`: 518 for patch 14, 224 for patch 16 and 8). The CLS attention is recomputed from timm's
generic attention block (`qkv`, `q_norm`, `k_norm`, `scale`); a model whose last kept block has another
attention module is refused with ConfigError.

Example:
    >>> spec = BackboneSpec(name="vit_small_patch14_dinov2", weights="random", image_size=112)
    >>> backbone = load_backbone(spec)
    >>> tokens, cls_attn = backbone(images)  # (B, N, E), (B, H, N)
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import timm
import torch
from torch import nn

from generalad.data.preprocess import check_image_size, default_image_size
from generalad.defaults import DEFAULT_BACKBONE, IMAGE_SIZE, WeightsSource
from generalad.errors import ConfigError, WeightsError

__all__ = [
    "BackboneSpec",
    "Backbone",
    "ViTInfo",
    "vit_info",
    "load_backbone",
    "weights_identity",
    "default_image_size",
    "SUPPORTED_BACKBONES",
]

# the DINOv2 family the paper's Tables 1-3 use; any other timm ViT with a class token is accepted too
SUPPORTED_BACKBONES = tuple(
    f"vit_{size}_patch14{reg}_dinov2" for size in ("small", "base", "large", "giant") for reg in ("", "_reg4")
)
_ATTENTION_PARTS = ("qkv", "num_heads", "head_dim", "scale", "q_norm", "k_norm")


@dataclass(frozen=True)
class ViTInfo:
    """What the backbone code needs to know about a timm architecture before loading weights."""

    patch_size: int
    num_prefix_tokens: int
    depth: int


def _check_vit(model: nn.Module, arch: str) -> ViTInfo:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer) or getattr(model, "cls_token", None) is None:
        raise ConfigError(
            f"backbone {arch!r} is not a timm VisionTransformer with a class token; GeneralAD needs the CLS "
            "attention (e.g. vit_base_patch14_dinov2, vit_base_patch16_224, vit_base_patch8_224)"
        )
    patch = model.patch_embed.patch_size
    patch = int(patch[0] if isinstance(patch, tuple | list) else patch)
    return ViTInfo(patch, int(model.num_prefix_tokens), len(model.blocks))


@lru_cache(maxsize=64)
def vit_info(arch: str) -> ViTInfo:
    """Patch size, prefix tokens and depth of a timm ViT (built on the meta device: no memory, no weights).

    Raises:
        ConfigError: timm knows no such model, or it is not a ViT with a class token.
    """
    if not timm.is_model(arch):
        raise ConfigError(
            f"unknown backbone {arch!r}: not a timm model name (any timm ViT with a class token works, e.g. "
            f"{', '.join(SUPPORTED_BACKBONES[:2])}, vit_base_patch16_224, vit_base_patch8_224)"
        )
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    return _check_vit(model, arch)


_HUB_HOST = ("huggingface.co", 443)
_HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that defines the backbone's output.

    Args:
        name: timm ViT name (with a class token), optionally with a pretrained tag
            (`vit_small_patch14_dinov2.lvd142m`, `vit_base_patch16_224.augreg_in21k`, `vit_base_patch8_224.dino`).
        weights: "hub" (timm / Hugging Face hub), "random" (explicit random init, for tests and offline runs),
            or the path of a local `.safetensors` / `.pth` weights file.
        seed: seed of the random init (only used with weights="random").
        image_size: input side S, a multiple of the model's patch size p (N = (S/p)^2 patches).
        layers: block indices whose final-LayerNorm tokens are kept (negative counts from the end), concatenated
            on the channel axis; the CLS attention comes from the last of them.
        init_values: LayerScale init for random weights. timm's default (1e-5) makes the blocks nearly identity;
            tests that must exercise the blocks use 1.0.
    """

    name: str = DEFAULT_BACKBONE
    weights: str = "hub"
    seed: int = 0
    image_size: int = IMAGE_SIZE
    layers: tuple[int, ...] = (-1,)
    init_values: float | None = None
    _arch: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        arch = self.name.split(".", 1)[0]
        object.__setattr__(self, "_arch", arch)
        check_image_size(self.image_size, vit_info(arch).patch_size)
        if not self.layers:
            raise ConfigError("layers must name at least one block")
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if self.weights not in ("hub", "random") and not Path(self.weights).suffix:
            raise ConfigError(f"weights must be 'hub', 'random' or a weights file path, got {self.weights!r}")

    @property
    def arch(self) -> str:
        return self._arch

    @property
    def pretrained(self) -> bool:
        return self.weights != "random"

    @property
    def patch_size(self) -> int:
        return vit_info(self._arch).patch_size

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def _hub_id(name: str) -> str:
    """The Hugging Face repo of a timm name (`name` or `name.tag`; timm's default tag when none is given)."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsError(f"timm knows no hub weights for {name!r}")
    return cfg.hf_hub_id


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_identity(spec: BackboneSpec) -> str:
    """A string that changes whenever the weights' values change: `hub:<repo>`, `file:sha256:<hex>`, `random:<seed>`."""
    return weights_source(spec).format()


def weights_source(spec: BackboneSpec) -> WeightsSource:
    """The spec's weights as a `WeightsSource` (a file's sha256 is computed here)."""
    if spec.weights == "random":
        return WeightsSource(kind="random", seed=spec.seed, init_values=spec.init_values)
    if spec.weights == "hub":
        return WeightsSource(kind="hub", repo=_hub_id(spec.name))
    path = Path(spec.weights)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    return WeightsSource(kind="file", sha256=_file_sha256(path))


def _hub_unreachable_message(repo: str, reason: str) -> str:
    return (
        f"pretrained weights {repo!r} are not in the local Hugging Face cache and the hub is unreachable ({reason}). "
        "Either download them once on a machine with internet (`huggingface-cli download "
        f"{repo} model.safetensors`) and copy the file here, then pass `--weights /path/to/model.safetensors`; "
        "or use `--weights random` for an offline smoke run (random features: numbers are not the paper's)."
    )


def _hub_weights_file(repo: str) -> Path:
    """The hub weights as a local file, from the cache or downloaded; fails within seconds when offline."""
    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(repo, "model.safetensors")
    if isinstance(cached, str):
        return Path(cached)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise WeightsError(_hub_unreachable_message(repo, "HF_HUB_OFFLINE is set"))
    # Probe the host first: without it, the hub client retries for about 50 s before giving up.
    try:
        socket.create_connection(_HUB_HOST, timeout=_HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise WeightsError(_hub_unreachable_message(repo, f"{_HUB_HOST[0]}: {exc}")) from None
    try:
        return Path(huggingface_hub.hf_hub_download(repo, "model.safetensors"))
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise WeightsError(_hub_unreachable_message(repo, f"{type(exc).__name__}: {exc}")) from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, never executing pickled code."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a flat dict of tensors")
    return state


def _load_weights(model: nn.Module, path: Path, arch: str) -> None:
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = _read_state_dict(path)
    try:
        # timm's filter maps original DINOv2 key names and resamples the position embedding to our grid.
        state = checkpoint_filter_fn(state, model)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0][:300]
        raise WeightsError(f"weights file {path} does not fit {arch}: {first}") from None


class Backbone(nn.Module):
    """A frozen timm ViT returning kept-layer patch tokens and the last kept block's CLS attention."""

    def __init__(self, model: nn.Module, spec: BackboneSpec) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.spec = spec
        depth = len(model.blocks)
        layers = []
        for index in spec.layers:
            absolute = index + depth if index < 0 else index
            if not 0 <= absolute < depth:
                raise ConfigError(f"layer {index} is out of range for {spec.arch} with {depth} blocks")
            layers.append(absolute)
        self.layers = tuple(layers)
        info = _check_vit(model, spec.arch)
        self.num_prefix = info.num_prefix_tokens
        self.patch_size = info.patch_size
        self._captured: torch.Tensor | None = None
        self._capture = True  # off in patch_tokens (the ONNX export needs no CLS attention)
        attn = model.blocks[self.layers[-1]].attn
        missing = [part for part in _ATTENTION_PARTS if not hasattr(attn, part)]
        if missing:
            raise ConfigError(
                f"{spec.arch}: the attention of block {self.layers[-1]} ({type(attn).__name__}) lacks "
                f"{missing}; the CLS-attention capture needs timm's generic Attention (qkv projection)"
            )
        attn.register_forward_pre_hook(self._capture_cls_attention)

    @property
    def grid(self) -> int:
        return self.spec.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim) * len(self.layers)

    @property
    def num_heads(self) -> int:
        return int(self.model.blocks[self.layers[-1]].attn.num_heads)

    @cached_property
    def identity(self) -> str:
        return weights_identity(self.spec)

    def _capture_cls_attention(self, module: nn.Module, args: tuple) -> None:
        """Recompute the CLS query's attention row from the block's own qkv projection (fused attention stays on)."""
        if not self._capture:
            return
        x = args[0]
        batch, tokens, _ = x.shape
        qkv = (
            module.qkv(x).reshape(batch, tokens, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
        )
        q_cls, k = qkv[0][:, :, :1], qkv[1]
        q_cls, k = module.q_norm(q_cls), module.k_norm(k)
        logits = (q_cls * module.scale) @ k.transpose(-2, -1)  # (B, H, 1, T)
        # softmax over CLS + registers + patches, then keep the patch columns (rows no longer sum to 1)
        self._captured = logits.softmax(dim=-1)[:, :, 0, self.num_prefix :]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed images (B, 3, S, S) -> tokens (B, N, E) and CLS attention (B, H, N)."""
        self._captured = None
        kept = self.model.forward_intermediates(
            images,
            indices=list(self.layers),
            norm=True,  # the final LayerNorm on every kept layer
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        tokens = kept[0] if len(kept) == 1 else torch.cat(kept, dim=-1)
        cls_attn, self._captured = self._captured, None
        return tokens, cls_attn

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, E) only, without the CLS-attention capture (what the ONNX export traces)."""
        self._capture = False
        try:
            return self(images)[0]
        finally:
            self._capture = True


def load_backbone(spec: BackboneSpec) -> Backbone:
    """Build the timm model for `spec` and load its weights; WeightsError with a clear fix when they are unreachable."""
    kwargs: dict = {"img_size": spec.image_size, "num_classes": 0}
    if spec.weights == "random":
        if spec.init_values is not None:
            kwargs["init_values"] = spec.init_values
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = timm.create_model(spec.name, pretrained=False, **kwargs)
        return Backbone(model, spec)
    path = _hub_weights_file(_hub_id(spec.name)) if spec.weights == "hub" else Path(spec.weights)
    model = timm.create_model(spec.name, pretrained=False, weight_init="skip", **kwargs)  # weights load next
    _load_weights(model, path, spec.arch)
    return Backbone(model, spec)


def resolve_weights(weights: str, name: str) -> str:
    """`auto` becomes `hub` when the pretrained weights are cached or reachable, else `random` (said loudly by
    every report row and table, whose weights column reads `random:<seed>`); other values pass through."""
    if weights != "auto":
        return weights
    try:
        _hub_weights_file(_hub_id(name))
    except WeightsError:
        return "random"
    return "hub"
