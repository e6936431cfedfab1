"""A second method on the same cached features: PatchCore-style nearest-neighbour scoring (docs/method.md, the
baseline of Tables 1 and 3).

- Memory bank: every patch token of the normal training images, subsampled by greedy coreset selection
  (k-center greedy: start at a seeded random patch, repeatedly add the patch farthest from the bank so far). As in
  PatchCore the distances of the selection run on a seeded Gaussian random projection to ``projection_dim``
  dimensions (Johnson-Lindenstrauss); the bank keeps the full features. ``coreset_ratio`` 0.1 is the default (the
  PatchCore paper's main setting, "PatchCore-10%"); 0.01 ("PatchCore-1%") is its cheap variant and 1.0 keeps
  every patch.
- Patch score: the exact Euclidean distance to the nearest bank entry, in torch: the neighbour is found with
  ``|q|^2 - 2 q.b + |b|^2`` (matrix products) in chunks of bank rows (and of query rows in eager mode), so memory
  stays bounded and the same code traces into an ONNX graph; its distance is then computed directly as
  ``|q - b|``.
- Image score: the maximum patch score (PatchCore's rule; the same as ``image_scores(scores, top_k=1)``).
- Anomaly map: the patch scores through ``generalad.method.scoring.anomaly_maps``, exactly as GeneralAD's logits.

Differences from the paper's PatchCore: its features are WideResNet-50 layer 2+3 maps with 3 x 3 neighbourhood
pooling; ours are the store's ViT patch tokens as they are. Its image score also reweights the maximum by the
bank neighbourhood; ours is the plain maximum.

Example:
    >>> import torch
    >>> model = fit_memory_bank(torch.randn(50, 4, 8), coreset_ratio=0.5, seed=0)
    >>> model.bank.shape
    torch.Size([100, 8])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from generalad.errors import ConfigError

__all__ = [
    "METHOD",
    "DEFAULT_CORESET_RATIO",
    "PatchCoreSettings",
    "PatchCoreModel",
    "greedy_coreset",
    "nearest_distances",
    "fit_memory_bank",
]

METHOD = "patchcore_knn"
DEFAULT_CORESET_RATIO = 0.1
DEFAULT_PROJECTION_DIM = 128
# training patches that enter the coreset selection at most (a seeded uniform sample beyond it): bounds memory on
# large one-class sets (CIFAR-10 at 518 px: 5,000 images x 1,369 patches = 6.8 M) and leaves a whole MVTec-AD class
# (at most ~540 k patches at 518 px) untouched
DEFAULT_MAX_PATCHES = 600_000


@dataclass(frozen=True)
class PatchCoreSettings:
    """Settings of one kNN run.

    The read-only properties are what the report's GeneralAD columns hold for this method: clean features only
    (views "clean"), no training (epochs 0, lr 0, sigma 0), image score = the top-1 patch (the maximum).
    """

    coreset_ratio: float = DEFAULT_CORESET_RATIO
    projection_dim: int | None = DEFAULT_PROJECTION_DIM
    max_patches: int | None = DEFAULT_MAX_PATCHES

    def __post_init__(self) -> None:
        if self.max_patches is not None and (isinstance(self.max_patches, bool) or int(self.max_patches) < 1):
            raise ConfigError(f"max_patches must be None or >= 1, got {self.max_patches!r}")
        if isinstance(self.coreset_ratio, bool) or not 0.0 < float(self.coreset_ratio) <= 1.0:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio!r}")
        if self.projection_dim is not None and (
            isinstance(self.projection_dim, bool) or int(self.projection_dim) < 1
        ):
            raise ConfigError(f"projection_dim must be None or >= 1, got {self.projection_dim!r}")

    method = METHOD
    name = METHOD

    @property
    def views(self) -> tuple[str, ...]:
        return ("clean",)

    @property
    def epochs(self) -> int:
        return 0

    @property
    def lr(self) -> float:
        return 0.0

    @property
    def sigma(self) -> float:
        return 0.0

    @property
    def top_k(self) -> int:
        return 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "coreset_ratio": self.coreset_ratio,
            "projection_dim": self.projection_dim,
            "max_patches": self.max_patches,
        }


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(dim=1)


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    *,
    projection_dim: int | None = DEFAULT_PROJECTION_DIM,
    seed: int = 0,
) -> torch.Tensor:
    """Indices (n_select,) int64 of a k-center greedy coreset of ``features`` (M, E), in selection order.

    The first index is a seeded random row; each next one is the row with the largest distance to its nearest
    selected row (the earliest on ties). Distances use a seeded Gaussian projection to ``projection_dim``
    dimensions when that is smaller than E (None = the features themselves).
    """
    if features.ndim != 2:
        raise ConfigError(f"features must be (M, E), got shape {tuple(features.shape)}")
    m, e = features.shape
    if not 1 <= n_select <= m:
        raise ConfigError(f"n_select must be in 1..{m}, got {n_select}")
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim is not None and projection_dim < e:
        proj = torch.randn(e, projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj.to(x.device)
    first = int(torch.randint(m, (1,), generator=gen))
    selected = torch.empty(n_select, dtype=torch.int64)
    selected[0] = first
    norms = _sq_norms(x)
    min_sq = (norms - 2 * (x @ x[first]) + norms[first]).clamp_min_(0)
    for i in range(1, n_select):
        nxt = int(torch.argmax(min_sq))
        selected[i] = nxt
        min_sq = torch.minimum(min_sq, (norms - 2 * (x @ x[nxt]) + norms[nxt]).clamp_min_(0))
    return selected


def nearest_distances(
    queries: torch.Tensor,
    bank: torch.Tensor,
    *,
    bank_sq: torch.Tensor | None = None,
    bank_chunk: int = 8192,
    query_chunk: int | None = 4096,
) -> torch.Tensor:
    """Euclidean distance (Q,) of every query row (Q, E) to its nearest bank row (M, E), exact, float32.

    ``query_chunk`` None processes all queries at once (the traced / exported form); the bank is always walked in
    chunks of ``bank_chunk`` rows (a fixed number of chunks, so tracing unrolls it).
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ConfigError(
            f"queries {tuple(queries.shape)} and bank {tuple(bank.shape)} must be (Q, E), (M, E)"
        )
    if bank.shape[0] == 0:
        raise ConfigError("the memory bank is empty")
    bank_sq = _sq_norms(bank) if bank_sq is None else bank_sq
    if query_chunk is not None and queries.shape[0] > query_chunk:
        parts = [
            nearest_distances(q, bank, bank_sq=bank_sq, bank_chunk=bank_chunk, query_chunk=None)
            for q in queries.split(query_chunk)
        ]
        return torch.cat(parts)
    q = queries.float()
    best, best_idx = None, None
    for start in range(0, bank.shape[0], bank_chunk):
        b = bank[start : start + bank_chunk]
        # |b|^2 - 2 q.b in one fused product; |q|^2 is the same for every bank row, so it cannot change the argmin
        partial = torch.addmm(bank_sq[None, start : start + bank_chunk], q, b.T, alpha=-2.0)
        low, idx = partial.min(dim=1)
        idx = idx + start
        if best is None:
            best, best_idx = low, idx
        else:
            closer = low < best
            best, best_idx = torch.where(closer, low, best), torch.where(closer, idx, best_idx)
    # the expanded form only picks the neighbour: its distance is recomputed directly, which avoids the
    # cancellation of |q|^2 - 2 q.b + |b|^2 near 0 (a few 1e-3 after the square root at |q| ~ 10)
    diff = q - bank[best_idx]
    return (diff * diff).sum(dim=1).sqrt()


