"""The discriminator: parameter count, shapes, config round trip, batch independence."""

from __future__ import annotations

import pytest
import torch

from generalad.errors import ConfigError
from generalad.method.discriminator import Discriminator


def _expected_params(n: int, e: int, mlp: int = 2048, blocks: int = 1) -> int:
    pos = n * e
    attn = (3 * e * e + 3 * e) + (e * e + e)  # in-projection (q, k, v) and out-projection, with biases
    norm = 2 * e
    mlp_params = (e * mlp + mlp) + (mlp * e + e)
    head = e  # no bias
    return pos + blocks * (attn + norm + mlp_params) + head


def test_parameter_count_at_vit_large_shapes():
    model = Discriminator(1369, 1024)
    count = sum(p.numel() for p in model.parameters())
    assert count == _expected_params(1369, 1024) == 9_800_704  # "about 9.8 M" (docs/method.md section 3)


def test_parameter_count_scales_with_blocks():
    model = Discriminator(16, 8, mlp_dim=32, num_blocks=3)
    assert sum(p.numel() for p in model.parameters()) == _expected_params(16, 8, 32, 3)


def test_shapes_config_and_init():
    torch.manual_seed(0)
    model = Discriminator(16, 8, mlp_dim=32)
    assert model(torch.randn(5, 16, 8)).shape == (5, 16)
    assert model.config() == {
        "num_patches": 16,
        "embed_dim": 8,
        "num_heads": 4,
        "mlp_dim": 32,
        "num_blocks": 1,
        "dropout": 0.1,
    }
    assert model.head.bias is None
    assert model.pos_embed.shape == (16, 8)
    big = Discriminator(400, 64)
    assert abs(big.pos_embed.mean().item()) < 0.02 and abs(big.pos_embed.std().item() - 1) < 0.02
    rebuilt = Discriminator.from_config(model.config())
    assert rebuilt.config() == model.config()


def test_images_do_not_interact_in_eval_mode():
    torch.manual_seed(0)
    model = Discriminator(16, 8, mlp_dim=32).eval()
    a, b = torch.randn(3, 16, 8), torch.randn(2, 16, 8)
    together = model(torch.cat([a, b]))
    torch.testing.assert_close(together, torch.cat([model(a), model(b)]), rtol=1e-5, atol=1e-6)


def test_dropout_is_active_in_train_mode_only():
    torch.manual_seed(0)
    model = Discriminator(16, 8, mlp_dim=32)
    x = torch.randn(2, 16, 8)
    assert not torch.equal(model.train()(x), model(x))
    assert torch.equal(model.eval()(x), model(x))


def test_bad_configs_and_inputs():
    with pytest.raises(ConfigError, match="divide"):
        Discriminator(16, 10, num_heads=4)
    with pytest.raises(ConfigError, match="expects"):
        Discriminator(16, 8)(torch.randn(1, 15, 8))


def test_mlp_over_token_chunks_equals_one_pass(monkeypatch):
    """The CPU's chunked MLP (chunks of 7 tokens here; 60 in all, so the last chunk is short) gives the same
    logits and parameter gradients as one pass, in eval mode, and keeps dropout in train mode."""
    from generalad.method import discriminator

    torch.manual_seed(0)
    model = Discriminator(20, 16, num_heads=4, mlp_dim=24, num_blocks=2, dropout=0.1).double().eval()
    x = torch.randn(3, 20, 16, dtype=torch.float64)

    def logits_and_grads():
        logits = model(x)
        return logits.detach(), torch.autograd.grad(logits.square().sum(), list(model.parameters()))

    whole, whole_grads = logits_and_grads()
    monkeypatch.setattr(discriminator, "MLP_CHUNK_BYTES", 7 * 4 * 24)
    chunked, chunked_grads = logits_and_grads()
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-13)
    for a, b in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    model.train()
    assert not torch.equal(model(x), model(x))
