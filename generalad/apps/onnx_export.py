"""One ONNX graph per model folder: backbone + discriminator (or kNN bank) + image score + anomaly map.

Contract of the exported file (``generalad export --model DIR --out model.onnx``):

- input 0 ``image``: float32 (B, 3, S, S), NCHW, the image already resized to S x S with PIL LANCZOS (aspect ratio
  not kept) and normalised with the ImageNet mean/std (``generalad.data.preprocess.preprocess_image``); B dynamic;
- output 0 ``score``: (B,) the image score (GeneralAD: mean of the top-K patch logits; kNN: the max distance);
- output 1 ``map``: (B, S, S) the anomaly map (bilinear upsampling + Gaussian blur, as ``anomaly_maps``);
- metadata (``metadata_props``, JSON strings): ``image_size`` ([S]), ``mean``, ``std`` (lists of 3), ``model``
  (identity: method, backbone, weights, layers, feature dtype, top_k, normal class, generalad version) and
  ``threshold`` (the model folder's stored threshold and normal scores, or null).

The features are rounded to the recorded feature dtype inside the graph (a Cast to float16 and back), exactly as
the training features were stored. ``generalad.apps.onnx_runtime.OnnxPredictor`` runs such a file with onnxruntime
behind ``Predictor``'s interface, so ``generalad predict --model model.onnx`` works. onnx and onnxruntime are the
optional ``onnx`` extra, imported only when used.
"""

from __future__ import annotations

import json
import os
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generalad.apps.onnx_runtime import INPUT, OUTPUTS, require
from generalad.apps.predictor import Predictor, load_predictor
from generalad.apps.thresholds import read_threshold
from generalad.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from generalad.errors import ConfigError
from generalad.method.scoring import anomaly_maps, image_scores

__all__ = ["ScoringGraph", "export_onnx"]

OPSET = 17


class ScoringGraph(nn.Module):
    """Normalised pixels (B, 3, S, S) -> (image scores (B,), anomaly maps (B, S, S)), the predictor's exact path."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.backbone = predictor.backbone
        self.model = predictor.model
        self.top_k = predictor.top_k
        self.half = predictor.feature_dtype == "float16"
        self.image_size = predictor.image_size

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.backbone.patch_tokens(pixels)
        if self.half:
            tokens = tokens.half().float()
        logits = self.model(tokens).float()
        return image_scores(logits, self.top_k), anomaly_maps(logits, self.image_size)


def _identity(predictor: Predictor) -> dict[str, Any]:
    from generalad.apps.model_io import model_method

    config = predictor.config
    features = config.get("features", {})
    try:
        version = importlib_metadata.version("generalad")
    except importlib_metadata.PackageNotFoundError:
        version = None
    return {
        "method": model_method(config),
        "backbone": predictor.backbone_name,
        "weights": features.get("weights"),
        "layers": features.get("layers"),
        "feature_dtype": predictor.feature_dtype,
        "top_k": predictor.top_k,
        "normal_class": config.get("normal_class"),
        "source_model": str(predictor.model_dir),
        "generalad_version": version,
    }


def export_onnx(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a model folder (``train`` / ``fit-folder`` / the API) to one ONNX file; returns its path.

    Raises:
        ConfigError: ``out`` exists without ``overwrite``, or onnx is not installed.
        ModelFileError / ModelMismatchError: as ``load_predictor``.
    """
    onnx = require("onnx")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    predictor = load_predictor(model_dir, weights=weights)
    graph = ScoringGraph(predictor).eval()
    size = predictor.image_size
    example = torch.zeros(2, 3, size, size)
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    # traced with autograd on and trainable discriminator weights: nn.MultiheadAttention then takes its plain path,
    # not the fused inference kernel, which has no ONNX form
    with torch.enable_grad():
        graph.model.requires_grad_(True)
        torch.onnx.export(
            graph,
            (example,),
            str(tmp),
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, dynamic batch via dynamic_axes
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes={INPUT: {0: "batch"}, OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}},
            opset_version=OPSET,
        )
    proto = onnx.load(str(tmp))
    stored = read_threshold(model_dir)
    meta = {
        "image_size": [size],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "model": _identity(predictor),
        "threshold": None if stored is None else stored.__dict__,
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(tmp))
    os.replace(tmp, out)
    return out
