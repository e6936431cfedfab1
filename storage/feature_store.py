"""The Zarr v3 feature store: whole-shard writes, completeness, and streaming reads.

The files of a store (arrays, manifest, splits, shard markers, COMPLETE.json) are `storage.store_layout`.

A shard is the unit of writing: one writer writes all of it, then its marker. A store without COMPLETE.json is
never read for training. Writes are deterministic, so two writers of the same shard write the same bytes.

Reads: tokens and attention rows are read as byte ranges of the shard files, one request per run of adjacent
rows (`storage.row_reads`), and cast to float32 with torch; ``reads="zarr"`` (or ``GENERALAD_STORE_READS=zarr``)
reads through Zarr slices and orthogonal selections instead, the path before `storage.row_reads`.

On an object store (s3://) nothing relies on a rename: array shards, markers and COMPLETE.json are one PUT each,
each after what it vouches for, and listings are read fresh; a writer killed mid-shard leaves objects without a
marker, unread (no COMPLETE.json) and rewritten whole by the next writer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr

from generalad.errors import DatasetError, StoreError
from generalad.method.feature_source import FeatureBatch
from generalad.method.split import OneClassSplit
from storage import faultpoints, urls
from storage import fingerprint as _fingerprint
from storage.fingerprint import StoreFingerprint
from storage.prefetch import prefetched
from storage.row_reads import ShardRows, read_rows, zarr_rows
from storage.store_layout import (
    COMPLETE_FILE,
    MANIFEST_FILE,
    SHARDS_DIR,
    SPLITS_FILE,
    StoreLayout,
    is_complete,
    read_json,
    read_parquet,
    shard_checksum,
    splits_frame,
    write_parquet,
)

__all__ = ["FeatureStore", "StoreWriter", "READS_ENV"]

READS_ENV = "GENERALAD_STORE_READS"
_TMP_RE = re.compile(r"\.tmp-[0-9a-f]{32}$")


class StoreWriter:
    """Creates a store (or reopens a partial one with the same key) and writes whole shards into it."""

    def __init__(
        self,
        url: str,
        fingerprint: StoreFingerprint,
        layout: StoreLayout,
        manifest: pd.DataFrame,
        splits: dict[str, OneClassSplit],
        *,
        protocol: str = "official",
    ):
        self.url = urls.normalize(url)
        self.protocol = protocol
        self.fingerprint = fingerprint
        self.layout = layout
        if len(manifest) != layout.num_images:
            raise StoreError(f"manifest has {len(manifest)} rows, layout says {layout.num_images} images")
        self._group = self._open_or_create(manifest, splits)

    def _attrs(self) -> dict[str, Any]:
        return {
            "generalad_schema": _fingerprint.SCHEMA_VERSION,
            "key": self.fingerprint.key,
            "fingerprint": self.fingerprint.as_dict(),
            "layout": self.layout.__dict__,
            "protocol": self.protocol,
        }

    def _open_or_create(self, manifest: pd.DataFrame, splits: dict[str, OneClassSplit]) -> zarr.Group:
        """Open the store of this key, creating whatever a killed or concurrent writer left missing.

        Every step is idempotent, so a writer killed at any point (after the group, between arrays, before the
        manifest) leaves a store the next writer completes; nothing that exists is ever cleared.
        """
        store = urls.zarr_store(self.url)
        try:
            group = zarr.open_group(store, mode="r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            group = zarr.open_group(store, mode="a", attributes=self._attrs())
        existing = dict(group.attrs)
        schema = _fingerprint.SCHEMA_VERSION
        if existing.get("key") != self.fingerprint.key or existing.get("generalad_schema") != schema:
            raise StoreError(
                f"{self.url} exists but holds another store (key {existing.get('key')!r}, schema "
                f"{existing.get('generalad_schema')!r}); delete it or choose another store root"
            )
        self._remove_temporaries()
        faultpoints.reach("group-ready", url=self.url)
        arrays = self._ensure_arrays(group)
        # The shard shape is fixed when the arrays are created: a rerun with another shard size resumes the
        # store in its own shards (the markers name shards of that size), never in a mixture.
        stored_shard = int(arrays["tokens"].shards[0])
        if stored_shard != self.layout.shard_size:
            self.layout = replace(self.layout, shard_size=stored_shard)
        for name, frame in ((MANIFEST_FILE, manifest), (SPLITS_FILE, splits_frame(splits))):
            if not urls.exists(urls.join(self.url, name)):
                write_parquet(urls.join(self.url, name), frame)
        return group

    def _expected_arrays(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        lay = self.layout
        feature_dtype = np.dtype(lay.dtype)
        out = {
            "tokens": ((lay.num_images, lay.num_patches, lay.embed_dim), feature_dtype),
            "cls_attn": ((lay.num_images, lay.num_heads, lay.num_patches), feature_dtype),
        }
        if lay.has_masks:
            out["masks"] = ((lay.num_images, lay.image_size, lay.image_size), np.dtype(np.uint8))
        return out

    def _ensure_arrays(self, group: zarr.Group) -> dict[str, zarr.Array]:
        """Every array of the layout: the existing one (checked) or a new one."""
        arrays = {}
        for name, (shape, dtype) in self._expected_arrays().items():
            try:
                array = group[name]
            except KeyError:
                try:
                    # fp16 ViT tokens compress ~1.09x with zstd (docs/design.md "Feature store"): not worth
                    # the CPU on every read.
                    array = group.create_array(
                        name,
                        shape=shape,
                        chunks=(1, *shape[1:]),
                        shards=(self.layout.shard_size, *shape[1:]),
                        dtype=dtype,
                        compressors=None if name != "masks" else "auto",
                    )
                except zarr.errors.ContainsArrayError:  # another writer created it just now
                    array = group[name]
            if tuple(array.shape) != shape or np.dtype(array.dtype) != dtype:
                raise StoreError(
                    f"{self.url}: array {name!r} has shape {tuple(array.shape)} {array.dtype}, expected "
                    f"{shape} {dtype}; delete the store and extract again"
                )
            arrays[name] = array
        return arrays

    def _remove_temporaries(self) -> None:
        """Delete temporary files of killed writers (ours `*.tmp-<hex>`, zarr's `*.<hex>.partial`): local only,
        under the writer lock, so no live writer owns them."""
        if not urls.is_local(self.url):
            return
        root = Path(self.url)
        for path in root.rglob("*"):
            if path.is_file() and (_TMP_RE.search(path.name) or path.name.endswith(".partial")):
                path.unlink(missing_ok=True)

    def done_shards(self) -> set[int]:
        """The shards whose marker exists (markers are written after the shard's bytes, each in one write)."""
        names = urls.list_names(urls.join(self.url, SHARDS_DIR))
        return {int(name.split(".")[0]) for name in names if re.fullmatch(r"\d+\.json", name)}

    def write_shard(
        self, shard: int, tokens: np.ndarray, cls_attn: np.ndarray, masks: np.ndarray | None = None
    ) -> None:
        """Write every array of one shard, then its marker (the marker is what says the shard is there)."""
        start, stop = self.layout.shard_rows(shard)
        dtype = np.dtype(self.layout.dtype)
        tokens, cls_attn = tokens.astype(dtype, copy=False), cls_attn.astype(dtype, copy=False)
        if tokens.shape[0] != stop - start or cls_attn.shape[0] != stop - start:
            raise StoreError(f"shard {shard} needs {stop - start} images, got {tokens.shape[0]}")
        self._group["tokens"][start:stop] = tokens
        faultpoints.reach("array-written", url=self.url, shard=shard, array="tokens")
        self._group["cls_attn"][start:stop] = cls_attn
        faultpoints.reach("array-written", url=self.url, shard=shard, array="cls_attn")
        parts = [tokens, cls_attn]
        if self.layout.has_masks:
            if masks is None:
                raise StoreError(f"shard {shard}: the store has masks but none were given")
            masks = masks.astype(np.uint8, copy=False)
            self._group["masks"][start:stop] = masks
            faultpoints.reach("array-written", url=self.url, shard=shard, array="masks")
            parts.append(masks)
        marker = {"shard": shard, "start": start, "stop": stop, "checksum": shard_checksum(*parts)}
        urls.write_bytes_atomic(
            urls.join(self.url, SHARDS_DIR, f"{shard:05d}.json"), json.dumps(marker).encode()
        )

    def verify(self) -> None:
        """Read every shard back and compare with its marker's checksum; StoreError on any difference."""
        names = ["tokens", "cls_attn"] + (["masks"] if self.layout.has_masks else [])
        for shard in range(self.layout.num_shards):
            marker = read_json(urls.join(self.url, SHARDS_DIR, f"{shard:05d}.json"))
            if marker is None:
                raise StoreError(f"{self.url}: shard {shard} was never written")
            start, stop = self.layout.shard_rows(shard)
            actual = shard_checksum(*(self._group[n][start:stop] for n in names))
            if actual != marker["checksum"] or (marker["start"], marker["stop"]) != (start, stop):
                # drop the marker, so that the rerun this message asks for really rewrites the shard
                fs, path = urls.filesystem(urls.join(self.url, SHARDS_DIR, f"{shard:05d}.json"))
                fs.rm(path)
                raise StoreError(
                    f"{self.url}: shard {shard} does not match its checksum; its marker was removed, rerun "
                    "the extraction to rewrite it"
                )

    def mark_complete(self, info: dict[str, Any] | None = None) -> None:
        """Verify, consolidate metadata once, then publish COMPLETE.json: only now may the store be read."""
        self.verify()
        faultpoints.reach("verified", url=self.url)
        zarr.consolidate_metadata(urls.zarr_store(self.url))
        payload = {"key": self.fingerprint.key, "num_images": self.layout.num_images, **(info or {})}
        urls.write_bytes_atomic(urls.join(self.url, COMPLETE_FILE), json.dumps(payload, indent=2).encode())


class FeatureStore:
    """A complete store opened for reading; a `FeatureSource` for training and evaluation.

    ``prefetch`` batches are read ahead; ``reads`` is "runs" or "zarr" (module docstring); ``dtype`` is what
    `read` returns, None for the stored dtype (the consumer casts where it computes, e.g. on a GPU).
    """

    def __init__(
        self,
        url: str,
        *,
        prefetch: int = 2,
        reads: str | None = None,
        dtype: torch.dtype | None = torch.float32,
    ):
        self.url = urls.normalize(url)
        if not urls.exists(self.url):
            raise StoreError(f"no feature store at {self.url}")
        if not is_complete(self.url):
            raise StoreError(
                f"feature store {self.url} is incomplete (no {COMPLETE_FILE}); rerun the extraction to finish it"
            )
        group = zarr.open_group(urls.zarr_store(self.url, read_only=True), mode="r")
        attrs = dict(group.attrs)
        schema = attrs.get("generalad_schema")
        if schema != _fingerprint.SCHEMA_VERSION:
            raise StoreError(
                f"feature store {self.url} has schema version {schema!r}; this generalad reads version "
                f"{_fingerprint.SCHEMA_VERSION}. Re-extract the features (the old store is never reused)."
            )
        self.attrs = attrs
        self.fingerprint = attrs["fingerprint"]
        self.layout = StoreLayout(**attrs["layout"])
        self._tokens = group["tokens"]
        self._attn = group["cls_attn"]
        self._masks = group["masks"] if self.layout.has_masks else None
        self.prefetch = prefetch
        self.dtype = dtype
        self.reads = reads or os.environ.get(READS_ENV, "").strip().lower() or "runs"
        if self.reads not in ("runs", "zarr"):
            raise StoreError(f"reads must be 'runs' or 'zarr', got {self.reads!r}")
        self._readers = {
            name: ShardRows.of(urls.join(self.url, name), array) if self.reads == "runs" else None
            for name, array in (("tokens", self._tokens), ("cls_attn", self._attn))
        }
        self._manifest: pd.DataFrame | None = None
        self._splits_frame: pd.DataFrame | None = None

    @classmethod
    def open(cls, url: str, **kwargs) -> FeatureStore:
        return cls(url, **kwargs)

    # FeatureSource protocol
    @property
    def num_images(self) -> int:
        return self.layout.num_images

    @property
    def num_patches(self) -> int:
        return self.layout.num_patches

    @property
    def embed_dim(self) -> int:
        return self.layout.embed_dim

    @property
    def num_heads(self) -> int:
        return self.layout.num_heads

    @property
    def image_size(self) -> int:
        return self.layout.image_size

    @property
    def has_masks(self) -> bool:
        return self.layout.has_masks

    @property
    def key(self) -> str:
        return self.attrs["key"]

    @property
    def dataset(self) -> str:
        return self.fingerprint["dataset"]

    @property
    def category(self) -> str | None:
        return self.fingerprint["category"]

    @property
    def manifest(self) -> pd.DataFrame:
        if self._manifest is None:
            frame = read_parquet(urls.join(self.url, MANIFEST_FILE))
            frame["mask_paths"] = frame["mask_paths"].map(lambda v: tuple(v) if v is not None else ())
            self._manifest = frame
        return self._manifest

    @property
    def normal_classes(self) -> list[str]:
        return list(dict.fromkeys(self._splits()["normal_class"]))

    def _splits(self) -> pd.DataFrame:
        if self._splits_frame is None:
            self._splits_frame = read_parquet(urls.join(self.url, SPLITS_FILE))
        return self._splits_frame

    def split(self, normal_class: str) -> OneClassSplit:
        """The one-class split with `normal_class` as normal, as the dataset's protocol defined it."""
        frame = self._splits()
        part = frame[frame["normal_class"] == str(normal_class)]
        if part.empty:
            raise DatasetError(
                f"unknown class {normal_class!r} for {self.url}; classes: {', '.join(self.normal_classes)}"
            )
        train, test = part[part["role"] == "train"], part[part["role"] == "test"]
        return OneClassSplit(
            str(normal_class),
            train["row"].to_numpy(np.int64),
            test["row"].to_numpy(np.int64),
            test["label"].to_numpy(np.int8),
        )

    def read(self, rows: Sequence[int]) -> FeatureBatch:
        """Tokens and attention of `rows` (any order, repeats allowed) as tensors of `dtype`."""
        index = np.asarray(rows, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= self.num_images):
            raise StoreError(f"row index out of range 0..{self.num_images - 1}")
        tokens = torch.from_numpy(read_rows(self._readers["tokens"], self._tokens, index))
        attn = torch.from_numpy(read_rows(self._readers["cls_attn"], self._attn, index))
        if self.dtype is not None:
            tokens, attn = tokens.to(self.dtype), attn.to(self.dtype)
        return tokens, attn

    def masks(self, rows: Sequence[int]) -> np.ndarray:
        if self._masks is None:
            raise StoreError(f"feature store {self.url} has no masks")
        return zarr_rows(self._masks, np.asarray(rows, dtype=np.int64))

    def iter_batches(self, batches: Iterable[Sequence[int]]) -> Iterator[FeatureBatch]:
        """One batch per index list, read ahead by `prefetch` batches in a background thread."""
        return prefetched(((lambda rows=rows: self.read(rows)) for rows in batches), depth=self.prefetch)
