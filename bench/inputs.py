"""What the benchmarks run on: real datasets from ../shared/data (or generated stand-ins) and synthetic stores.

Re-exported by `bench/common.py`; the benchmarks import these from there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["ROOT", "SHARED_DATA", "grid_adapter", "cifar_adapter", "synthetic_store"]

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data next to the project (absent on a fresh clone elsewhere: the benches then generate images)
SHARED_DATA = Path(os.environ.get("GENERALAD_BENCH_DATA", ROOT.parent / "shared" / "data"))


def _limited(adapter, n_train: int | None, n_test: int | None):
    """The same adapter class restricted to its first ``n_train`` training and ``n_test`` test records (half of
    them normal, the rest anomalous, where the labels are known), so small runs still use the real code path."""
    if n_train is None and n_test is None:
        return adapter
    base = type(adapter)

    class Limited(base):  # type: ignore[misc, valid-type]
        def records(self):
            records = sorted(super().records(), key=lambda r: r.image_id)
            train = [r for r in records if r.split == "train"][: n_train or None]
            test = [r for r in records if r.split == "test"]
            if n_test is not None:
                normal = [r for r in test if r.label == 0]
                other = [r for r in test if r.label != 0]
                half = min(len(normal), max(1, n_test // 2))
                test = normal[:half] + other[: n_test - half]
            return train + test

    Limited.__name__ = Limited.__qualname__ = base.__name__
    return Limited(adapter.root, adapter.category, **adapter.options)


def grid_adapter(tmp: Path, *, n_train: int | None = None, n_test: int | None = None):
    """MVTec-AD `grid` from ../shared/data (1024x1024 greyscale PNGs with masks), or, when that is absent, a
    generated MVTec-layout category of 1024x1024 PNGs (the `quickstart` generator); returns (adapter, source)."""
    from generalad.data import generate_quickstart, get_dataset

    root = SHARED_DATA / "mvtec_ad"
    if (root / "grid" / "train" / "good").is_dir():
        adapter, source = get_dataset("mvtec_ad", root, category="grid"), f"{_short(root)}/grid"
    else:
        generated = generate_quickstart(
            tmp / "quickstart", n_train=25, n_test_good=3, n_test_defect=11, image_size=1024
        )
        adapter, source = get_dataset("quickstart", generated, category="brick"), "generated quickstart/brick"
    return _limited(adapter, n_train, n_test), source


def cifar_adapter(
    tmp: Path, normal_classes: Sequence[str], *, n_train: int, n_test_per_class: int, n_other_train: int = 1
):
    """A CIFAR-10 folder-layout subset in ``tmp`` (symlinks to ../shared/data/cifar10, or generated 32x32 JPEGs):
    ``n_train`` training images of each normal class, ``n_other_train`` of every other class (the adapter wants
    all ten), ``n_test_per_class`` test images of every class. Returns (adapter, source)."""
    import numpy as np
    from PIL import Image

    from generalad.data import get_dataset
    from generalad.data.cifar import CIFAR10_CLASSES

    real = SHARED_DATA / "cifar10"
    root = tmp / "cifar10"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in CIFAR10_CLASSES:
            count = (
                (n_train if name in normal_classes else n_other_train)
                if split == "train"
                else n_test_per_class
            )
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            files = sorted((real / split / name).glob("*.jpg"))[:count] if real.is_dir() else []
            for i in range(count):
                target = folder / f"{i:04d}.jpg"
                if i < len(files):
                    target.symlink_to(files[i].resolve())
                else:
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                        target, quality=75
                    )
    source = f"{_short(real)} (symlinked subset)" if real.is_dir() else "generated 32x32 JPEGs"
    return get_dataset("cifar10", root), source


def _short(path: Path) -> str:
    try:
        return os.path.relpath(path, ROOT)
    except ValueError:
        return str(path)


def synthetic_store(
    url: str,
    *,
    classes: Sequence[str],
    n_train: int,
    n_test_per_class: int,
    grid: int,
    embed_dim: int = 384,
    num_heads: int = 6,
    dtype: str = "float16",
    shard_size: int = 32,
    seed: int = 0,
    on_write: Callable[[float, int], None] | None = None,
) -> str:
    """Write a complete feature store of random features through the real `StoreWriter`, without a backbone.

    A one-vs-rest dataset: ``n_train`` training and ``n_test_per_class`` test images per class, ``grid`` x ``grid``
    patches of width ``embed_dim``. Random values come from one pre-generated block (tiled), so generating them
    costs little; ``on_write(seconds, nbytes)`` is called with the wall time of each ``write_shard`` call.
    """
    from storage.feature_store import StoreWriter
    from storage.store_layout import StoreLayout

    manifest, splits = _synthetic_dataset(classes, n_train, n_test_per_class)
    layout = StoreLayout(
        num_images=len(manifest),
        num_patches=grid * grid,
        embed_dim=embed_dim,
        num_heads=num_heads,
        image_size=grid * 14,
        dtype=dtype,
        has_masks=False,
        shard_size=shard_size,
    )
    fingerprint = _synthetic_fingerprint(manifest, layout, seed)
    writer = StoreWriter(url, fingerprint, layout, manifest, splits, protocol="bench_synthetic_one_vs_rest")
    _write_random_shards(writer, seed, on_write)
    writer.mark_complete({"synthetic": True})
    return url


def _synthetic_dataset(classes: Sequence[str], n_train: int, n_test_per_class: int):
    """The manifest of a one-vs-rest dataset without files, and its split per class."""
    from generalad.data.base import Record, manifest_frame
    from generalad.data.oneclass import one_vs_rest_split

    records = []
    for name in classes:
        for split, count in (("train", n_train), ("test", n_test_per_class)):
            for i in range(count):
                rel = f"{split}/{name}/{i:05d}.npy"
                records.append(Record(rel, rel, split, name, -1))
    manifest = manifest_frame(records)
    splits = {c: one_vs_rest_split(manifest, c, list(classes), what="synthetic") for c in classes}
    return manifest, splits


def _synthetic_fingerprint(manifest, layout, seed: int):
    import timm

    from storage.fingerprint import SCHEMA_VERSION, StoreFingerprint, manifest_hash

    return StoreFingerprint(
        dataset="bench_synthetic",
        category=None,
        backbone="vit_small_patch14_dinov2",
        weights=f"synthetic:{seed}",
        image_size=layout.image_size,
        layers=(-1,),
        final_norm=True,
        preprocessing="synthetic",
        attention_capture="synthetic",
        dtype=layout.dtype,
        timm_version=timm.__version__,
        manifest_hash=manifest_hash(manifest),
        schema_version=SCHEMA_VERSION,
    )


def _write_random_shards(writer, seed: int, on_write: Callable[[float, int], None] | None) -> None:
    """Every shard of `writer`'s layout, from one random block rolled per shard (distinct bytes per shard)."""
    import numpy as np

    layout = writer.layout
    rng = np.random.default_rng(seed)
    shape = (layout.shard_size, layout.num_patches, layout.embed_dim)
    block = rng.standard_normal(shape, dtype=np.float32).astype(layout.dtype)
    attn = rng.random((layout.shard_size, layout.num_heads, layout.num_patches), dtype=np.float32)
    attn = attn.astype(layout.dtype)
    for shard in range(layout.num_shards):
        start, stop = layout.shard_rows(shard)
        tokens = np.roll(block, shard, axis=1)[: stop - start]
        began = time.perf_counter()
        writer.write_shard(shard, tokens, attn[: stop - start])
        if on_write is not None:
            on_write(time.perf_counter() - began, tokens.nbytes + attn[: stop - start].nbytes)
