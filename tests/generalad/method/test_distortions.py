"""The seven views (labels, k, permutations, copies) and the loss against explicit BCE formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from generalad.errors import ConfigError
from generalad.method.distortions import (
    VIEW_NAMES,
    DistortedView,
    distortion_loss,
    make_view,
    make_views,
    view_loss,
)

B, N, E, H = 64, 12, 5, 3


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    features = torch.randn(B, N, E, generator=g)
    # distinct attention values: each head has its own strict ordering
    attn = torch.rand(B, H, N, generator=g)
    return features, attn


def _view(name, batch, seed=0, **kw) -> DistortedView:
    features, attn = batch
    return make_view(name, features, attn, generator=torch.Generator().manual_seed(seed), **kw)


def _changed(view: DistortedView, features: torch.Tensor) -> torch.Tensor:
    return (view.features != features).any(dim=-1)


def _is_top_k_of_some_head(selected: torch.Tensor, attn: torch.Tensor) -> bool:
    """Every image's selected set is the top-|set| patches of at least one head."""
    for b in range(selected.shape[0]):
        k = int(selected[b].sum())
        ok = False
        for h in range(attn.shape[1]):
            top = set(torch.topk(attn[b, h], k).indices.tolist())
            ok |= top == set(torch.nonzero(selected[b]).flatten().tolist())
        if not ok:
            return False
    return True


def test_every_view_has_the_right_shapes_and_binary_labels(batch):
    features, _ = batch
    for name in VIEW_NAMES:
        view = _view(name, batch)
        assert view.name == name
        assert view.features.shape == features.shape
        assert view.labels.shape == (B, N) and view.labels.dtype == torch.float32
        assert set(view.labels.unique().tolist()) <= {0.0, 1.0}


def test_clean_and_noise_all(batch):
    features, _ = batch
    clean = _view("clean", batch)
    assert torch.equal(clean.features, features)
    assert clean.labels.sum() == 0 and not clean.partial
    noisy = _view("noise_all", batch)
    assert _changed(noisy, features).all()
    assert noisy.labels.min() == 1 and not noisy.partial


def test_noise_scale_is_sigma(batch):
    features, _ = batch
    big = features.new_zeros(512, N, 64)
    view = make_view("noise_all", big, generator=torch.Generator().manual_seed(0), sigma=0.25)
    assert abs(view.features.std().item() - 0.25) < 0.005
    assert abs(view.features.mean().item()) < 0.005
    assert torch.equal(_view("noise_all", batch).features, _view("noise_all", batch).features)


@pytest.mark.parametrize("name", ["noise_random", "noise_attention"])
def test_noise_views_label_exactly_the_noised_patches(batch, name):
    features, attn = batch
    view = _view(name, batch)
    changed = _changed(view, features)
    assert torch.equal(changed, view.labels.bool())
    assert torch.equal(changed, view.selected)
    k = view.selected.sum(dim=1)
    assert int(k.min()) >= 1 and int(k.max()) <= N
    assert view.partial
    if name == "noise_attention":
        assert _is_top_k_of_some_head(view.selected, attn)


def test_k_is_uniform_over_1_to_n():
    features = torch.zeros(4000, 4, 2)
    view = make_view("noise_random", features, generator=torch.Generator().manual_seed(0))
    counts = np.bincount(view.selected.sum(dim=1).numpy(), minlength=5)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] / 4000 - 0.25) < 0.03)


