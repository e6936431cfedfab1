"""Running the frozen backbone over a dataset, once, into a feature store.

Decoding and resizing run in a pool of decode threads (PIL and the resize release the GIL) ahead of the backbone,
which computes the previous batch meanwhile; bound for a GPU, a batch is stacked into pinned memory and copied
without blocking. Shards already marked done are skipped, so a killed run resumes where it stopped; a complete
store costs no backbone work at all. The forward runs on `device` in `precision` (`generalad.devices`); a
precision other than fp32 is part of the store key.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import filelock
import numpy as np
import torch
from tqdm.auto import tqdm

from generalad.backbone import BackboneSpec, load_backbone
from generalad.data.base import DatasetAdapter, Record, manifest_record
from generalad.data.images import load_mask
from generalad.data.preprocess import preprocess_image, preprocess_mask
from generalad.devices import DEFAULT_PRECISION, autocast, check_precision, pin_if_cuda, resolve_device
from generalad.errors import ConfigError, StoreError
from storage import urls
from storage.feature_store import StoreWriter
from storage.fingerprint import StoreFingerprint, fingerprint_for, protocol_label
from storage.prefetch import prefetched
from storage.store_layout import COMPLETE_FILE, DEFAULT_SHARD_SIZE, StoreLayout, is_complete
from storage.timing import PhaseTimer

__all__ = [
    "ExtractionResult",
    "extract_features",
    "plan_store",
    "decode_record",
    "default_decode_workers",
    "FEATURE_DTYPES",
    "EXTRACTION_PHASES",
]

FEATURE_DTYPES = ("float16", "float32")
# what `extract_features(timings=...)` reports; "decode + resize" (file decode, resize, normalise, mask) runs in a
# background thread while the backbone computes, so it overlaps the other phases
EXTRACTION_PHASES = (
    "build model",
    "create store",
    "decode + resize",
    "forward + capture",
    "write shards",
    "verify + marker",
)


@dataclass(frozen=True)
class ExtractionResult:
    """What an extraction did: where the store is and how much backbone work it took."""

    url: str
    key: str
    num_images: int
    images_extracted: int  # images that went through the backbone in this call (0 when already complete)
    shards_written: int
    shards_skipped: int
    seconds: float
    device: str = ""  # where the backbone ran ("" when the store was already complete)
    precision: str = DEFAULT_PRECISION

    @property
    def reused(self) -> bool:
        return self.images_extracted == 0


def plan_store(
    adapter: DatasetAdapter,
    spec: BackboneSpec,
    store_root: str,
    *,
    dtype: str = "float16",
    precision: str = DEFAULT_PRECISION,
) -> tuple[str, StoreFingerprint]:
    """The store URL and fingerprint that an extraction of `adapter` with `spec` (in `precision`) would use."""
    if dtype not in FEATURE_DTYPES:
        raise ConfigError(f"feature dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
    manifest = adapter.manifest()
    fingerprint = fingerprint_for(
        dataset=adapter.name,
        category=adapter.category,
        spec=spec,
        dtype=dtype,
        manifest=manifest,
        root=adapter.root,
        options=adapter.options,
        precision=precision,
    )
    return urls.join(store_root, fingerprint.dirname), fingerprint


@contextlib.contextmanager
def _writer_lock(url: str) -> Iterator[None]:
    """One writer per local store at a time (others wait, then find it complete). Remote stores rely on the
    writes being deterministic: two writers of a shard write the same bytes."""
    if not urls.is_local(url):
        yield
        return
    lock_path = Path(url + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # filelock: the OS lock of each platform (flock on POSIX, msvcrt on Windows), released if the holder dies
    with filelock.FileLock(lock_path):
        yield


def _complete(url: str, fingerprint: StoreFingerprint) -> bool:
    """Whether the store at `url` is complete; StoreError when it is complete but for another key."""
    if not is_complete(url):
        return False
    fs, path = urls.filesystem(urls.join(url, COMPLETE_FILE))
    key = json.loads(fs.cat_file(path)).get("key")
    if key != fingerprint.key:
        raise StoreError(
            f"{url} is marked complete for store key {key!r}, not {fingerprint.key!r}; delete it and extract again"
        )
    return True


def decode_record(adapter: DatasetAdapter, record: Record, image_size: int, with_mask: bool):
    """One image as the backbone gets it (pixels at `image_size`) and, `with_mask`, its mask (zeros if none)."""
    image = adapter.load_image(record)
    pixels = preprocess_image(image, image_size)
    if not with_mask:
        return pixels, None
    if record.mask_paths:
        mask = load_mask([adapter.root / p for p in record.mask_paths], expected_size=image.size)
        return pixels, preprocess_mask(mask, image_size)
    return pixels, np.zeros((image_size, image_size), dtype=np.uint8)


def extract_features(
    adapter: DatasetAdapter,
    spec: BackboneSpec,
    store_root: str,
    *,
    dtype: str = "float16",
    batch_size: int = 8,
    shard_size: int = DEFAULT_SHARD_SIZE,
    device: str = "auto",
    precision: str = DEFAULT_PRECISION,
    decode_workers: int | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> ExtractionResult:
    """Extract `adapter`'s images with `spec` into `<store_root>/<dataset>/<...>.zarr`, resuming a partial store.

    Returns at once, without loading the backbone, when the store is already complete. `device`: auto, cpu,
    cuda, cuda:N; `precision`: fp32, tf32, bf16, fp16 (CUDA); `decode_workers`: decode threads (default: one
    per core). `timings`, when given, receives the wall seconds of each of `EXTRACTION_PHASES` (added to what
    it holds).
    """
    timer = PhaseTimer(timings)
    started = time.perf_counter()
    torch_device = resolve_device(device)
    check_precision(precision, torch_device)
    url, fingerprint = plan_store(adapter, spec, store_root, dtype=dtype, precision=precision)
    manifest = adapter.manifest()
    if _complete(url, fingerprint):
        return ExtractionResult(url, fingerprint.key, len(manifest), 0, 0, 0, time.perf_counter() - started)
    if len(manifest) == 0:
        raise ConfigError(f"{adapter.describe()} has no images")

    with _writer_lock(url):
        if _complete(url, fingerprint):  # another writer finished it while we waited
            return ExtractionResult(
                url, fingerprint.key, len(manifest), 0, 0, 0, time.perf_counter() - started
            )
        with timer("build model"):
            backbone = load_backbone(spec).to(torch_device)
        writer = _open_writer(adapter, url, fingerprint, manifest, backbone, spec, dtype, shard_size, timer)
        layout = writer.layout  # a partial store keeps the shard size it was created with
        done = writer.done_shards() & set(range(layout.num_shards))
        todo = [s for s in range(layout.num_shards) if s not in done]
        n_todo = sum(stop - start for start, stop in map(layout.shard_rows, todo))
        bar = tqdm(
            total=int(n_todo),
            unit="img",
            desc=f"extract {adapter.describe()} ({spec.arch}@{spec.image_size})",
            disable=not progress,
            file=sys.stderr,
        )
        records = [manifest_record(row) for row in manifest.itertuples(index=False)]
        with ThreadPoolExecutor(
            decode_workers or default_decode_workers(), thread_name_prefix="decode"
        ) as pool:
            batches = _decoded_batches(
                adapter, records, todo, layout, batch_size, spec, torch_device, pool, timer
            )
            _write_shards(writer, backbone, batches, torch_device, precision, adapter.has_masks, bar, timer)
        bar.close()
        with timer("verify + marker"):
            writer.mark_complete(
                {
                    "backbone": spec.name,
                    "weights": fingerprint.weights,
                    "grid": backbone.grid,
                    "device": str(torch_device),
                    "precision": precision,
                }
            )
    return ExtractionResult(
        url,
        fingerprint.key,
        len(manifest),
        int(n_todo),
        len(todo),
        len(done),
        time.perf_counter() - started,
        str(torch_device),
        precision,
    )


def _open_writer(
    adapter, url, fingerprint, manifest, backbone, spec, dtype, shard_size, timer
) -> StoreWriter:
    """The store's writer: created with this layout, or reopened (a partial store keeps its own shard size)."""
    layout = StoreLayout(
        num_images=len(manifest),
        num_patches=backbone.num_patches,
        embed_dim=backbone.embed_dim,
        num_heads=backbone.num_heads,
        image_size=spec.image_size,
        dtype=dtype,
        has_masks=adapter.has_masks,
        shard_size=shard_size,
    )
    splits = {name: adapter.one_class_split(manifest, name) for name in adapter.normal_classes()}
    with timer("create store"):
        return StoreWriter(
            url,
            fingerprint,
            layout,
            manifest,
            splits,
            protocol=protocol_label(adapter.protocol, adapter.options),
        )


