"""Loading a saved model for prediction: the discriminator and the backbone that computes its input features.

A model folder (``model.json`` + ``model.safetensors``, written by ``generalad train`` or ``generalad
fit-folder``) records the features it was trained on under ``features``: backbone name, weights identity, layers,
image size, feature dtype. ``load_predictor`` rebuilds exactly that backbone:

- ``random:<seed>`` weights: the same timm random init with the same seed (and LayerScale init when recorded);
- ``hub:<repo>``: the pretrained weights from the local Hugging Face cache (or the hub when reachable);
- ``file:sha256:<hex>``: the file given as ``weights=``, else the path recorded at fit time (``weights_file``);
  its sha256 must equal the recorded one.

Anything that does not fit (another architecture or resolution, a weights file with another hash, a
discriminator whose patch count or width differs from the backbone's output) is a ``ModelMismatchError`` before
any image is read. Features are rounded to the recorded feature dtype (float16 by default), exactly as the
training features were stored, so a test image gets the score it got at evaluation.

Example:
    >>> predictor = load_predictor("runs/grid")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from generalad.apps.model_io import load_model, model_architecture, model_top_k
from generalad.apps.thresholds import read_threshold
from generalad.backbone import Backbone, BackboneSpec, load_backbone, weights_identity
from generalad.data.preprocess import PREPROCESSING_SPEC, preprocess_image
from generalad.defaults import WeightsSource
from generalad.devices import DEFAULT_PRECISION, autocast, check_precision, pin_if_cuda, resolve_device
from generalad.errors import ConfigError
from generalad.method.discriminator import Discriminator
from generalad.method.patchcore import PatchCoreModel
from generalad.method.scoring import anomaly_maps, image_scores

__all__ = ["ModelMismatchError", "Predictor", "backbone_spec_for_model", "load_predictor"]


class ModelMismatchError(ConfigError):
    """A model folder's recorded features do not fit the backbone that would compute them."""


def backbone_spec_for_model(
    features: dict[str, Any], *, weights: str | os.PathLike[str] | None = None, model_dir: str = "the model"
) -> BackboneSpec:
    """The ``BackboneSpec`` that reproduces a model's training features, from its ``model.json`` ``features``.

    Args:
        features: the ``features`` block of ``model.json``.
        weights: a local weights file to use instead of the recorded one (needed for ``file:`` weights when the
            recorded path is absent or moved; its sha256 must match).
        model_dir: named in messages.

    Raises:
        ModelMismatchError: the block lacks what is needed, or ``weights`` has another identity.
    """
    missing = [key for key in ("backbone", "weights", "image_size", "layers") if key not in features]
    if missing:
        raise ModelMismatchError(
            f"{model_dir}: model.json records no {', '.join(missing)} under 'features', so the backbone that "
            "computed its training features is unknown; retrain it with `generalad train` or `generalad fit-folder`"
        )
    name, identity = str(features["backbone"]), str(features["weights"])
    common = {"name": name, "image_size": int(features["image_size"]), "layers": tuple(features["layers"])}
    try:
        source = WeightsSource.parse(identity)
    except ConfigError:
        raise ModelMismatchError(
            f"{model_dir}: unknown weights identity {identity!r} in model.json"
        ) from None
    if source.kind == "random":
        if weights is not None:
            raise ModelMismatchError(
                f"{model_dir} was trained on features of a random init ({identity}); it cannot use --weights {weights}"
            )
        return BackboneSpec(weights="random", seed=source.seed, init_values=source.init_values, **common)
    if source.kind == "hub":
        if weights is not None:
            raise ModelMismatchError(
                f"{model_dir} was trained on features of the hub weights {source.repo}, which "
                "prediction loads from the local Hugging Face cache; a --weights file cannot be checked against "
                "them (retrain with --weights FILE to use a local file)"
            )
        return BackboneSpec(weights="hub", **common)
    path = weights if weights is not None else features.get("weights_file")
    if path is None:
        raise ModelMismatchError(
            f"{model_dir} was trained on features of a local weights file ({identity}) whose path it does not "
            "record; pass that file with --weights FILE"
        )
    if not Path(path).is_file():
        raise ModelMismatchError(
            f"{model_dir} was trained with the weights file {path}, which does not exist here; pass the file "
            f"with --weights FILE (its sha256 must be {source.sha256[:16]}...)"
        )
    return BackboneSpec(weights=str(path), **common)


def _check_identity(spec: BackboneSpec, recorded: str, model_dir: str) -> None:
    actual = weights_identity(spec)
    if actual != recorded:
        raise ModelMismatchError(
            f"the backbone weights give {actual}, but {model_dir} was trained on features of {recorded}: "
            "its scores would be meaningless with other weights"
        )


