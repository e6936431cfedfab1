"""CPU kernels of the discriminator's training step: cheap dropout masks and attention with dropout in cache.

Why: on the CPU, ``F.scaled_dot_product_attention`` with ``dropout_p > 0`` falls back to the math kernel, which
materialises the (B*H, N, N) scores, softmax, a float Bernoulli mask and the dropped weights (1.4 GB each at
N = 1369, batch 48, 4 heads) and draws the mask at ~6 ns per element. Two changes, same distribution:

- `keep_mask`: the mask from 8 random bits per element, exact to 2^-40 (see there); about 5x cheaper than
  ``bernoulli_``. `Dropout` uses it with the scale ``1 / (1 - p)`` (torch's) and keeps the scaled mask for backward.
- `dropout_attention`: softmax(Q K^T / sqrt(d)) with dropout, times V, computed in query blocks of about
  `BLOCK_ELEMENTS` scores (one core's L2), so scores, mask and weights of a block stay in cache. Each block's
  weights (float32) and mask (uint8) are kept for backward while they fit in the task's memory budget
  (`generalad.devices.memory_budget`: ``GENERALAD_HOLD_BYTES``, else a quarter of RAM per core; 5 bytes per
  score, 1.8 GB at N = 1369, batch 48, 4 heads); the backward recomputes the weights of the other blocks
  (torch's fused softmax) and regenerates their masks from the block's seed (the flash-attention scheme, with
  dropout). Kept or recomputed, the gradients are the same bits; keeping saves the backward a product, a
  softmax and a mask per block (N = 1369, 1 thread: attention forward + backward 5.8 -> 4.9 s, the whole
  training step 12.4 -> 11.1-11.4 s). Under bf16 autocast the matrix products run in bf16 (the CPU's AMX /
  AVX-512 BF16 units), the softmax in float32.

When: on the CPU in train mode, with any number of torch threads. Measured per step with one thread (1.09x at
N = 256, 1.23x at N = 1369 on an AMD EPYC; 2.4x leaner at N = 1369), and per epoch of a 224 px industrial
class with two threads on a 2-core Intel Xeon with AMX: fp32 1.22x, bf16 1.6x faster than torch's path on a
quiet machine, the same within noise with a busy process beside it. (They used to be on with one thread only,
after 2-thread epochs took 2x the CPU time of torch's path on a 2-core AMD EPYC at load 11-24; a machine that
behaves so can set the switch below.)
``GENERALAD_KERNELS=reference`` turns them off (torch's own modules, the path before these kernels);
`reference_kernels` does the same in code. Other devices always use torch's modules.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from generalad.devices import memory_budget

__all__ = [
    "BLOCK_ELEMENTS",
    "KERNELS_ENV",
    "Dropout",
    "keep_mask",
    "dropout_attention",
    "reference_kernels",
    "use_reference",
]

KERNELS_ENV = "GENERALAD_KERNELS"
# scores per attention block: float32 scores filling one core's L2 (`_l2_elements`: 2^18 = 1 MiB on the AMD
# EPYC measured, 2^19 on the Intel Xeon with 2 MiB, where 2^19 ran 4 % faster than 2^18 at N = 1369 and 2^20
# 2 % slower), BLOCK_ELEMENTS where the cache size is unknown. With several torch threads every op of a block is
# a parallel region whose start and join cost more than the L2 misses of larger blocks (measured: 2-thread steps
# at N = 256 ran 1.5-3x slower with 1 MiB blocks than with 8 MiB ones), so blocks grow by THREADED_BLOCK_FACTOR
BLOCK_ELEMENTS = 1 << 18
THREADED_BLOCK_FACTOR = 8
_L2_SIZE = "/sys/devices/system/cpu/cpu0/cache/index2/size"
_mode: list[str] = [os.environ.get(KERNELS_ENV, "").strip().lower() or "cpu"]  # cpu | reference


def use_reference() -> bool:
    """Whether the discriminator runs torch's own attention and dropout (see the module docstring: when)."""
    return _mode[0] == "reference"


@contextlib.contextmanager
def reference_kernels(enabled: bool = True) -> Iterator[None]:
    """Run the block with torch's modules (``enabled=True``) or force these kernels (False), e.g. to compare."""
    saved = _mode[0]
    _mode[0] = "reference" if enabled else "cpu"
    try:
        yield
    finally:
        _mode[0] = saved


