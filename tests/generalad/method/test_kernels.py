"""The CPU kernels of the discriminator: exact against the reference formulation, same distribution in training."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from generalad.method import kernels
from generalad.method.discriminator import Discriminator


def _masks_of_call(shape: tuple[int, int, int], p: float, seed: int) -> torch.Tensor:
    """The keep mask `dropout_attention` uses for (G, N, N) scores with this seed, block by block."""
    groups, rows, cols = shape
    keep = torch.empty(shape, dtype=torch.uint8)
    for index, (g0, g1, i0, i1) in enumerate(kernels._blocks(groups, rows, cols)):
        keep[g0:g1, i0:i1] = kernels._block_mask(
            torch.Size((g1 - g0, i1 - i0, cols)), p, seed, index, torch.device("cpu")
        )
    return keep


# the budget for kept weights: none (all recomputed); 1,152 bytes, the first three one-row blocks of 37 float64
# scores (9 bytes each) at 64 elements per block and none of the larger blocks; all
@pytest.mark.parametrize("keep_bytes", [0, 2 * 64 * 9, 1 << 40])
@pytest.mark.parametrize("block_elements", [64, 4096, 1 << 18])  # query-row blocks, head groups, one block
def test_dropout_attention_equals_the_explicit_formula_with_its_mask(monkeypatch, block_elements, keep_bytes):
    monkeypatch.setattr(kernels, "_block_elements", lambda: block_elements)
    monkeypatch.setattr(kernels, "memory_budget", lambda device: keep_bytes)
    torch.manual_seed(0)
    groups, rows, dim, p = 6, 37, 8, 0.3
    q, k, v = (torch.randn(groups, rows, dim, dtype=torch.float64, requires_grad=True) for _ in range(3))
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**32, (1,)))  # the seed dropout_attention draws first
    torch.manual_seed(5)
    out = kernels.dropout_attention(q, k, v, p)
    keep = _masks_of_call((groups, rows, rows), p, seed).double()
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dim), dim=-1)
    reference = (weights * keep / (1 - p)) @ v
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    theirs = torch.autograd.grad(reference, (q, k, v), grad)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert 0.25 < 1 - keep.mean().item() < 0.35


@pytest.mark.parametrize("block_elements", [64, 1 << 18])
def test_bf16_dropout_attention_is_the_formula_to_bf16_rounding(monkeypatch, block_elements):
    """bf16 inputs: bf16 matrix products, float32 softmax; output and gradients within bf16 rounding of the
    float64 formula with the same mask (relative error ~1e-2, against ~1 for a wrong mask or formula)."""
    monkeypatch.setattr(kernels, "_block_elements", lambda: block_elements)
    torch.manual_seed(0)
    groups, rows, dim, p = 4, 37, 16, 0.3
    exact = [torch.randn(groups, rows, dim, dtype=torch.float64) for _ in range(3)]
    low = [t.bfloat16().requires_grad_() for t in exact]
    wide = [t.detach().double().requires_grad_() for t in low]  # the same (bf16-rounded) inputs
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**32, (1,)))
    torch.manual_seed(5)
    out = kernels.dropout_attention(*low, p)
    assert out.dtype == torch.bfloat16
    q, k, v = wide
    keep = _masks_of_call((groups, rows, rows), p, seed).double()
    reference = (torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dim), dim=-1) * keep / (1 - p)) @ v
    grad = torch.randn_like(reference)
    ours = [out.double(), *torch.autograd.grad(out, low, grad.bfloat16())]
    theirs = [reference, *torch.autograd.grad(reference, wide, grad)]
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs, strict=True):
        error = ((a.double() - b).norm() / b.norm()).item()
        assert error < 2e-2, (name, error)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_and_recomputed_weights_give_the_same_bits_and_survive_a_second_backward(monkeypatch, dtype):
    """Keeping every block's weights, some, or none changes the memory, never a bit of the output or gradients;
    a second backward through a retained graph reads the kept weights unchanged."""
    monkeypatch.setattr(kernels, "_block_elements", lambda: 300)  # 3 x 37 x 37 scores: 15 blocks
    torch.manual_seed(0)
    inputs = [torch.randn(3, 37, 8, dtype=dtype) for _ in range(3)]
    grad = torch.randn(3, 37, 8, dtype=dtype)

    def run(keep_bytes: int) -> list[torch.Tensor]:
        monkeypatch.setattr(kernels, "memory_budget", lambda device: keep_bytes)
        leaves = [t.clone().requires_grad_() for t in inputs]
        torch.manual_seed(7)
        out = kernels.dropout_attention(*leaves, 0.2)
        first = torch.autograd.grad(out, leaves, grad, retain_graph=True)
        second = torch.autograd.grad(out, leaves, grad)
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a, b)
        return [out, *first]

    recomputed = run(0)
    for keep_bytes in (5 * 300, 1 << 40):  # about the first block, every block
        for a, b in zip(recomputed, run(keep_bytes), strict=True):
            assert torch.equal(a, b)


def test_dropout_attention_matches_torch_in_distribution():
    """Mean and variance over draws of our attention and torch's math kernel with the same dropout agree."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 12, 4, dtype=torch.float64) for _ in range(3))
    draws = 3000
    ours = torch.stack([kernels.dropout_attention(q, k, v, 0.2) for _ in range(draws)])
    theirs = torch.stack([F.scaled_dot_product_attention(q, k, v, dropout_p=0.2) for _ in range(draws)])
    exact_mean = F.scaled_dot_product_attention(q, k, v)
    spread = theirs.std(0) / math.sqrt(draws)
    assert ((ours.mean(0) - exact_mean).abs() < 5 * spread + 1e-9).all()
    ratio = ours.var(0).sum() / theirs.var(0).sum()
    assert 0.9 < ratio.item() < 1.1


