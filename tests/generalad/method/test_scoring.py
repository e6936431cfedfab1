"""Patch logits, image scores, the Gaussian kernel and anomaly maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from generalad.errors import ConfigError
from generalad.method.discriminator import Discriminator
from generalad.method.scoring import (
    anomaly_maps,
    blur_params,
    gaussian_blur,
    gaussian_kernel1d,
    image_scores,
    patch_logits,
)


def test_image_scores_top_k_mean_matches_numpy():
    logits = torch.randn(7, 25, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = np.sort(logits.numpy(), axis=1)[:, ::-1]
    for k in (1, 10, 25):
        np.testing.assert_allclose(image_scores(logits, k).numpy(), ref[:, :k].mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(image_scores(logits, None).numpy(), logits.numpy().mean(axis=1), rtol=1e-12)
    with pytest.raises(ConfigError, match="top_k"):
        image_scores(logits, 26)


def test_blur_scaling_and_kernel():
    assert blur_params(518) == (16.0, 18)
    sigma, radius = blur_params(259)
    assert sigma == pytest.approx(8.0) and radius == 9
    kernel = gaussian_kernel1d(16.0, 18, dtype=torch.float64)
    assert kernel.shape == (37,)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(kernel, kernel.flip(0)) and kernel.argmax() == 18


def test_blur_matches_scipy_mirror_mode():
    maps = torch.rand(2, 20, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = gaussian_blur(maps, sigma=2.5, radius=4).numpy()
    for i in range(2):
        ref = ndimage.gaussian_filter(maps[i].numpy(), sigma=2.5, radius=4, mode="mirror")
        np.testing.assert_allclose(ours[i], ref, rtol=1e-10, atol=1e-12)


def test_blur_matches_torchvision_gaussian_blur():
    """torchvision's 2-D blur (reflect padding) is the library reference our separable one must equal."""
    from torchvision.transforms.v2 import functional as tvf

    maps = torch.rand(2, 96, 96, generator=torch.Generator().manual_seed(1))
    sigma, radius = blur_params(96)
    ours = gaussian_blur(maps, sigma=sigma, radius=radius)
    ref = tvf.gaussian_blur(
        maps.unsqueeze(1), kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma]
    ).squeeze(1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_map_of_a_constant_logit_is_constant():
    maps = anomaly_maps(torch.full((2, 16), 1.5), 32)
    assert maps.shape == (2, 32, 32)
    torch.testing.assert_close(maps, torch.full((2, 32, 32), 1.5))
    tiny = anomaly_maps(torch.full((1, 4), -2.0), 3, sigma=1.0, radius=5)  # radius >= size: replicate padding
    torch.testing.assert_close(tiny, torch.full((1, 3, 3), -2.0))


def test_map_peaks_at_the_anomalous_patch():
    logits = torch.zeros(1, 16)
    logits[0, 1 * 4 + 2] = 10.0  # row 1, column 2 of the 4 x 4 grid
    maps = anomaly_maps(logits, 64)
    row, col = divmod(int(maps[0].argmax()), 64)
    assert 16 <= row < 32 and 32 <= col < 48
    assert torch.equal(anomaly_maps(logits, 64, radius=0), anomaly_maps(logits, 64, sigma=1.0, radius=0))
    with pytest.raises(ConfigError, match="square"):
        anomaly_maps(torch.zeros(1, 15), 8)


def test_patch_logits_eval_mode_in_order(tiny_source):
    torch.manual_seed(0)
    model = Discriminator(16, 8, mlp_dim=32).train()
    rows = np.array([40, 2, 17, 5, 33])
    logits = patch_logits(model, tiny_source, rows, batch_size=2)
    assert model.training  # mode restored
    tokens, _ = next(tiny_source.iter_batches([rows]))
    with torch.no_grad():
        expected = model.eval()(tokens)
    torch.testing.assert_close(logits, expected)
    assert patch_logits(model, tiny_source, np.array([], dtype=np.int64)).shape == (0, 16)
