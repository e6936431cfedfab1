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

__all__ = [
    "SCHEMA_VERSION",
    "StoreFingerprint",
    "manifest_hash",
    "fingerprint_for",
    "canonical_options",
    "protocol_label",
]

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


def canonical_options(options: dict | None) -> dict:
    """Dataset options as a JSON-ready dict with sorted keys (values as JSON would write them)."""
    return json.loads(json.dumps(dict(sorted((options or {}).items())), default=str))


def protocol_label(protocol: str, options: dict | None) -> str:
    """The split protocol as reports record it: the adapter's protocol, plus `[k=v,...]` when options were given
    (e.g. `visa_visa_listing_80_20[split=listing_80_20]`), so every option is visible in the rows."""
    opts = canonical_options(options)
    if not opts:
        return protocol
    return protocol + "[" + ",".join(f"{k}={v}" for k, v in opts.items()) + "]"


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
    dataset_options: dict | None = None  # adapter options (VisA's split, ...); in the key only when given
    # the backbone forward's precision (generalad.devices); fp32 is left out of the key, so every store
    # extracted before precisions existed (all fp32) keeps its key
    precision: str = "fp32"

    def __post_init__(self) -> None:
        # dataset and category become folder names under the store root: they must not escape it
        check_name(self.dataset, "dataset name")
        if self.category is not None:
            check_name(self.category, "category")

    def as_dict(self) -> dict:
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}
        if not out["dataset_options"]:
            del out["dataset_options"]  # stores extracted without options keep the key they always had
        if out["precision"] == "fp32":
            del out["precision"]
        return out

    @property
    def key(self) -> str:
        payload = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    @property
    def dirname(self) -> str:
        """Human-readable relative location: `<dataset>[-<category>]/<backbone>-<size>-<dtype>[-<precision>]-<hash12>.zarr`
        (the precision only when it is not fp32)."""
        group = self.dataset if self.category is None else f"{self.dataset}-{self.category}"
        arch = self.backbone.split(".", 1)[0]
        precision = "" if self.precision == "fp32" else f"-{self.precision}"
        return f"{group}/{arch}-{self.image_size}-{self.dtype}{precision}-{self.key[:12]}.zarr"


def fingerprint_for(
    *,
    dataset: str,
    category: str | None,
    spec: BackboneSpec,
    dtype: str,
    manifest: pd.DataFrame,
    root: Path | None = None,
    options: dict | None = None,
    precision: str = "fp32",
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
        dataset_options=canonical_options(options) or None,
        precision=precision,
    )
