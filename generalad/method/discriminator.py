"""The cross-patch attention discriminator (docs/method.md section 3): patch features in, one logit per patch out.

Architecture (defaults are the paper's)::

    x = features + pos_embed                       # learned (N, E), initialised N(0, 1)
    repeat num_blocks times:
        x = LayerNorm(x + Dropout(MHA(x, x, x)))   # num_heads heads, attention dropout
        x = x + Dropout(MLP(x))                    # Linear(E, mlp_dim) -> GELU -> Dropout -> Linear(mlp_dim, E)
    logits = Linear(E, 1, bias=False)(x)           # (B, N), raw logits, no sigmoid

About 9.8 M parameters at E=1024, N=1369 (9,800,704 exactly). Nothing mixes images of a batch (no batch
norm), so a batch of several views concatenated along the batch axis gives each view exactly what a separate
forward would in eval mode, and the same distribution in train mode (dropout masks are independent draws).

On the CPU the MLP runs over chunks of tokens (`MLP_CHUNK_BYTES`), the same function piecewise.

Kernels: the parameters live in ``nn.MultiheadAttention`` (``attn.in_proj_*``, ``attn.out_proj``), so saved
models load either way, but the block computes attention itself: ``F.scaled_dot_product_attention`` (a fused
kernel) in eval mode and on GPUs, and on the CPU in train mode `generalad.method.kernels.dropout_attention`,
because torch's CPU kernels with dropout fall back to unfused math; the dropouts draw cheaper masks there too.
``GENERALAD_KERNELS=reference`` and `kernels.reference_kernels` switch back to torch's own modules (see
`generalad.method.kernels` for when the kernels pay).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generalad.errors import ConfigError
from generalad.method import kernels

__all__ = ["Discriminator", "DiscriminatorBlock", "MLP_CHUNK_BYTES"]

# the MLP's hidden activations per chunk of tokens on the CPU: under the allocator's heap threshold
# (`generalad.allocator`, 128 MiB), so each chunk reuses freed heap memory instead of a fresh page-faulted mmap,
# and the GELU / dropout passes work on 64 MiB at a time. At N = 1369 (518 px), batch 16 x 3 views, one thread,
# CPU time (two alternating runs): a training step fp32 20.2 / 18.0 s -> 15.8 / 13.6 s, bf16 9.9 -> 8.6 / 7.8 s,
# process peak about the same (5.2-5.3 -> 5.1-5.5 GB fp32); at N = 256 (two chunks) unchanged (1.59-1.61 s).
MLP_CHUNK_BYTES = 64 << 20


class DiscriminatorBlock(nn.Module):
    """Post-norm self-attention followed by an un-normalised residual MLP."""

    def __init__(self, embed_dim: int, *, num_heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.attn_drop = kernels.Dropout(dropout)
        self.norm = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, mlp_dim),
            nn.GELU(),
            kernels.Dropout(dropout),
            nn.Linear(mlp_dim, embed_dim),
        )
        self.mlp_drop = kernels.Dropout(dropout)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """What ``self.attn(x, x, x, need_weights=False)`` computes, with a fused kernel where one exists."""
        if kernels.use_reference():
            return self.attn(x, x, x, need_weights=False)[0]
        attn = self.attn
        batch, num_patches, embed_dim = x.shape
        heads = attn.num_heads
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(batch, num_patches, 3, heads, embed_dim // heads).permute(2, 0, 3, 1, 4).unbind(0)
        p = attn.dropout if self.training else 0.0
        if p > 0.0 and x.device.type == "cpu":
            out = kernels.dropout_attention(q, k, v, p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        out = out.transpose(1, 2).reshape(batch, num_patches, embed_dim)
        return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """``self.mlp(x)``; on the CPU over chunks of tokens whose hidden activations stay under
        `MLP_CHUNK_BYTES` (the MLP acts on each token alone: equal in eval mode, the same dropout distribution
        in training)."""
        # rows per chunk: the hidden activations counted as float32, the widest dtype they take on a CPU
        rows = max(1, MLP_CHUNK_BYTES // (4 * self.mlp[0].out_features))
        flat = x.reshape(-1, x.shape[-1])
        if x.device.type != "cpu" or flat.shape[0] <= rows:
            return self.mlp(x)
        return torch.cat([self.mlp(chunk) for chunk in flat.split(rows)]).view(*x.shape[:-1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x + self.attn_drop(self._attention(x)))
        return x + self.mlp_drop(self._mlp(x))


class Discriminator(nn.Module):
    """Per-patch anomaly logits from (distorted) patch features.

    Args:
        num_patches: N, the number of patch tokens (fixed: the positional embedding has N rows).
        embed_dim: E, the feature width (backbone width x number of layers).
        num_heads: attention heads of each block; must divide ``embed_dim``.
        mlp_dim: hidden width of each block's MLP.
        num_blocks: number of attention blocks.
        dropout: every dropout rate (attention weights, attention output, MLP hidden, MLP output).

    Example:
        >>> model = Discriminator(16, 32)
        >>> model(torch.randn(2, 16, 32)).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        num_patches: int,
        embed_dim: int,
        *,
        num_heads: int = 4,
        mlp_dim: int = 2048,
        num_blocks: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_patches < 1 or embed_dim < 1 or mlp_dim < 1 or num_blocks < 1 or num_heads < 1:
            raise ConfigError(
                f"discriminator sizes must be positive: num_patches={num_patches}, embed_dim={embed_dim}, "
                f"num_heads={num_heads}, mlp_dim={mlp_dim}, num_blocks={num_blocks}"
            )
        if embed_dim % num_heads:
            raise ConfigError(f"num_heads={num_heads} does not divide embed_dim={embed_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self._config = {
            "num_patches": int(num_patches),
            "embed_dim": int(embed_dim),
            "num_heads": int(num_heads),
            "mlp_dim": int(mlp_dim),
            "num_blocks": int(num_blocks),
            "dropout": float(dropout),
        }
        self.pos_embed = nn.Parameter(torch.randn(num_patches, embed_dim))
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(embed_dim, num_heads=num_heads, mlp_dim=mlp_dim, dropout=dropout)
            for _ in range(num_blocks)
        )
        self.head = nn.Linear(embed_dim, 1, bias=False)

    @property
    def num_patches(self) -> int:
        return self._config["num_patches"]

    @property
    def embed_dim(self) -> int:
        return self._config["embed_dim"]

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-ready dict; ``Discriminator.from_config(m.config())`` rebuilds it."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Discriminator:
        """A freshly initialised discriminator with the given constructor arguments."""
        config = dict(config)
        try:
            num_patches, embed_dim = config.pop("num_patches"), config.pop("embed_dim")
            return cls(num_patches, embed_dim, **config)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"bad discriminator config {config}: {exc}") from exc

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, N)`` for features ``(B, N, E)``."""
        if features.ndim != 3 or features.shape[1:] != self.pos_embed.shape:
            raise ConfigError(
                f"discriminator expects (B, {self.num_patches}, {self.embed_dim}) features, "
                f"got {tuple(features.shape)}"
            )
        x = features + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(x).squeeze(-1)
