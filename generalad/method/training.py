"""Training the discriminator on any `FeatureSource` (docs/method.md section 4).

One run: AdamW (lr 5e-4, weight decay 1e-5, default betas) on the discriminator only, cosine annealing stepped
once per epoch from ``lr`` to ``lr_min_factor * lr`` with ``T_max = epochs`` and no warm-up, batches of 16
with drop_last. Each epoch is either a fresh draw of ``epoch_subset`` normal images without replacement (semantic
datasets: 250 images, 15 steps) or the whole training set shuffled. The epoch's batch index lists are computed
up front and handed to ``source.iter_batches`` at once, so a store reader can prefetch while memory stays bounded
by a batch, never the split.

Per step, all active views of the batch go through the discriminator in ONE forward (concatenated along the
batch axis). Nothing in the discriminator mixes images, so this equals one forward per view exactly in eval mode;
in train mode the dropout masks are independent draws either way, so the two are equivalent in distribution
(not bit-for-bit, since the random stream is consumed in another order).

Few-shot runs (``fewshot_rows``) may have fewer images than a batch. Rather than training zero steps under
drop_last, the batch size becomes ``min(batch_size, n_train)`` (``effective_batch_size``): a 1-shot run takes
one step of one image per epoch. ``TrainResult.batch_size`` records the value used.

Determinism: the seed fixes the discriminator's initialisation and dropout (torch's global RNG, forked so the
caller's state is untouched), the distortions (a ``torch.Generator`` on the training device) and the batch order
(a NumPy Generator); on CPU two runs with the same seed give identical weights. The ``on_epoch_end`` callback
runs with the RNG state saved and restored, so evaluating every epoch does not change training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from generalad.allocator import tune_for_training
from generalad.devices import DEFAULT_PRECISION, autocast, grad_scaler, make_generator, resolve_device
from generalad.errors import ConfigError, TrainingError
from generalad.method.discriminator import Discriminator
from generalad.method.distortions import DEFAULT_SIGMA, ViewName, distortion_loss, make_views
from generalad.method.feature_source import FeatureSource
from generalad.method.presets import Preset

__all__ = [
    "TrainResult",
    "EpochCallback",
    "train_discriminator",
    "training_step",
    "build_discriminator",
    "make_optimizer",
    "epoch_batches",
    "effective_batch_size",
    "fewshot_rows",
]

EpochCallback = Callable[[int, Discriminator], None]


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model: the discriminator after the last epoch (left in eval mode).
        epochs: epochs trained.
        batch_size: images per step actually used (see ``effective_batch_size``).
        seed: the run's seed.
        seconds: wall time of the whole run, callbacks included.
        history: one dict per epoch: epoch (1-based), loss (mean total loss over the epoch's steps),
            ``loss_<view>`` per view, lr (the rate used during the epoch), steps, seconds.
    """

    model: Discriminator
    epochs: int
    batch_size: int
    seed: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def fewshot_rows(train_rows: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """A seeded random sample of ``shots`` training rows without replacement, sorted.

    Args:
        train_rows: the full normal training rows.
        shots: how many to keep; 1 <= shots <= len(train_rows).
        seed: NumPy Generator seed (the paper's few-shot seeds are 0, 10, 20, 30, 40).
    """
    train_rows = np.asarray(train_rows, dtype=np.int64)
    if not 1 <= shots <= len(train_rows):
        raise ConfigError(
            f"shots must be in 1..{len(train_rows)} (the training images available), got {shots}"
        )
    return np.sort(np.random.default_rng(seed).choice(train_rows, size=shots, replace=False))


def effective_batch_size(n_rows: int, batch_size: int) -> int:
    """``min(batch_size, n_rows)``: a split smaller than a batch trains one full-split batch per epoch."""
    if n_rows < 1:
        raise TrainingError("no training images: the normal training split is empty")
    return min(batch_size, n_rows)


def epoch_batches(
    train_rows: np.ndarray, *, batch_size: int, epoch_subset: int | None, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch's batches of row indices (each sorted, for read locality), drop_last.

    Args:
        train_rows: the rows to draw from.
        batch_size: rows per batch; a trailing partial batch is dropped.
        epoch_subset: draw this many rows without replacement (a new draw per call); None, or a subset at
            least as large as the split, means the whole split shuffled.
        rng: the run's NumPy Generator.
    """
    rows = np.asarray(train_rows, dtype=np.int64)
    if epoch_subset is not None and epoch_subset < len(rows):
        rows = rng.choice(rows, size=epoch_subset, replace=False)
    else:
        rows = rng.permutation(rows)
    steps = len(rows) // batch_size
    return [np.sort(rows[i * batch_size : (i + 1) * batch_size]) for i in range(steps)]


def build_discriminator(num_patches: int, embed_dim: int, preset: Preset) -> Discriminator:
    """A freshly initialised discriminator with the preset's architecture (uses torch's global RNG)."""
    return Discriminator(
        num_patches,
        embed_dim,
        num_heads=preset.num_heads,
        mlp_dim=preset.mlp_dim,
        num_blocks=preset.num_blocks,
        dropout=preset.dropout,
    )


def make_optimizer(
    model: Discriminator, preset: Preset, epochs: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """AdamW (default betas) and the per-epoch cosine schedule to ``lr_min_factor * lr``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs, eta_min=preset.lr_min_factor * preset.lr
    )
    return optimizer, scheduler


