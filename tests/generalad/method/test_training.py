"""The training loop: batching rules, schedule, callbacks, few-shot, failures."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pytest
import torch

from generalad.errors import ConfigError, TrainingError
from generalad.method.discriminator import Discriminator
from generalad.method.feature_source import FeatureSource, InMemoryFeatures
from generalad.method.training import (
    build_discriminator,
    effective_batch_size,
    epoch_batches,
    fewshot_rows,
    train_discriminator,
    training_step,
)


class RecordingSource:
    """Wraps a source and records every iter_batches call (as lists of index lists)."""

    def __init__(self, inner: FeatureSource) -> None:
        self.inner = inner
        self.calls: list[list[list[int]]] = []

    num_images = property(lambda self: self.inner.num_images)
    num_patches = property(lambda self: self.inner.num_patches)
    embed_dim = property(lambda self: self.inner.embed_dim)
    num_heads = property(lambda self: self.inner.num_heads)

    def iter_batches(self, batches: Iterable[Sequence[int]]):
        batches = [list(map(int, b)) for b in batches]
        self.calls.append(batches)
        return self.inner.iter_batches(batches)


def _weights(model: Discriminator) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fewshot_rows_are_a_sorted_seeded_sample():
    rows = np.arange(100, 160)
    a = fewshot_rows(rows, 8, 10)
    assert np.array_equal(a, fewshot_rows(rows, 8, 10))
    assert np.all(np.diff(a) > 0) and set(a) <= set(rows) and len(a) == 8
    assert not np.array_equal(a, fewshot_rows(rows, 8, 20))
    assert not np.array_equal(a, rows[:8])  # not the first images in directory order
    assert len(fewshot_rows(rows, 60, 0)) == 60
    with pytest.raises(ConfigError, match="shots"):
        fewshot_rows(rows, 61, 0)
    with pytest.raises(ConfigError, match="shots"):
        fewshot_rows(rows, 0, 0)


def test_epoch_batches_subset_rule():
    rng = np.random.default_rng(0)
    rows = np.arange(1000, 3000)
    first = epoch_batches(rows, batch_size=16, epoch_subset=250, rng=rng)
    second = epoch_batches(rows, batch_size=16, epoch_subset=250, rng=rng)
    assert len(first) == 15 and all(len(b) == 16 for b in first)  # 250 // 16 after drop_last
    flat = np.concatenate(first)
    assert len(np.unique(flat)) == 240 and set(flat) <= set(rows)
    assert not np.array_equal(flat, np.concatenate(second))  # a new draw every epoch


def test_epoch_batches_full_set_shuffled_drop_last():
    rng = np.random.default_rng(0)
    rows = np.arange(37)
    batches = epoch_batches(rows, batch_size=16, epoch_subset=None, rng=rng)
    assert [len(b) for b in batches] == [16, 16]
    flat = np.concatenate(batches)
    assert len(np.unique(flat)) == 32
    assert all(np.all(np.diff(b) > 0) for b in batches)  # sorted within a batch
    # a subset larger than the split means the whole split
    assert len(epoch_batches(rows, batch_size=16, epoch_subset=250, rng=rng)) == 2


def test_effective_batch_size():
    assert effective_batch_size(100, 16) == 16
    assert effective_batch_size(3, 16) == 3
    with pytest.raises(TrainingError, match="empty"):
        effective_batch_size(0, 16)


# Determinism for a seed (weights, losses, metrics, scores): tests/reliability/test_determinism.py.


def test_global_rng_is_untouched(tiny_source, tiny_preset):
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    train_discriminator(tiny_source, np.arange(32), tiny_preset.with_overrides(epochs=1), progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_batches_are_planned_per_epoch_and_bounded(tiny_source, tiny_preset):
    source = RecordingSource(tiny_source)
    result = train_discriminator(source, np.arange(32), tiny_preset.with_overrides(epochs=3), progress=False)
    assert len(source.calls) == 3  # one iter_batches call per epoch, with every batch of the epoch
    for call in source.calls:
        assert [len(b) for b in call] == [16, 16]
        assert sorted(sum(call, [])) == list(range(32))
    assert [h["steps"] for h in result.history] == [2, 2, 2]


def test_subset_preset_draws_per_epoch(tiny_preset):
    rng = np.random.default_rng(0)
    source = RecordingSource(InMemoryFeatures(rng.normal(size=(40, 16, 8)).astype(np.float32)))
    preset = tiny_preset.with_overrides(epoch_subset=20, views=("clean", "noise_all"), epochs=2)
    train_discriminator(source, np.arange(40), preset, progress=False)
    assert [[len(b) for b in call] for call in source.calls] == [[16], [16]]
    assert source.calls[0] != source.calls[1]


def test_fewshot_smaller_than_a_batch_uses_all_images(tiny_source, tiny_preset):
    source = RecordingSource(tiny_source)
    result = train_discriminator(source, np.array([3, 7, 11]), tiny_preset, progress=False)
    assert result.batch_size == 3
    assert [sorted(call[0]) for call in source.calls] == [[3, 7, 11], [3, 7, 11]]


def test_cosine_schedule_per_epoch(tiny_source, tiny_preset):
    epochs = 5
    result = train_discriminator(
        tiny_source, np.arange(32), tiny_preset.with_overrides(epochs=epochs), progress=False
    )
    lr, low = 5e-4, 0.2 * 5e-4
    expected = [low + (lr - low) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert [h["lr"] for h in result.history] == pytest.approx(expected, rel=1e-9)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5]
    assert set(result.history[0]) >= {"loss", "loss_clean", "loss_noise_all", "loss_noise_random", "seconds"}


def test_callback_sees_every_epoch_and_does_not_change_training(tiny_source, tiny_preset):
    seen: list[int] = []

    def greedy_callback(epoch: int, model: Discriminator) -> None:
        seen.append(epoch)
        torch.rand(100)  # consumes the global RNG that dropout uses
        model.eval()

    rows = np.arange(32)
    with_cb = train_discriminator(
        tiny_source, rows, tiny_preset, on_epoch_end=greedy_callback, progress=False
    )
    without = train_discriminator(tiny_source, rows, tiny_preset, progress=False)
    assert seen == [1, 2]
    wa, wb = _weights(with_cb.model), _weights(without.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_features_raise_training_error(tiny_preset):
    tokens = np.random.default_rng(0).normal(size=(20, 16, 8)).astype(np.float32)
    tokens[5, 3, 2] = np.nan
    with pytest.raises(TrainingError, match=r"epoch 1/2, step 1/1"):
        train_discriminator(InMemoryFeatures(tokens), np.arange(20), tiny_preset, progress=False)


def test_bad_rows_raise(tiny_source, tiny_preset):
    with pytest.raises(TrainingError, match="feature source has 48"):
        train_discriminator(tiny_source, np.array([1, 48]), tiny_preset, progress=False)
    with pytest.raises(TrainingError, match="empty"):
        train_discriminator(tiny_source, np.array([], dtype=np.int64), tiny_preset, progress=False)
    with pytest.raises(ConfigError, match="epochs"):
        train_discriminator(tiny_source, np.arange(4), tiny_preset, epochs=0, progress=False)


def test_batched_step_equals_per_view_steps_without_dropout(tiny_preset):
    preset = tiny_preset.with_overrides(dropout=0.0)
    g = torch.Generator().manual_seed(0)
    tokens, attn = torch.randn(4, 16, 8, generator=g), torch.rand(4, 2, 16, generator=g)
    models = []
    for batched in (True, False):
        torch.manual_seed(0)
        model = build_discriminator(16, 8, preset)
        # plain SGD: Adam's first step divides tiny gradients by tiny norms and amplifies rounding noise
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss, parts = training_step(
            model,
            optimizer,
            tokens,
            attn,
            views=preset.views,
            generator=torch.Generator().manual_seed(1),
            batched=batched,
        )
        models.append((model, loss))
    (m1, l1), (m2, l2) = models
    assert l1.item() == pytest.approx(l2.item(), rel=1e-5)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-6)
