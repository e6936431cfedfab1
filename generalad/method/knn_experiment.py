"""One one-class PatchCore-kNN experiment on cached features: bank from the normal rows, scores on the test rows.

The counterpart of ``generalad.method.experiment.run_one_class`` for the second method; it returns the same
``RunResult`` (``model`` the ``PatchCoreModel``, ``preset`` the ``PatchCoreSettings``), so the result files,
report rows and tables take either method. There is no training loop: one selection, ``last``, epoch 0.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from generalad.method.evaluation import evaluate_logits
from generalad.method.experiment import RunResult, _check_test_labels, metric_rows
from generalad.method.feature_source import FeatureSource
from generalad.method.patchcore import PatchCoreSettings, fit_memory_bank
from generalad.method.scoring import patch_logits
from generalad.method.split import OneClassSplit
from generalad.method.training import fewshot_rows

__all__ = ["read_tokens", "training_patches", "run_patchcore"]


def read_tokens(source: FeatureSource, rows: np.ndarray, *, batch_size: int = 64) -> torch.Tensor:
    """Tokens (n, N, E) float32 of ``rows``, in order."""
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    parts = []
    batch_iter = source.iter_batches(batches)
    try:
        for tokens, _ in batch_iter:
            parts.append(tokens.float())
    finally:
        close = getattr(batch_iter, "close", None)
        if close is not None:
            close()
    return torch.cat(parts) if parts else torch.empty(0, source.num_patches, source.embed_dim)


def training_patches(
    source: FeatureSource, rows: np.ndarray, *, max_patches: int | None, seed: int, batch_size: int = 64
) -> torch.Tensor:
    """The patch tokens (M, E) of ``rows`` that enter the coreset: all of them (image by image, in order) when there
    are at most ``max_patches``, else a seeded uniform sample of ``max_patches``, read batch by batch so the full
    set is never in memory."""
    rows = np.asarray(rows, dtype=np.int64)
    n_patches = source.num_patches
    total = len(rows) * n_patches
    if max_patches is None or total <= max_patches:
        return read_tokens(source, rows, batch_size=batch_size).reshape(-1, source.embed_dim)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_patches, replace=False))
    image_of, patch_of = np.divmod(chosen, n_patches)
    out = torch.empty(max_patches, source.embed_dim)
    starts = np.searchsorted(image_of, np.arange(0, len(rows) + batch_size, batch_size))
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    batch_iter = source.iter_batches(batches)
    try:
        for b, (tokens, _) in enumerate(batch_iter):
            lo, hi = starts[b], starts[b + 1]
            out[lo:hi] = tokens[image_of[lo:hi] - b * batch_size, patch_of[lo:hi]].float()
    finally:
        close = getattr(batch_iter, "close", None)
        if close is not None:
            close()
    return out


def memory_bank_of(
    source: FeatureSource, train_rows: np.ndarray, settings: PatchCoreSettings, *, seed: int, device
):
    """The kNN model of `train_rows`: their patches (capped at `settings.max_patches`) through the coreset."""
    return fit_memory_bank(
        training_patches(source, train_rows, max_patches=settings.max_patches, seed=seed),
        coreset_ratio=settings.coreset_ratio,
        projection_dim=settings.projection_dim,
        seed=seed,
        device=device,
        num_patches=source.num_patches,
    )


def run_patchcore(
    source: FeatureSource,
    split: OneClassSplit,
    settings: PatchCoreSettings | None = None,
    *,
    seed: int = 0,
    shots: int | None = None,
    masks: np.ndarray | None = None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
) -> RunResult:
    """Build the bank from ``split.train_rows`` (or a ``shots``-image sample), evaluate on ``split.test_rows``.

    Args mirror ``run_one_class``; ``seed`` seeds the few-shot sample, the patch sample beyond
    ``settings.max_patches``, and the coreset's start and projection.

    Raises:
        TrainingError: the test split lacks normal or anomalous images (checked before any work).
    """
    settings = settings or PatchCoreSettings()
    _check_test_labels(split)
    train_rows = np.asarray(split.train_rows, dtype=np.int64)
    if shots is not None:
        train_rows = fewshot_rows(train_rows, shots, seed)
    start = time.perf_counter()
    model = memory_bank_of(source, train_rows, settings, seed=seed, device=device)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = patch_logits(model, source, split.test_rows, batch_size=16)
    evaluation = evaluate_logits(scores, split, top_k=1, masks=masks, image_size=image_size)
    eval_seconds = time.perf_counter() - start
    return RunResult(
        model=model,
        preset=settings,
        seed=seed,
        shots=shots,
        normal_class=split.normal_class,
        train_rows=train_rows,
        batch_size=0,
        scores=evaluation.scores_frame(),
        metrics=metric_rows(evaluation, selection="last", epoch=0),
        evaluations={"last": evaluation},
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        device=str(device),
        precision="fp32",
    )