def test_attention_views_pick_a_random_head_per_image():
    # head h puts the most attention on patch h only: the top-1 patch names the head
    attn = torch.full((600, 3, 6), 0.01)
    for h in range(3):
        attn[:, h, h] = 1.0
    features = torch.randn(600, 6, 2)
    view = make_view("noise_attention", features, attn, generator=torch.Generator().manual_seed(0))
    k1 = view.selected.sum(dim=1) == 1
    heads = view.selected[k1].float().argmax(dim=1)
    assert set(heads.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("name", ["attention_shuffle", "random_shuffle"])
def test_shuffle_is_a_permutation_of_the_selected_set(batch, name):
    features, attn = batch
    view = _view(name, batch)
    idx = torch.arange(N)
    for b in range(B):
        sel = view.selected[b]
        assert 1 <= int(sel.sum()) <= N
        assert torch.equal(view.source[b][~sel], idx[~sel])  # untouched outside the set
        assert sorted(view.source[b][sel].tolist()) == idx[sel].tolist()  # a permutation of the set
        assert torch.equal(view.features[b], features[b][view.source[b]])
    assert torch.equal(view.labels.bool(), view.selected)  # fixed points keep label 1 by default
    if name == "attention_shuffle":
        assert _is_top_k_of_some_head(view.selected, attn)


@pytest.mark.parametrize("name", ["attention_shuffle", "random_shuffle", "copy_out"])
def test_exclude_fixed_points_labels_only_moved_patches(batch, name):
    view = _view(name, batch, exclude_fixed_points=True)
    moved = view.selected & (view.source != torch.arange(N))
    assert torch.equal(view.labels.bool(), moved)
    default = _view(name, batch)
    assert torch.equal(default.source, view.source)  # the flag changes labels only
    # k = 1 shuffles are always fixed points; some exist in a batch of 64
    if name != "copy_out":
        assert (default.labels.sum() > view.labels.sum()).item()


def test_copy_out_copies_from_distinct_positions_of_the_same_image(batch):
    features, attn = batch
    view = _view("copy_out", batch)
    assert _is_top_k_of_some_head(view.selected, attn)
    idx = torch.arange(N)
    for b in range(B):
        sel = view.selected[b]
        donors = view.source[b][sel]
        assert len(set(donors.tolist())) == len(donors)
        assert torch.equal(view.source[b][~sel], idx[~sel])
        assert torch.equal(view.features[b], features[b][view.source[b]])
    assert torch.equal(view.labels.bool(), view.selected)


def test_views_are_reproducible_and_need_attention(batch):
    features, attn = batch
    a = make_views(VIEW_NAMES, features, attn, generator=torch.Generator().manual_seed(5))
    b = make_views(VIEW_NAMES, features, attn, generator=torch.Generator().manual_seed(5))
    for va, vb in zip(a, b, strict=True):
        assert torch.equal(va.features, vb.features) and torch.equal(va.labels, vb.labels)
    with pytest.raises(ConfigError, match="attention"):
        make_view("copy_out", features, None, generator=torch.Generator())
    with pytest.raises(ConfigError, match="unknown view"):
        make_views(["clean", "blur"], features, attn, generator=torch.Generator())


def _bce(x: float, y: float) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_loss_matches_hand_computation():
    logits = torch.tensor([[0.3, -1.2, 2.0], [0.5, 0.1, -0.7]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    x, y = logits.numpy(), labels.numpy()
    terms = [[_bce(x[i, j], y[i, j]) for j in range(3)] for i in range(2)]
    full = sum(map(sum, terms)) / 6
    pos = [terms[i][j] for i in range(2) for j in range(3) if y[i, j] == 1]
    neg = [terms[i][j] for i in range(2) for j in range(3) if y[i, j] == 0]
    partial = sum(pos) / len(pos) + sum(neg) / len(neg)
    assert view_loss(logits, labels, partial=False).item() == pytest.approx(full, rel=1e-12)
    assert view_loss(logits, labels, partial=True).item() == pytest.approx(partial, rel=1e-12)
    # one class absent (k = N everywhere): its term is dropped
    ones = torch.ones_like(labels)
    only_pos = sum(_bce(v, 1.0) for v in x.flatten()) / 6
    assert view_loss(logits, ones, partial=True).item() == pytest.approx(only_pos, rel=1e-12)
    assert view_loss(logits, 0 * ones, partial=True).item() == pytest.approx(
        sum(_bce(v, 0.0) for v in x.flatten()) / 6, rel=1e-12
    )


def test_total_loss_is_the_sum_over_views(batch):
    features, attn = batch
    views = make_views(
        ["clean", "noise_all", "noise_random"], features, attn, generator=torch.Generator().manual_seed(0)
    )
    logits = [torch.randn(B, N) for _ in views]
    total, parts = distortion_loss(logits, views)
    assert list(parts) == ["clean", "noise_all", "noise_random"]
    expected = (
        view_loss(logits[0], views[0].labels, partial=False)
        + view_loss(logits[1], views[1].labels, partial=False)
        + view_loss(logits[2], views[2].labels, partial=True)
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
