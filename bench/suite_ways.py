"""The two ways bench/suite_payoff.py runs the mini-suite: from a feature store (ours) and reference-style.

(a) `run_ours`: `storage.extraction.extract_features` once per dataset into a Zarr store, then every class trains
    and is scored every epoch from the store;
(b) `run_reference`: a `ReferenceStyleSource` that decodes the images and runs the frozen backbone for every
    batch it is asked for, as the reference does.
"""

from __future__ import annotations

import time

import torch

__all__ = ["ReferenceStyleSource", "run_ours", "run_reference"]


class ReferenceStyleSource:
    """A `FeatureSource` that decodes and runs the frozen backbone for every batch it is asked for (the reference's
    data path). Counts image-forwards and the seconds spent decoding + in the backbone."""

    def __init__(self, adapter, backbone, *, chunk: int = 8):
        from generalad.data.base import manifest_record

        self.adapter, self.backbone, self.chunk = adapter, backbone, chunk
        self.records = [manifest_record(row) for row in adapter.manifest().itertuples(index=False)]
        self.forwards = 0
        self.backbone_seconds = 0.0

    @property
    def num_images(self) -> int:
        return len(self.records)

    @property
    def num_patches(self) -> int:
        return self.backbone.num_patches

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def num_heads(self) -> int:
        return self.backbone.num_heads

    def _decode(self, rows) -> torch.Tensor:
        from generalad.data.preprocess import preprocess_image

        size = self.backbone.spec.image_size
        return torch.stack([preprocess_image(self.adapter.load_image(self.records[i]), size) for i in rows])

    def iter_batches(self, batches):
        from storage.prefetch import prefetched

        for images in prefetched(((lambda rows=rows: self._decode(rows)) for rows in batches), depth=2):
            start = time.perf_counter()
            with torch.no_grad():
                parts = [self.backbone(images[i : i + self.chunk]) for i in range(0, len(images), self.chunk)]
            self.backbone_seconds += time.perf_counter() - start
            self.forwards += len(images)
            yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _trained(runs, splits) -> dict:
    """What both ways report of their class runs: training steps, images scored, last-epoch image AUROC."""
    return {
        "steps": sum(h["steps"] for run in runs for h in run.history),
        "scored_images": sum(run.epochs * len(s.test_rows) for run, s in zip(runs, splits, strict=True)),
        "auroc_last": [r.evaluations["last"].metrics["image_auroc"] for r in runs],
    }


def run_ours(adapter, spec, classes, preset, store_root: str):
    from generalad.method.experiment import run_one_class
    from storage.extraction import extract_features
    from storage.feature_store import FeatureStore

    timings: dict[str, float] = {}
    start = time.perf_counter()
    extracted = extract_features(adapter, spec, store_root, batch_size=8, progress=False, timings=timings)
    store = FeatureStore(extracted.url)
    splits = [store.split(c) for c in classes]
    runs = [run_one_class(store, s, preset, seed=0, eval_every_epoch=True, progress=False) for s in splits]
    wall = time.perf_counter() - start
    fixed = timings.get("build model", 0.0) + timings.get("create store", 0.0)  # per-store, not per-image
    return {
        "wall_s": wall,
        "forwards": extracted.images_extracted,
        "extract_s": extracted.seconds,
        "extract_fixed_s": fixed,
        "extract_s_per_image": (extracted.seconds - fixed) / extracted.images_extracted,
        **_trained(runs, splits),
    }


def run_reference(adapter, spec, classes, preset):
    from generalad.backbone import load_backbone
    from generalad.method.experiment import run_one_class

    start = time.perf_counter()
    source = ReferenceStyleSource(adapter, load_backbone(spec))
    manifest = adapter.manifest()
    splits = [adapter.one_class_split(manifest, c) for c in classes]
    runs = [run_one_class(source, s, preset, seed=0, eval_every_epoch=True, progress=False) for s in splits]
    return {
        "wall_s": time.perf_counter() - start,
        "forwards": source.forwards,
        "backbone_s_per_image": source.backbone_seconds / source.forwards,
        **_trained(runs, splits),
    }
