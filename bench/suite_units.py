"""The unit costs of bench/suite_payoff.py and the formula that turns them into a suite's wall time.

The dataset proportions (`Protocol`, `REAL`: docs/method.md section 4), the per-unit costs measured in one
process (`measure_units`) and the extrapolation of both ways from them (`extrapolate`); the formula is in
bench/suite_payoff.py's docstring.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from common import interleaved, median, synthetic_store

__all__ = ["MODEL", "BATCH", "PRESET", "Protocol", "REAL", "backbone_spec", "measure_units", "extrapolate"]

MODEL = "vit_small_patch14_dinov2"
BATCH = 16
PRESET = {"grid": "mvtec_ad", "cifar10": "cifar10"}


@dataclass(frozen=True)
class Protocol:
    """A dataset's proportions: what the runs do per class."""

    store_images: int  # images `extract_features` puts in the store (the whole dataset / category)
    classes: int  # normal classes the suite trains
    epochs: int
    steps_per_epoch: int
    test_images: int


REAL = {
    "grid": Protocol(
        store_images=264 + 78, classes=1, epochs=160, steps_per_epoch=264 // BATCH, test_images=78
    ),
    "cifar10": Protocol(
        store_images=60_000, classes=2, epochs=20, steps_per_epoch=250 // BATCH, test_images=10_000
    ),
}


def backbone_spec(size: int):
    """The random-weight ViT-S both ways run at ``size`` px (LayerScale 1.0: every block changes the tokens)."""
    from generalad.backbone import BackboneSpec

    return BackboneSpec(name=MODEL, weights="random", seed=0, image_size=size, init_values=1.0)


def measure_units(tmp, size: int, adapters: dict, *, step_batch: int, rounds: int) -> dict:
    """Per-unit costs at ``size`` px (bench/suite_payoff.py's docstring), interleaved over ``rounds`` rounds
    (median): backbone forward per image (batch 8), a training step of batch 16 per dataset's views (timed at
    ``step_batch``, scaled), scoring per image from a store (64 rows); plus single-thread decode per image of
    each dataset."""
    from generalad.backbone import load_backbone
    from generalad.data.base import manifest_record
    from generalad.data.preprocess import preprocess_image
    from generalad.method.presets import preset_for
    from generalad.method.scoring import patch_logits
    from generalad.method.training import build_discriminator, make_optimizer, training_step
    from storage.feature_store import FeatureStore

    grid = size // 14
    n = grid * grid
    decode, images = {}, None
    for name, adapter in adapters.items():
        records = [manifest_record(r) for r in adapter.manifest().head(4).itertuples(index=False)]
        start = time.perf_counter()
        decoded = [preprocess_image(adapter.load_image(r), size) for r in records]
        decode[name] = (time.perf_counter() - start) / len(decoded)
        images = images or decoded
    backbone = load_backbone(backbone_spec(size))
    batch = torch.stack((images * 8)[:8])

    def forward() -> None:
        with torch.inference_mode():
            backbone(batch)

    tokens, attn = torch.randn(step_batch, n, 384), torch.rand(step_batch, 6, n)

    def step_of(name: str):
        preset = preset_for(PRESET[name])
        torch.manual_seed(0)
        model = build_discriminator(n, 384, preset).train()
        optimizer, _ = make_optimizer(model, preset, 1)
        generator = torch.Generator().manual_seed(0)
        return model, lambda: training_step(
            model, optimizer, tokens, attn, views=preset.views, generator=generator
        )

    steps = {name: step_of(name) for name in adapters}
    url = str(tmp / f"units{size}.zarr")
    synthetic_store(url, classes=("a", "b"), n_train=8, n_test_per_class=40, grid=grid)
    store = FeatureStore(url)
    scorer = steps["grid"][0]
    rows = np.arange(16, 16 + 64)

    def score() -> None:
        patch_logits(scorer, store, rows)  # eval mode inside; store read + forward

    with torch.inference_mode():
        backbone(batch[:1])  # warm-up
    variants = {"forward": forward, "score": score} | {f"step_{name}": fn for name, (_, fn) in steps.items()}
    times = interleaved(variants, rounds=rounds)
    return {
        "forward_s": median(times["forward"]) / len(batch),
        "decode_s": decode,
        "step_s": {name: median(times[f"step_{name}"]) * BATCH / step_batch for name in adapters},
        "score_s": median(times["score"]) / len(rows),
        "step_batch": step_batch,
        "rounds": rounds,
        "times_s": times,
    }


def extrapolate(units: dict, ext: dict[str, float], protocols: dict[str, Protocol]) -> dict:
    """Seconds and image-forwards of each way at the given proportions (formula: bench/suite_payoff.py)."""
    parts = {"ours_extract": 0.0, "ours_train": 0.0, "ours_score": 0.0, "ref_train": 0.0, "ref_score": 0.0}
    forwards_ours = forwards_ref = 0.0
    for name, p in protocols.items():
        step, score = units["step_s"][name], units["score_s"]
        runs = p.classes * p.epochs
        parts["ours_extract"] += p.store_images * ext[name]
        parts["ours_train"] += runs * p.steps_per_epoch * step
        parts["ours_score"] += runs * p.test_images * score
        parts["ref_train"] += runs * p.steps_per_epoch * (step + BATCH * ext[name])
        parts["ref_score"] += runs * p.test_images * (score + ext[name])
        forwards_ours += p.store_images
        forwards_ref += runs * (p.steps_per_epoch * BATCH + p.test_images)
    ours = parts["ours_extract"] + parts["ours_train"] + parts["ours_score"]
    ref = parts["ref_train"] + parts["ref_score"]
    return {
        "ours_s": ours,
        "reference_s": ref,
        "ratio": ref / ours,
        "forwards_ours": forwards_ours,
        "forwards_reference": forwards_ref,
        "parts_s": parts,
    }
