"""The feature-store key: a hash of everything that changes the stored bytes (docs/design.md "Feature store")."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import timm

from generalad.backbone import BackboneSpec, weights_identity
from generalad.data import preprocess
from generalad.data.layout import check_name

__all__ = ["SCHEMA_VERSION", "StoreFingerprint", "manifest_hash", "fingerprint_for"]

# Bump when the store layout or the meaning of its arrays changes; old stores are then refused, never reused.
SCHEMA_VERSION = 1
# The CLS-attention capture method; part of the key because it defines `cls_attn`'s values.
ATTENTION_CAPTURE = "prehook-qkv-cls-row|softmax-all-tokens|patch-columns|v1"


def manifest_hash(manifest: pd.DataFrame, root: Path | None = None) -> str:
    """sha256 of the manifest's rows, plus each referenced file's size when `root` is given (cheap change check)."""
    digest = hashlib.sha256()
    columns = ["image_id", "rel_path", "split", "class_name", "label", "defect_type", "mask_paths"]
    for row in manifest[columns].itertuples(index=False):
        digest.update(json.dumps([*row[:-1], list(row[-1])], default=str).encode())
    if root is not None:
        files = sorted(set(manifest["rel_path"]).union(*map(set, manifest["mask_paths"])))
        for rel in files:
            path = Path(root) / rel
            digest.update(f"{rel}:{path.stat().st_size if path.exists() else -1}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class StoreFingerprint:
    """The inputs of the store key, kept in the store's attributes for provenance."""

    dataset: str
    category: str | None
    backbone: str
    weights: str
    image_size: int
    layers: tuple[int, ...]
    final_norm: bool
    preprocessing: str
    attention_capture: str
    dtype: str
    timm_version: str
    manifest_hash: str
    schema_version: int

    def __post_init__(self) -> None:
        # dataset and category become folder names under the store root: they must not escape it
        check_name(self.dataset, "dataset name")
        if self.category is not None:
            check_name(self.category, "category")

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @property
    def key(self) -> str:
        payload = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    @property
    def dirname(self) -> str:
        """Human-readable relative location: `<dataset>[-<category>]/<backbone>-<size>-<dtype>-<hash12>.zarr`."""
        group = self.dataset if self.category is None else f"{self.dataset}-{self.category}"
        arch = self.backbone.split(".", 1)[0]
        return f"{group}/{arch}-{self.image_size}-{self.dtype}-{self.key[:12]}.zarr"


def fingerprint_for(
    *,
    dataset: str,
    category: str | None,
    spec: BackboneSpec,
    dtype: str,
    manifest: pd.DataFrame,
    root: Path | None = None,
) -> StoreFingerprint:
    return StoreFingerprint(
        dataset=dataset,
        category=category,
        backbone=spec.name,
        weights=weights_identity(spec),
        image_size=spec.image_size,
        layers=tuple(spec.layers),
        final_norm=True,
        # read at call time (not imported by name), so the key follows the preprocessing module's constant
        preprocessing=preprocess.PREPROCESSING_SPEC,
        attention_capture=ATTENTION_CAPTURE,
        dtype=dtype,
        timm_version=timm.__version__,
        manifest_hash=manifest_hash(manifest, root),
        schema_version=SCHEMA_VERSION,
    )