class PatchCoreModel(nn.Module):
    """The memory bank as a module: ``model(tokens (B, N, E)) -> patch scores (B, N)`` (nearest distances).

    The same interface as the discriminator (patch scores in place of logits), so ``patch_logits``, the
    predictor and the ONNX export take either. The bank is a frozen parameter (it is saved with the weights).
    """

    def __init__(self, num_patches: int, embed_dim: int, bank_size: int, **settings: Any) -> None:
        super().__init__()
        if num_patches < 1 or embed_dim < 1 or bank_size < 1:
            raise ConfigError(f"bad PatchCore sizes: N={num_patches}, E={embed_dim}, bank={bank_size}")
        self.bank = nn.Parameter(torch.zeros(bank_size, embed_dim), requires_grad=False)
        self._config = {
            "num_patches": int(num_patches),
            "embed_dim": int(embed_dim),
            "bank_size": int(bank_size),
            **settings,
        }

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-ready dict (``PatchCoreModel.from_config`` rebuilds an empty bank)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PatchCoreModel:
        config = dict(config)
        try:
            n, e, m = config.pop("num_patches"), config.pop("embed_dim"), config.pop("bank_size")
        except KeyError as exc:
            raise ConfigError(f"bad PatchCore config {config}: missing {exc}") from exc
        return cls(n, e, m, **config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 3 or tokens.shape[2] != self.bank.shape[1]:
            raise ConfigError(f"tokens must be (B, N, {self.bank.shape[1]}), got {tuple(tokens.shape)}")
        b, n, e = tokens.shape
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        flat = tokens.reshape(-1, e).to(self.bank.dtype)
        scores = nearest_distances(flat, self.bank, query_chunk=None if exporting else 4096)
        return scores.reshape(b, n)


def fit_memory_bank(
    train_tokens: torch.Tensor | np.ndarray,
    *,
    coreset_ratio: float = DEFAULT_CORESET_RATIO,
    projection_dim: int | None = DEFAULT_PROJECTION_DIM,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_patches: int | None = None,
) -> PatchCoreModel:
    """A PatchCoreModel whose bank is the coreset of the training patch tokens (n, N, E), or of patches (M, E)
    already sampled from them (then ``num_patches`` is N).

    Bank size: ``max(1, round(coreset_ratio * M))``; ratio 1.0 keeps every patch in its original order.
    """
    settings = PatchCoreSettings(coreset_ratio=coreset_ratio, projection_dim=projection_dim)
    tokens = torch.as_tensor(np.asarray(train_tokens) if not torch.is_tensor(train_tokens) else train_tokens)
    if tokens.ndim == 3 and tokens.shape[0] > 0:
        num_patches = tokens.shape[1]
    elif tokens.ndim != 2 or tokens.shape[0] == 0 or num_patches is None:
        raise ConfigError(
            f"training tokens must be (n >= 1, N, E), or (M >= 1, E) with num_patches; got {tuple(tokens.shape)}"
        )
    embed_dim = tokens.shape[-1]
    flat = tokens.reshape(-1, embed_dim).float().to(device)
    total = flat.shape[0]
    n_select = max(1, round(settings.coreset_ratio * total))
    if n_select >= total:
        bank = flat
    else:
        bank = flat[greedy_coreset(flat, n_select, projection_dim=projection_dim, seed=seed).to(flat.device)]
    model = PatchCoreModel(
        num_patches,
        embed_dim,
        bank.shape[0],
        coreset_ratio=settings.coreset_ratio,
        projection_dim=projection_dim,
        seed=seed,
        n_train_patches=total,
    )
    with torch.no_grad():
        model.bank.copy_(bank.cpu())
    return model.to(device).eval()