@pytest.mark.parametrize("p", [0.1, 0.03, 0.5])
def test_keep_mask_rate_is_exact(p):
    n = 1 << 22
    keep = kernels.keep_mask((n,), p, generator=torch.Generator().manual_seed(1))
    assert keep.dtype == torch.uint8 and set(keep.unique().tolist()) <= {0, 1}
    drop_rate = 1 - keep.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    # 0.1 * 256 = 25.6: ignoring the straddling lane value would give 25/256 (15 sigma off) or 26/256
    assert abs(drop_rate - p) < 4 * sigma
    again = kernels.keep_mask((n,), p, generator=torch.Generator().manual_seed(1))
    assert torch.equal(keep, again)


def test_dropout_module_scales_and_masks_like_torch():
    torch.manual_seed(0)
    x = torch.rand(1 << 20, dtype=torch.float64) + 0.5
    x.requires_grad_(True)
    layer = kernels.Dropout(0.1).train()
    with kernels.reference_kernels(False):
        y = layer(x)
    dropped = y == 0
    assert abs(dropped.double().mean().item() - 0.1) < 4 * math.sqrt(0.09 / x.numel())
    torch.testing.assert_close(y[~dropped], x[~dropped] / 0.9)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad == 0, dropped)
    torch.testing.assert_close(grad[~dropped], torch.full_like(grad[~dropped], 1 / 0.9))
    assert abs((y.sum() / x.sum()).item() - 1) < 0.005  # unbiased
    assert torch.equal(layer.eval()(x), x)


def _loss_and_grads(model: Discriminator, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    logits = model(x)
    loss = F.binary_cross_entropy_with_logits(
        logits, (torch.arange(logits.numel()) % 3 == 0).view_as(logits).double()
    )
    return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("train", [False, True])
def test_discriminator_equals_torch_modules_without_dropout(train):
    """Eval mode (and train mode with dropout 0): loss and every gradient equal the nn.MultiheadAttention path."""
    torch.manual_seed(0)
    model = Discriminator(
        20, 16, num_heads=4, mlp_dim=24, num_blocks=2, dropout=0.0 if train else 0.1
    ).double()
    model.train(train)
    x = torch.randn(3, 20, 16, dtype=torch.float64)
    with kernels.reference_kernels(False):
        loss, grads = _loss_and_grads(model, x)
    with kernels.reference_kernels():
        ref_loss, ref_grads = _loss_and_grads(model, x)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_discriminator_train_mode_is_seeded_and_switchable():
    model = Discriminator(16, 8, mlp_dim=32).train()
    x = torch.randn(4, 16, 8)
    with kernels.reference_kernels(False):
        assert not kernels.use_reference()
        torch.manual_seed(3)
        first = model(x)
        torch.manual_seed(3)
        assert torch.equal(first, model(x))
        with kernels.reference_kernels():
            assert kernels.use_reference()
            torch.manual_seed(3)
            assert not torch.equal(first, model(x))  # torch's own masks: another draw
        assert not kernels.use_reference()


def test_kernels_are_on_by_default_at_any_thread_count_and_the_switch_turns_them_off(monkeypatch):
    probe = "import torch; from generalad.method import kernels; print(kernels.use_reference())"
    monkeypatch.setattr(kernels, "_mode", ["cpu"])  # the default, as read from an unset switch
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert not kernels.use_reference()
    finally:
        torch.set_num_threads(threads)
    for value, expected in (("", "False"), ("reference", "True"), ("Reference ", "True"), ("cpu", "False")):
        env = {k: v for k, v in os.environ.items() if k != kernels.KERNELS_ENV} | {kernels.KERNELS_ENV: value}
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == expected, (value, done.stdout, done.stderr)


def test_bf16_autocast_trains_through_the_kernels_close_to_fp32():
    torch.manual_seed(0)
    model = Discriminator(32, 16, mlp_dim=32, dropout=0.0).train()
    x = torch.randn(3, 32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16), kernels.reference_kernels(False):
        low = model(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), model(x), rtol=0.05, atol=0.05)
    layer = kernels.Dropout(0.5).train()
    q = torch.randn(2, 4, 40, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), kernels.reference_kernels(False):
        out = kernels.dropout_attention(q.bfloat16(), q.bfloat16(), q.bfloat16(), 0.2)
        (out.float().sum() + layer(q).float().sum()).backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("size", "elements"),
    [
        ("1024K", 1 << 18),
        ("2048K", 1 << 19),
        ("1280K", 1 << 18),
        ("64K", 1 << 16),
        ("32M", 1 << 20),
        ("?", None),
    ],
)
def test_attention_blocks_fill_one_cores_l2(tmp_path, monkeypatch, size, elements):
    (tmp_path / "size").write_text(size + "\n")
    monkeypatch.setattr(kernels, "_L2_SIZE", str(tmp_path / "size"))
    kernels._l2_elements.cache_clear()
    try:
        assert kernels._l2_elements() == (elements or kernels.BLOCK_ELEMENTS)
    finally:
        kernels._l2_elements.cache_clear()
