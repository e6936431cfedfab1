"""Self-supervised anomaly feature generation: the seven views and their loss (docs/method.md section 2).

Every view takes a batch of clean patch features ``(B, N, E)`` and returns distorted features plus one
label per patch (1 = distorted). All randomness comes from one ``torch.Generator`` that must live on the
features' device, so a view is reproducible from the generator's seed. Everything is batched tensor
arithmetic (argsort / gather / scatter): there is no Python loop over patches or images.

Views (``k`` is drawn uniformly from ``{1..N}`` per image and per view, ``eps ~ N(0, sigma^2)``):

- ``clean``: ``F``, all labels 0.
- ``noise_all``: ``F + eps`` on every patch, all labels 1.
- ``noise_random``: ``+ eps`` on ``k`` random patches, labelled 1.
- ``noise_attention``: a random head per image; ``+ eps`` on the top-``k`` patches of its CLS attention.
- ``attention_shuffle``: a random head per image; the top-``k`` patches are permuted among themselves;
  all ``k`` positions are labelled 1, including fixed points of the permutation, which keep their own
  feature (the reference's behaviour; with ``k = 1`` the single patch is always a fixed point).
  ``exclude_fixed_points=True`` labels fixed points 0 instead.
- ``copy_out``: the top-``k`` attention positions are overwritten with the features of ``k`` distinct random
  positions of the same image (drawn from all ``N``, so a position may copy itself: a fixed point).
- ``random_shuffle``: like ``attention_shuffle`` on ``k`` random positions.

``exclude_fixed_points`` applies to every view that moves features (the two shuffles and ``copy_out``):
a position whose source is itself is then labelled 0. Attention ties are broken by patch index (stable
sort), so with uniform attention the "top-k" is the first ``k`` patches.

Loss: binary cross-entropy with logits. ``clean`` and ``noise_all``: mean over all ``B*N`` patches.
Partial views: mean over the label-0 patches plus mean over the label-1 patches of the whole batch (equal
weight whatever ``k`` is); a class absent from the batch (e.g. ``k = N`` for every image) drops its term.
Total = unweighted sum over the active views.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> feats, attn = torch.randn(2, 16, 8), torch.rand(2, 3, 16)
    >>> views = make_views(["clean", "noise_all", "noise_random"], feats, attn, generator=g)
    >>> [v.labels.shape for v in views]
    [torch.Size([2, 16]), torch.Size([2, 16]), torch.Size([2, 16])]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from generalad.defaults import VIEW_NAMES, ViewName
from generalad.errors import ConfigError

__all__ = [
    "ViewName",
    "VIEW_NAMES",
    "FULL_VIEWS",
    "ATTENTION_VIEWS",
    "DEFAULT_SIGMA",
    "DistortedView",
    "make_view",
    "make_views",
    "view_loss",
    "distortion_loss",
    "check_view_names",
]

# views whose loss is a plain mean over all B*N patches; every other view is "partial"
FULL_VIEWS: frozenset[str] = frozenset({"clean", "noise_all"})
# views that need the CLS attention maps
ATTENTION_VIEWS: frozenset[str] = frozenset({"noise_attention", "attention_shuffle", "copy_out"})
DEFAULT_SIGMA = 0.25


@dataclass(frozen=True)
class DistortedView:
    """One view of a batch.

    Attributes:
        name: the view's name.
        features: distorted features ``(B, N, E)``.
        labels: float32 ``(B, N)``, 1 where the patch counts as distorted.
        selected: bool ``(B, N)``, the ``k`` positions the view chose (all True / all False for the full views).
        source: long ``(B, N)`` for the views that move features: the position each patch's feature was taken
            from (its own index where untouched); None for the other views.
    """

    name: ViewName
    features: torch.Tensor
    labels: torch.Tensor
    selected: torch.Tensor
    source: torch.Tensor | None = None

    @property
    def partial(self) -> bool:
        """Whether the loss balances label-0 and label-1 patches (every view but clean and noise_all)."""
        return self.name not in FULL_VIEWS


def check_view_names(names: Sequence[str]) -> tuple[ViewName, ...]:
    """The names as a tuple, or ConfigError naming an unknown or repeated view."""
    names = tuple(names)
    for name in names:
        if name not in VIEW_NAMES:
            raise ConfigError(f"unknown view {name!r}; known views: {', '.join(VIEW_NAMES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"views must not repeat, got {list(names)}")
    if not names:
        raise ConfigError("at least one view is needed")
    return names  # type: ignore[return-value]


def _sample_k(batch: int, num_patches: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """k ~ U{1..N} per image, shape (B,)."""
    return torch.randint(1, num_patches + 1, (batch,), generator=generator, device=device)


def _random_order(
    batch: int, num_patches: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """An independent uniformly random permutation of 0..N-1 per image, shape (B, N)."""
    return torch.rand(batch, num_patches, generator=generator, device=device).argsort(dim=1)


def _attention_order(cls_attn: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Patch indices sorted by descending CLS attention of one random head per image, shape (B, N)."""
    batch, heads, num_patches = cls_attn.shape
    head = torch.randint(0, heads, (batch,), generator=generator, device=cls_attn.device)
    attn = cls_attn.gather(1, head.view(batch, 1, 1).expand(batch, 1, num_patches)).squeeze(1)
    return attn.argsort(dim=1, descending=True, stable=True)