def _decoded_batches(adapter, records, todo, layout, batch_size, spec, torch_device, pool, timer) -> Iterator:
    """Lazy batches `(shard, last_of_shard, pixels, masks)` of the shards to do, decoded by `pool`'s threads."""

    def decode(i: int):
        with timer("decode + resize"):
            return decode_record(adapter, records[i], spec.image_size, adapter.has_masks)

    def batch(shard: int, last: bool, lo: int, hi: int):
        decoded = list(pool.map(decode, range(lo, hi)))
        pixels = pin_if_cuda(torch.stack([pixels for pixels, _ in decoded]), torch_device)
        return shard, last, pixels, [mask for _, mask in decoded]

    for shard in todo:
        start, stop = layout.shard_rows(shard)
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            yield lambda shard=shard, last=hi == stop, lo=lo, hi=hi: batch(shard, last, lo, hi)


def _write_shards(writer, backbone, batches, torch_device, precision, has_masks, bar, timer) -> None:
    """The backbone over the batches (decoded one batch ahead), each shard written whole when its last batch is in."""
    tokens_acc: list[np.ndarray] = []
    attn_acc: list[np.ndarray] = []
    masks_acc: list[np.ndarray] = []
    with torch.inference_mode(), autocast(torch_device, precision):
        for shard, last_of_shard, pixels, masks in prefetched(batches, depth=2):
            with timer("forward + capture"):  # to the host copy: what a GPU's async forward waits for
                tokens, attn = backbone(pixels.to(torch_device, non_blocking=True))
                tokens_acc.append(tokens.float().cpu().numpy())
                attn_acc.append(attn.float().cpu().numpy())
            if has_masks:
                masks_acc.append(np.stack(masks))
            bar.update(len(masks))
            if last_of_shard:
                with timer("write shards"):
                    writer.write_shard(
                        shard,
                        np.concatenate(tokens_acc),
                        np.concatenate(attn_acc),
                        np.concatenate(masks_acc) if masks_acc else None,
                    )
                tokens_acc, attn_acc, masks_acc = [], [], []


def default_decode_workers() -> int:
    """Decode threads of an extraction when the caller names none: one per core this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores)  # extraction runs alone (training waits for it): every core may decode
