"""Running a file written by ``generalad export`` (``generalad.apps.onnx_export``) with onnxruntime.

``OnnxPredictor`` has ``generalad.apps.predictor.Predictor``'s interface, so ``predict_to_folder`` and
``generalad predict --model model.onnx`` take it. The graph computes the image score and the map itself, so a
"logits" row here is (score, map flattened) and ``scores`` / ``maps`` only unpack it. The stored threshold comes from
the file's ``threshold`` metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from generalad.apps.thresholds import StoredThreshold
from generalad.data.preprocess import preprocess_image
from generalad.errors import ConfigError

__all__ = ["INPUT", "OUTPUTS", "require", "OnnxPredictor", "load_onnx_predictor"]

INPUT = "image"
OUTPUTS = ("score", "map")


def require(name: str):
    """Import an optional package of the ``onnx`` extra, or say how to install it."""
    try:
        return __import__(name)
    except ImportError:
        raise ConfigError(
            f"ONNX needs the optional package {name!r}: pip install 'generalad[onnx]'"
        ) from None


@dataclass
class OnnxPredictor:
    """An exported file behind ``Predictor``'s interface. Its ``logits`` rows are (score, map flattened): the graph
    computes both, so ``scores`` and ``maps`` only unpack them."""

    session: Any
    meta: dict[str, Any]
    model_dir: Path
    device: str = "cpu"

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"][0])

    @property
    def num_patches(self) -> int:  # the width of a packed row
        return 1 + self.image_size * self.image_size

    @property
    def top_k(self) -> int | None:
        return self.meta["model"].get("top_k")

    @property
    def feature_dtype(self) -> str:
        return self.meta["model"].get("feature_dtype", "float32")

    @property
    def backbone_name(self) -> str:
        return self.meta["model"].get("backbone", "")

    @property
    def config(self) -> dict[str, Any]:
        return {"features": {"weights": self.meta["model"].get("weights")}}

    def stored_threshold(self) -> StoredThreshold | None:
        data = self.meta.get("threshold")
        if not data:
            return None
        return StoredThreshold(**{**data, "normal_scores": tuple(data["normal_scores"])})

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B,), maps (B, S, S)) of preprocessed pixels (B, 3, S, S) float32."""
        score, maps = self.session.run(list(OUTPUTS), {INPUT: np.ascontiguousarray(pixels, dtype=np.float32)})
        return score, maps

    def logits(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            return torch.empty(0, self.num_patches)
        pixels = torch.stack([preprocess_image(image, self.image_size) for image in images]).numpy()
        score, maps = self.run(pixels)
        return torch.from_numpy(np.concatenate([score[:, None], maps.reshape(len(maps), -1)], axis=1))

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        return logits[:, 0].double().numpy()

    def maps(self, logits: torch.Tensor) -> np.ndarray:
        return logits[:, 1:].reshape(-1, self.image_size, self.image_size).float().numpy()


def load_onnx_predictor(path: str | os.PathLike[str], *, device: str = "cpu") -> OnnxPredictor:
    """An ``OnnxPredictor`` for a file written by ``export_onnx`` (CPU execution provider unless device is cuda)."""
    ort = require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    missing = [k for k in ("image_size", "mean", "std", "model") if k not in props]
    if missing:
        raise ConfigError(f"{path} is not a generalad export: no {', '.join(missing)} metadata")
    meta = {key: json.loads(value) for key, value in props.items()}
    return OnnxPredictor(session, meta, path, device)