def _first_k_mask(order: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool (B, N), True at positions ``order[b, :k[b]]``."""
    slots = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.zeros_like(order, dtype=torch.bool).scatter_(1, order, slots < k[:, None])


def _shuffle_sources(order: torch.Tensor, k: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Source positions (B, N) that permute ``order[b, :k[b]]`` uniformly at random and fix everything else."""
    batch, num_patches = order.shape
    slots = torch.arange(num_patches, device=order.device).expand(batch, num_patches)
    inside = slots < k[:, None]
    # random keys in [0, 1) inside the first k slots, increasing keys >= 2 after them: sorting the keys
    # permutes the first k slots at random and leaves every later slot where it is
    keys = torch.where(
        inside, torch.rand(batch, num_patches, generator=generator, device=order.device), slots + 2.0
    )
    slot_perm = keys.argsort(dim=1)
    identity = torch.arange(num_patches, device=order.device).repeat(batch, 1)
    return identity.scatter_(1, order, order.gather(1, slot_perm))


def _copy_sources(order: torch.Tensor, k: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Source positions (B, N): ``order[b, j]`` takes a distinct random position for ``j < k[b]``."""
    batch, num_patches = order.shape
    donors = _random_order(batch, num_patches, generator, order.device)
    slots = torch.arange(num_patches, device=order.device).expand(batch, num_patches)
    src = torch.where(slots < k[:, None], donors, order)
    identity = torch.arange(num_patches, device=order.device).repeat(batch, 1)
    return identity.scatter_(1, order, src)


def _gather_patches(features: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return features.gather(1, source.unsqueeze(-1).expand_as(features))


def _check_inputs(name: str, features: torch.Tensor, cls_attn: torch.Tensor | None) -> None:
    """ConfigError unless features are (B, N, E) and, for attention views, cls_attn is (B, H, N)."""
    if features.ndim != 3:
        raise ConfigError(f"features must be (B, N, E), got shape {tuple(features.shape)}")
    batch, num_patches, _ = features.shape
    if name in ATTENTION_VIEWS:
        if cls_attn is None:
            raise ConfigError(f"view {name!r} needs the CLS attention maps (B, H, N)")
        if cls_attn.ndim != 3 or cls_attn.shape[0] != batch or cls_attn.shape[2] != num_patches:
            raise ConfigError(
                f"cls_attn shape {tuple(cls_attn.shape)} does not fit features {tuple(features.shape)}"
            )


def make_view(
    name: ViewName,
    features: torch.Tensor,
    cls_attn: torch.Tensor | None = None,
    *,
    generator: torch.Generator,
    sigma: float = DEFAULT_SIGMA,
    exclude_fixed_points: bool = False,
) -> DistortedView:
    """Build one view of a batch.

    Args:
        name: which view (see the module docstring).
        features: clean features ``(B, N, E)``; not modified.
        cls_attn: CLS attention ``(B, H, N)``; required by noise_attention, attention_shuffle and copy_out.
        generator: source of all randomness; must be on ``features.device``.
        sigma: standard deviation of the Gaussian noise.
        exclude_fixed_points: label 0 the positions of a shuffle / copy view whose source is themselves.

    Returns:
        The view: distorted features, float labels, the chosen positions and (moving views) the sources.
    """
    _check_inputs(name, features, cls_attn)
    batch, num_patches, _ = features.shape
    device = features.device

    def noise() -> torch.Tensor:
        return sigma * torch.randn(features.shape, generator=generator, device=device, dtype=features.dtype)

    if name == "clean":
        none = torch.zeros(batch, num_patches, dtype=torch.bool, device=device)
        return DistortedView(name, features, none.float(), none)
    if name == "noise_all":
        every = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
        return DistortedView(name, features + noise(), every.float(), every)

    k = _sample_k(batch, num_patches, generator, device)
    if name in ("noise_random", "random_shuffle"):
        order = _random_order(batch, num_patches, generator, device)
    elif name in ATTENTION_VIEWS:
        order = _attention_order(cls_attn.to(device), generator)  # type: ignore[union-attr]
    else:
        raise ConfigError(f"unknown view {name!r}; known views: {', '.join(VIEW_NAMES)}")
    selected = _first_k_mask(order, k)

    if name in ("noise_random", "noise_attention"):
        distorted = features + noise() * selected.unsqueeze(-1).to(features.dtype)
        return DistortedView(name, distorted, selected.float(), selected)

    if name == "copy_out":
        source = _copy_sources(order, k, generator)
    else:  # attention_shuffle, random_shuffle
        source = _shuffle_sources(order, k, generator)
    labels = selected
    if exclude_fixed_points:
        labels = selected & (source != torch.arange(num_patches, device=device))
    return DistortedView(name, _gather_patches(features, source), labels.float(), selected, source)


def make_views(
    names: Sequence[ViewName],
    features: torch.Tensor,
    cls_attn: torch.Tensor | None = None,
    *,
    generator: torch.Generator,
    sigma: float = DEFAULT_SIGMA,
    exclude_fixed_points: bool = False,
) -> list[DistortedView]:
    """Every named view of the same batch, in the given order (independent draws per view)."""
    return [
        make_view(
            name,
            features,
            cls_attn,
            generator=generator,
            sigma=sigma,
            exclude_fixed_points=exclude_fixed_points,
        )
        for name in check_view_names(names)
    ]


def view_loss(logits: torch.Tensor, labels: torch.Tensor, *, partial: bool) -> torch.Tensor:
    """BCE-with-logits loss of one view.

    Args:
        logits: ``(B, N)`` raw discriminator outputs.
        labels: ``(B, N)`` float 0/1.
        partial: False: mean over all patches. True: mean over label-0 patches + mean over label-1 patches,
            pooled over the batch; a class with no patch contributes nothing (no Python branch, no device sync).

    Returns:
        A scalar tensor.
    """
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if not partial:
        return bce.mean()
    positive = labels > 0.5
    pos = positive.to(bce.dtype)
    neg = 1.0 - pos
    return (bce * neg).sum() / neg.sum().clamp_min(1.0) + (bce * pos).sum() / pos.sum().clamp_min(1.0)


def distortion_loss(
    logits: Sequence[torch.Tensor], views: Sequence[DistortedView]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss (sum over views) and each view's loss, for logits aligned with ``views``."""
    if len(logits) != len(views):
        raise ConfigError(f"{len(logits)} logit tensors for {len(views)} views")
    parts = {v.name: view_loss(lg, v.labels, partial=v.partial) for lg, v in zip(logits, views, strict=True)}
    return torch.stack(list(parts.values())).sum(), parts