def keep_mask(
    shape: tuple[int, ...] | torch.Size,
    p: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A uint8 tensor of ``shape``: each element 0 (dropped) with probability ``p``, else 1, independently.

    Each element gets 8 random bits (MT19937 words cut into int8 lanes) and is dropped below the threshold
    ``p * 256``; the lane value that straddles the threshold (probability 1/256) gets 32 more bits, so the drop
    probability is ``p`` to within 2^-40. uint8 because masking by multiplication with it is vectorised
    (``masked_fill`` with a bool mask is 10x slower on the CPU).
    """
    n = math.prod(shape)
    padded = -(-n // 8) * 8
    words = torch.empty(padded // 8, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)  # all 64 bits uniform
    lanes = words.view(torch.int8)[:n].view(shape)  # uniform on -128..127
    scaled = p * 256.0
    whole = math.floor(scaled)
    keep = torch.ge(lanes, whole - 128 + 1, out=torch.empty(shape, dtype=torch.uint8, device=device))
    fraction = scaled - whole
    if fraction < 1.0 and whole < 256:  # the straddling value keeps with probability 1 - fraction
        tie = torch.zeros(padded, dtype=torch.uint8, device=device)
        torch.eq(lanes.reshape(-1), whole - 128, out=tie[:n])
        # ties are rare: find the 8-byte words holding one, then the bytes (nonzero over n / 8 elements)
        hits = tie.view(torch.int64).nonzero().squeeze(1)
        if hits.numel():
            where = (hits[:, None] * 8 + torch.arange(8, device=device)).reshape(-1)
            where = where[tie[where].bool()]
            extra = torch.empty(where.numel(), dtype=torch.int64, device=device).random_(
                0, 2**32, generator=generator
            )
            keep.view(-1)[where] = (extra >= round(fraction * 2**32)).to(torch.uint8)
    return keep


class _DropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        # the scaled mask in x's dtype, kept for backward: regenerating it there from a uint8 mask costs a cast
        # and a scale per element again (about as much as the product itself), for 1-3 bytes per element saved
        scaled = keep_mask(x.shape, p, device=x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(scaled)
        return x * scaled  # float * uint8 is not vectorised: cast the mask first

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scaled,) = ctx.saved_tensors
        return grad * scaled, None


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the cheap CPU mask of `keep_mask` (same distribution; torch's own elsewhere)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if use_reference() or x.device.type != "cpu" or self.inplace:
            return F.dropout(x, self.p, True, self.inplace)
        return _DropoutFunction.apply(x, self.p)


@functools.cache
def _l2_elements() -> int:
    """float32 elements in one core's L2 (Linux sysfs), a power of two in [2^16, 2^20]; BLOCK_ELEMENTS if unknown."""
    try:
        text = Path(_L2_SIZE).read_text(encoding="ascii").strip().upper()
        size = int(text.rstrip("KMB")) * {"K": 1 << 10, "M": 1 << 20}.get(text.rstrip("B")[-1:], 1)
    except (OSError, ValueError):
        return BLOCK_ELEMENTS
    return 1 << min(20, max(16, (size // 4).bit_length() - 1))


def _block_elements() -> int:
    return _l2_elements() * (1 if torch.get_num_threads() == 1 else THREADED_BLOCK_FACTOR)


def _blocks(groups: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """(g0, g1, i0, i1) blocks of about `_block_elements` scores: whole heads when a head fits, else query rows."""
    per_head, size = rows * cols, _block_elements()
    if per_head <= size:
        step = max(1, size // per_head)
        return [(g, min(g + step, groups), 0, rows) for g in range(0, groups, step)]
    step = max(1, size // cols)
    return [(g, g + 1, i, min(i + step, rows)) for g in range(groups) for i in range(0, rows, step)]


def _block_mask(shape: torch.Size, p: float, seed: int, index: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed((seed + index) % 2**32)
    return keep_mask(shape, p, generator=generator, device=device)


class _DropoutAttentionFunction(torch.autograd.Function):
    """softmax(q k^T) with dropout (mask of block b from seed + b), times v; q (pre-scaled), k, v are (G, N, d).

    The matrix products run in the inputs' dtype (float32, or bfloat16 under bf16 autocast: the CPU's bf16
    matrix units, AMX or AVX-512 BF16); the softmax of their scores, the output and dq, dk, dv in float32.
    The first blocks whose weights and mask fit in ``keep_bytes`` keep them for backward; the others are
    recomputed there. Both give the same bits (same products, same block shapes, same seeds).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(
        ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, seed: int, keep_bytes: int
    ) -> torch.Tensor:
        scale = 1.0 / (1.0 - p)
        wide = torch.promote_types(q.dtype, torch.float32)
        out = torch.empty(q.shape, dtype=wide, device=q.device)
        # the blocks do not depend on keep_bytes: the masks (seeded per block) and so the results do not either
        blocks = _blocks(q.shape[0], q.shape[1], k.shape[1])
        bytes_per_score = wide.itemsize + 1  # the float weights and the uint8 mask
        sizes = ((g1 - g0) * (i1 - i0) * k.shape[1] * bytes_per_score for g0, g1, i0, i1 in blocks)
        kept_blocks = sum(total <= keep_bytes for total in itertools.accumulate(sizes))  # a leading run
        kept: list[torch.Tensor] = []  # weights, mask of the first kept_blocks blocks
        scratch = _Scratch(wide, q.device)
        for index, (g0, g1, i0, i1) in enumerate(blocks):
            weights = _weights(q[g0:g1, i0:i1], k[g0:g1], wide)
            mask = _block_mask(weights.shape, p, seed, index, q.device)
            if index < kept_blocks:
                kept += [weights, mask]
                dropped = torch.mul(weights, mask.to(wide), out=scratch.like(weights))
            else:
                dropped = weights.mul_(mask.to(wide))
            block_out = out[g0:g1, i0:i1]  # contiguous: whole heads, or rows of one head
            _product(block_out, dropped.to(v.dtype), v[g0:g1]).mul_(scale)
        ctx.save_for_backward(q, k, v, out, *kept)
        ctx.p, ctx.seed, ctx.blocks = p, seed, blocks
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")  # the forward's autocast state (off)
    def backward(ctx, grad_out: torch.Tensor):
        """Flash-attention backward: per block, the kept weights and mask, or the weights recomputed (one fused
        softmax) and the mask regenerated."""
        q, k, v, out, *kept = ctx.saved_tensors
        p, seed = ctx.p, ctx.seed
        scale = 1.0 / (1.0 - p)
        low, wide = q.dtype, out.dtype  # the matrix products' dtype, the rest's
        grad_out = grad_out.to(wide).contiguous()
        dq, dk, dv = (torch.empty(t.shape, dtype=wide, device=t.device) for t in (q, k, v))
        row_dot = (grad_out * out).sum(dim=-1, keepdim=True)  # D_i = dO_i . O_i = sum_j P_ij dP_ij
        grad_out = (grad_out * scale).to(low)
        scratch = _Scratch(wide, q.device)
        for index, (g0, g1, i0, i1) in enumerate(ctx.blocks):
            qb, kb, vb, gb = q[g0:g1, i0:i1], k[g0:g1], v[g0:g1], grad_out[g0:g1, i0:i1]
            first = i0 == 0  # the first query block of a head writes dk, dv; later ones add
            is_kept = index < len(kept) // 2
            if is_kept:
                weights, keep = kept[2 * index], kept[2 * index + 1]
            else:
                weights = _weights(qb, kb, wide)
                keep = _block_mask(weights.shape, p, seed, index, q.device)
            keep = keep.to(wide)
            dscores = torch.bmm(gb, vb.transpose(1, 2)).to(wide)
            dscores = dscores.mul_(keep).sub_(row_dot[g0:g1, i0:i1]).mul_(weights).to(low)
            # kept weights stay as they are (a second backward may read them)
            dropped = torch.mul(weights, keep, out=scratch.like(weights)) if is_kept else weights.mul_(keep)
            _product(dv[g0:g1], dropped.to(low).transpose(1, 2), gb, add=not first)
            _product(dq[g0:g1, i0:i1], dscores, kb)
            _product(dk[g0:g1], dscores.transpose(1, 2), qb, add=not first)
        return dq.to(low), dk.to(low), dv.to(low), None, None, None


class _Scratch:
    """One buffer for the blocks' temporaries, grown to the largest block: no allocation per block."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.buffer = torch.empty(0, dtype=dtype, device=device)

    def like(self, t: torch.Tensor) -> torch.Tensor:
        if self.buffer.numel() < t.numel():
            self.buffer = torch.empty(t.numel(), dtype=self.buffer.dtype, device=self.buffer.device)
        return self.buffer[: t.numel()].view(t.shape)


def _weights(q: torch.Tensor, k: torch.Tensor, wide: torch.dtype) -> torch.Tensor:
    """softmax(q k^T) in ``wide``: torch's fused softmax (one pass over rows held in cache, the cast included)
    costs less than keeping a log-sum-exp and re-exponentiating, in the forward and again in the backward."""
    return torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1, dtype=wide)


def _product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, add: bool = False) -> torch.Tensor:
    """``out = a @ b`` (or ``out += a @ b``) into the wider ``out``: in place when a and b have its dtype, else
    through a product in theirs (bf16: torch's CPU bmm has no bf16-in, float32-out form)."""
    if a.dtype == out.dtype:
        return out.baddbmm_(a, b) if add else torch.bmm(a, b, out=out)
    product = torch.bmm(a, b)
    return out.add_(product) if add else out.copy_(product)


def dropout_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """Attention with dropout on the weights, ``(..., N, d)`` in and out, blockwise (see the module docstring).

    Equals ``F.scaled_dot_product_attention(q, k, v, dropout_p=p)`` in distribution; its mask comes from torch's
    default generator (one seed per call), so ``torch.manual_seed`` makes it reproducible. bfloat16 inputs (bf16
    autocast) take bf16 matrix products with float32 softmax statistics; other dtypes compute in float32 or
    wider. The output has the input's dtype.
    """
    lead, (rows, dim) = q.shape[:-2], q.shape[-2:]
    seed = int(torch.randint(0, 2**32, (1,)))
    dtype = q.dtype
    # matrix products in bf16 where autocast asked for it, float32 (or float64) otherwise; softmax in float32+
    low = dtype if dtype == torch.bfloat16 else torch.promote_types(dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        flat = [t.to(low).reshape(-1, t.shape[-2], t.shape[-1]) for t in (q * dim**-0.5, k, v)]
        keep_bytes = memory_budget(q.device)
        out = _DropoutAttentionFunction.apply(*(t.contiguous() for t in flat), float(p), seed, keep_bytes)
    return out.view(*lead, rows, dim).to(dtype)