@dataclass
class Predictor:
    """A saved discriminator with the backbone that computes its input features.

    Attributes:
        model: the discriminator (eval mode).
        backbone: the frozen backbone.
        config: the model folder's ``model.json``.
        top_k: image score = mean of the top-K patch logits (None = all patches).
        feature_dtype: the dtype the training features were stored in; fresh features are rounded to it.
        model_dir: where the model came from.
        device: torch device of both networks (resolved: ``cpu``, ``cuda:0``, ...).
        precision: the forward passes' precision (`generalad.devices`).
    """

    model: Discriminator | PatchCoreModel
    backbone: Backbone
    config: dict[str, Any]
    top_k: int | None
    feature_dtype: str
    model_dir: Path
    device: str = "cpu"
    precision: str = DEFAULT_PRECISION

    @property
    def image_size(self) -> int:
        return self.backbone.spec.image_size

    @property
    def backbone_name(self) -> str:
        return self.backbone.spec.name

    def stored_threshold(self):
        """The model folder's ``threshold.json`` (``generalad.apps.thresholds.StoredThreshold``), or None."""
        return read_threshold(self.model_dir)

    @property
    def num_patches(self) -> int:
        return self.backbone.num_patches

    def logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Patch logits (n, N) float32 on the CPU for decoded images (any size; squashed to S x S)."""
        if not images:
            return torch.empty(0, self.num_patches)
        device = torch.device(self.device)
        pixels = pin_if_cuda(
            torch.stack([preprocess_image(image, self.image_size) for image in images]), device
        )
        with torch.inference_mode(), autocast(device, self.precision):
            tokens, _ = self.backbone(pixels.to(device, non_blocking=True))
            tokens = tokens.to(getattr(torch, self.feature_dtype)).float()
            return self.model(tokens).float().cpu()

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """Image scores (n,) float64 from patch logits (n, N)."""
        return image_scores(logits, self.top_k).double().numpy()

    def maps(self, logits: torch.Tensor) -> np.ndarray:
        """Anomaly maps (n, S, S) float32 at the model's resolution from patch logits (n, N)."""
        return anomaly_maps(logits, self.image_size).numpy()


def load_predictor(
    model_dir: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = DEFAULT_PRECISION,
) -> Predictor:
    """Load a saved model and rebuild the backbone its features came from (see the module docstring).

    A ``.onnx`` file written by ``generalad export`` gives an ``OnnxPredictor`` (same interface, onnxruntime).

    Raises:
        ModelFileError: the folder is not a saved model.
        ModelMismatchError: the backbone cannot be rebuilt, or does not fit the discriminator.
        WeightsError: pretrained weights are unreachable.
    """
    model_dir = Path(model_dir)
    if model_dir.suffix == ".onnx":
        from generalad.apps.onnx_runtime import load_onnx_predictor

        return load_onnx_predictor(model_dir, device=device)
    torch_device = resolve_device(device)
    check_precision(precision, torch_device)
    device = str(torch_device)
    model, config = load_model(model_dir, device=device)
    features = dict(config.get("features") or {})
    spec = backbone_spec_for_model(features, weights=weights, model_dir=str(model_dir))
    _check_identity(spec, str(features["weights"]), str(model_dir))
    disc = model_architecture(config)
    grid = spec.grid
    for key, expected, what in (
        ("num_patches", features.get("num_patches"), "patches"),
        ("embed_dim", features.get("embed_dim"), "feature width"),
    ):
        if expected is not None and int(disc[key]) != int(expected):
            raise ModelMismatchError(
                f"{model_dir}: the discriminator takes {disc[key]} {what} but model.json's features record "
                f"{expected}; the folder mixes files of different models"
            )
    if int(disc["num_patches"]) != grid * grid:
        raise ModelMismatchError(
            f"{model_dir}: the discriminator takes {disc['num_patches']} patches but the recorded image size "
            f"{spec.image_size} gives {grid * grid} ({grid} x {grid}); the model belongs to another resolution"
        )
    recorded_prep = features.get("preprocessing")
    if recorded_prep is not None and recorded_prep != PREPROCESSING_SPEC:
        raise ModelMismatchError(
            f"{model_dir} was trained on images preprocessed as {recorded_prep!r}; this generalad preprocesses "
            f"as {PREPROCESSING_SPEC!r}: retrain the model"
        )
    backbone = load_backbone(spec).to(device)
    if backbone.embed_dim != int(disc["embed_dim"]):
        raise ModelMismatchError(
            f"{model_dir}: the discriminator takes features of width {disc['embed_dim']} but {spec.name} with "
            f"layers {list(spec.layers)} gives {backbone.embed_dim}; the model belongs to another backbone"
        )
    dtype = str(features.get("feature_dtype", "float32"))
    if dtype not in ("float16", "float32"):
        raise ModelMismatchError(f"{model_dir}: unknown feature dtype {dtype!r} in model.json")
    return Predictor(
        model=model,
        backbone=backbone,
        config=config,
        top_k=model_top_k(config),
        feature_dtype=dtype,
        model_dir=model_dir,
        device=device,
        precision=precision,
    )