def training_step(
    model: Discriminator,
    optimizer: torch.optim.Optimizer,
    tokens: torch.Tensor,
    cls_attn: torch.Tensor,
    *,
    views: Sequence[ViewName],
    generator: torch.Generator,
    sigma: float = DEFAULT_SIGMA,
    exclude_fixed_points: bool = False,
    batched: bool = True,
    precision: str = DEFAULT_PRECISION,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step on one batch: build the views, forward, loss, backward, AdamW.

    Args:
        model: the discriminator, in train mode.
        optimizer: its optimizer.
        tokens: clean features (B, N, E) on the model's device.
        cls_attn: CLS attention (B, H, N) on the same device.
        views: active views.
        generator: distortion randomness, on the same device.
        sigma: noise standard deviation.
        exclude_fixed_points: see `generalad.method.distortions`.
        batched: one forward over all views concatenated (default) or one forward per view.
        precision: the forward's precision (`generalad.devices`); the views and the loss stay float32.
        scaler: fp16's loss scaler (`generalad.devices.grad_scaler`), None for the other precisions.

    Returns:
        The total loss and the per-view losses (detached scalars, still on the device).
    """
    built = make_views(
        views, tokens, cls_attn, generator=generator, sigma=sigma, exclude_fixed_points=exclude_fixed_points
    )
    with autocast(tokens.device, precision):
        if batched:
            logits = model(torch.cat([v.features for v in built])).split(tokens.shape[0])
        else:
            logits = [model(v.features) for v in built]
    loss, parts = distortion_loss([x.float() for x in logits], built)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), {name: value.detach() for name, value in parts.items()}


@contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def _rng_preserved(device: torch.device) -> Iterator[None]:
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)


def _check_rows(source: FeatureSource, train_rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(train_rows, dtype=np.int64).reshape(-1)
    if len(rows) and (rows.min() < 0 or rows.max() >= source.num_images):
        raise TrainingError(
            f"train rows span {rows.min()}..{rows.max()} but the feature source has {source.num_images} images"
        )
    if len(np.unique(rows)) != len(rows):
        raise TrainingError("train rows contain duplicates")
    return rows


def _train_epoch(
    model, optimizer, source, batches, preset, device, epoch, epochs, step_args
) -> dict[str, float]:
    """One epoch's steps over `batches`; returns the summed loss and per-view losses. A non-finite loss is a
    TrainingError naming the epoch and step."""
    totals: dict[str, float] = {}
    batch_iter = source.iter_batches(batches)
    try:
        for step, (tokens, cls_attn) in enumerate(batch_iter, start=1):
            loss, parts = training_step(
                model,
                optimizer,
                tokens.to(device, torch.float32, non_blocking=True),  # a source may keep fp16
                cls_attn.to(device, torch.float32, non_blocking=True),
                views=preset.views,
                sigma=preset.sigma,
                exclude_fixed_points=preset.exclude_fixed_points,
                **step_args,
            )
            value = loss.item()
            if not math.isfinite(value):
                detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
                raise TrainingError(
                    f"non-finite loss {value} at epoch {epoch}/{epochs}, step {step}/{len(batches)} "
                    f"({detail}); check the features for NaN/inf"
                )
            totals["loss"] = totals.get("loss", 0.0) + value
            for name, part in parts.items():
                totals[f"loss_{name}"] = totals.get(f"loss_{name}", 0.0) + part.item()
    finally:
        close = getattr(batch_iter, "close", None)
        if close is not None:
            close()
    return totals


def train_discriminator(
    source: FeatureSource,
    train_rows: np.ndarray,
    preset: Preset,
    *,
    seed: int = 0,
    epochs: int | None = None,
    device: str | torch.device = "cpu",
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    precision: str = DEFAULT_PRECISION,
) -> TrainResult:
    """Train one discriminator on the normal rows of a feature source.

    Args:
        source: where features come from (a store reader, `InMemoryFeatures`, ...).
        train_rows: row indices (into ``source``) of the normal training images.
        preset: views, sigma, optimiser, schedule, batch and architecture settings.
        seed: fixes initialisation, dropout, distortions and batch order.
        epochs: overrides ``preset.epochs`` (e.g. for a quick run).
        device: where the discriminator trains ("auto", "cpu", "cuda", "cuda:1", ...; `generalad.devices`).
        on_epoch_end: called as ``on_epoch_end(epoch, model)`` after each epoch (1-based), e.g. to evaluate;
            the model is put back in train mode afterwards and the RNG state is restored.
        progress: show a tqdm bar over epochs.
        precision: fp32 (default), tf32, bf16 or fp16 (CUDA, with loss scaling) for the forward passes.

    Returns:
        The trained model (eval mode) and the per-epoch history.

    Raises:
        TrainingError: empty or out-of-range train rows, or a non-finite loss (the message names the epoch and
            step; NaN/inf features are the usual cause).
    """
    epochs = preset.epochs if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    device = resolve_device(device)
    if device.type == "cpu":
        tune_for_training()  # activations reuse freed heap memory instead of fresh page-faulted mmaps
    scaler = grad_scaler(device, precision)
    rows = _check_rows(source, train_rows)
    batch_size = effective_batch_size(len(rows), preset.batch_size)
    model_seed, view_seed, order_seed = np.random.SeedSequence(seed).generate_state(3, dtype=np.uint64)
    start = time.perf_counter()
    history: list[dict[str, Any]] = []
    with _forked_rng(device):
        torch.manual_seed(int(model_seed))
        model = build_discriminator(source.num_patches, source.embed_dim, preset).to(device)
        optimizer, scheduler = make_optimizer(model, preset, epochs)
        generator = make_generator(device, int(view_seed))
        order_rng = np.random.default_rng(int(order_seed))
        bar = tqdm(range(1, epochs + 1), desc="train", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            epoch_start = time.perf_counter()
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            batches = epoch_batches(
                rows, batch_size=batch_size, epoch_subset=preset.epoch_subset, rng=order_rng
            )
            step_args = {"generator": generator, "precision": precision, "scaler": scaler}
            totals = _train_epoch(model, optimizer, source, batches, preset, device, epoch, epochs, step_args)
            scheduler.step()
            stats: dict[str, Any] = {"epoch": epoch, "lr": lr, "steps": len(batches)}
            stats |= {key: total / max(len(batches), 1) for key, total in totals.items()}
            if on_epoch_end is not None:
                with _rng_preserved(device):
                    on_epoch_end(epoch, model)
            stats["seconds"] = time.perf_counter() - epoch_start
            history.append(stats)
            bar.set_postfix(loss=f"{stats.get('loss', float('nan')):.4f}")
    model.eval()
    return TrainResult(
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        seconds=time.perf_counter() - start,
        history=history,
    )
