"""Where the training loop and the evaluator get features from.

The core never reads Zarr: it asks a `FeatureSource` for batches of rows. The feature store's reader
(`storage.feature_store`) is one implementation, `InMemoryFeatures` another (tests, notebooks).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["FeatureBatch", "FeatureSource", "InMemoryFeatures"]

# (tokens float32 (b, N, E), cls_attn float32 (b, H, N)) for the requested rows, in the requested order
FeatureBatch = tuple[torch.Tensor, torch.Tensor]


@runtime_checkable
class FeatureSource(Protocol):
    """Rows of cached features: tokens (n, N, E) and CLS attention (n, H, N)."""

    @property
    def num_images(self) -> int: ...

    @property
    def num_patches(self) -> int: ...

    @property
    def embed_dim(self) -> int: ...

    @property
    def num_heads(self) -> int: ...

    def iter_batches(self, batches: Iterable[Sequence[int]]) -> Iterator[FeatureBatch]:
        """Yield one FeatureBatch per index list, in order. Implementations may read ahead (prefetch)."""
        ...


class InMemoryFeatures:
    """A FeatureSource over arrays already in memory."""

    def __init__(self, tokens: np.ndarray | torch.Tensor, cls_attn: np.ndarray | torch.Tensor | None = None):
        self._tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.float32)
        if self._tokens.ndim != 3:
            raise ValueError(f"tokens must be (n, N, E), got shape {tuple(self._tokens.shape)}")
        n, num_patches, _ = self._tokens.shape
        if cls_attn is None:
            cls_attn = np.full((n, 1, num_patches), 1.0 / num_patches, dtype=np.float32)
        self._attn = torch.as_tensor(np.asarray(cls_attn), dtype=torch.float32)
        if self._attn.shape[0] != n or self._attn.shape[2] != num_patches:
            raise ValueError(
                f"cls_attn shape {tuple(self._attn.shape)} does not fit tokens {tuple(self._tokens.shape)}"
            )

    @property
    def num_images(self) -> int:
        return self._tokens.shape[0]

    @property
    def num_patches(self) -> int:
        return self._tokens.shape[1]

    @property
    def embed_dim(self) -> int:
        return self._tokens.shape[2]

    @property
    def num_heads(self) -> int:
        return self._attn.shape[1]

    def iter_batches(self, batches: Iterable[Sequence[int]]) -> Iterator[FeatureBatch]:
        for rows in batches:
            idx = torch.as_tensor(list(rows), dtype=torch.long)
            yield self._tokens[idx], self._attn[idx]
