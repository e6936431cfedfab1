"""The device reaches every torch call of training and scoring: run on `meta` and check where the heavy ops went
(tests/fixtures/meta_device.py), and the held-in-memory test features score exactly like streamed ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generalad.devices import HOLD_BYTES_ENV
from generalad.method.evaluation import hold_features
from generalad.method.experiment import run_one_class
from generalad.method.feature_source import InMemoryFeatures
from generalad.method.presets import preset_for
from generalad.method.scoring import patch_logits
from generalad.method.split import OneClassSplit
from generalad.method.training import build_discriminator, train_discriminator
from tests.fixtures.meta_device import OnMeta

PRESET = preset_for("mvtec_ad").with_overrides(epochs=2, batch_size=4, top_k=2, num_heads=2, mlp_dim=16)


class CountingSource(InMemoryFeatures):
    """Counts the rows it hands out (how often the test features were read)."""

    rows_read = 0

    def iter_batches(self, batches):
        for tokens, attn in super().iter_batches(batches):
            self.rows_read += len(tokens)
            yield tokens, attn


def _source(n: int = 12, patches: int = 4, dim: int = 8) -> CountingSource:
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(n, patches, dim)).astype(np.float32)
    return CountingSource(tokens, rng.random((n, 2, patches)).astype(np.float32))


SPLIT = OneClassSplit("x", np.arange(8), np.arange(8, 12), np.array([0, 1, 0, 1], np.int8))


def test_training_runs_every_heavy_op_on_the_requested_device() -> None:
    with OnMeta() as mode:
        result = train_discriminator(_source(), np.arange(8), PRESET, device="meta", progress=False)
    assert mode.devices() == {"meta"}, mode.heavy
    assert {"mm", "layer_norm", "softmax"} <= mode.families()
    assert {p.device.type for p in result.model.parameters()} == {"meta"}


@pytest.mark.parametrize("hold_bytes", [None, "0"], ids=["held", "streamed"])
def test_experiment_trains_and_scores_on_the_device(monkeypatch, hold_bytes) -> None:
    if hold_bytes is not None:
        monkeypatch.setenv(HOLD_BYTES_ENV, hold_bytes)
    with OnMeta() as mode:
        result = run_one_class(_source(), SPLIT, PRESET, device="meta", eval_every_epoch=True, progress=False)
    assert mode.devices() == {"meta"}, mode.heavy
    assert "scaled_dot_product" in mode.families()  # eval-mode attention: the scoring forward ran there too
    assert result.device == "meta"


def test_held_features_are_read_once_and_score_exactly_like_streaming() -> None:
    source = _source()
    torch.manual_seed(0)
    model = build_discriminator(4, 8, PRESET).eval()
    rows = SPLIT.test_rows
    held = hold_features(source, rows, torch.device("cpu"), batch_size=3)
    assert held is not None and source.rows_read == len(rows)
    expected = patch_logits(model, source, rows, batch_size=3)
    for _ in range(3):
        torch.testing.assert_close(held.logits(model), expected, rtol=0, atol=0)
    assert source.rows_read == 2 * len(rows)  # one hold + the one streamed reference, never again


def test_held_features_fall_back_to_streaming_when_they_do_not_fit() -> None:
    source = _source()
    need = len(SPLIT.test_rows) * 4 * 8 * 4
    assert hold_features(source, SPLIT.test_rows, torch.device("cpu"), budget_bytes=need - 1) is None
    assert source.rows_read == 0
    assert hold_features(source, SPLIT.test_rows, torch.device("cpu"), budget_bytes=need).nbytes == need


def test_every_epoch_evaluation_reads_the_test_features_once(monkeypatch) -> None:
    monkeypatch.delenv(HOLD_BYTES_ENV, raising=False)
    held_source, streamed_source = _source(), _source()
    held = run_one_class(held_source, SPLIT, PRESET, eval_every_epoch=True, progress=False)
    monkeypatch.setenv(HOLD_BYTES_ENV, "0")
    streamed = run_one_class(streamed_source, SPLIT, PRESET, eval_every_epoch=True, progress=False)
    train_reads = PRESET.epochs * 8  # two epochs of the 8 training rows, batch 4
    assert held_source.rows_read == train_reads + len(SPLIT.test_rows)
    assert streamed_source.rows_read == train_reads + PRESET.epochs * len(SPLIT.test_rows)
    assert held.metrics == streamed.metrics  # same numbers either way


def test_a_loss_scaler_drives_backward_and_step() -> None:
    """fp16's wiring, on the CPU: a scaler that scales by 1 must give the unscaled step's weights exactly."""
    from generalad.method.training import make_optimizer, training_step

    class UnitScaler:
        calls: list[str] = []

        def scale(self, loss):
            self.calls.append("scale")
            return loss * 1.0

        def step(self, optimizer):
            self.calls.append("step")
            optimizer.step()

        def update(self):
            self.calls.append("update")

    source = _source()
    tokens, attn = next(source.iter_batches([range(4)]))
    weights = []
    for scaler in (None, UnitScaler()):
        torch.manual_seed(0)
        model = build_discriminator(4, 8, PRESET).train()
        optimizer, _ = make_optimizer(model, PRESET, 1)
        generator = torch.Generator().manual_seed(0)
        training_step(model, optimizer, tokens, attn, views=PRESET.views, generator=generator, scaler=scaler)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert UnitScaler.calls == ["scale", "step", "update"]
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
