"""PatchCore-kNN: exact nearest distances and the greedy coreset against brute-force NumPy, the bank module, one
experiment on in-memory features, and a saved bank read back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generalad.apps.model_io import load_model, model_method, model_top_k, save_model
from generalad.errors import ConfigError
from generalad.method.feature_source import InMemoryFeatures
from generalad.method.knn_experiment import run_patchcore
from generalad.method.patchcore import (
    PatchCoreModel,
    PatchCoreSettings,
    fit_memory_bank,
    greedy_coreset,
    nearest_distances,
)
from generalad.method.split import OneClassSplit


def _brute_nearest(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    q, b = queries.astype(np.float64), bank.astype(np.float64)
    return np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)


@pytest.mark.parametrize(("bank_chunk", "query_chunk"), [(8192, 4096), (7, 5), (1, None)])
def test_nearest_distances_match_brute_force(bank_chunk, query_chunk) -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(53, 16)).astype(np.float32) * 3 + 1
    queries = rng.normal(size=(41, 16)).astype(np.float32) * 3 + 1
    queries[:3] = bank[[0, 10, 52]]  # exact members: distance 0
    got = nearest_distances(
        torch.from_numpy(queries), torch.from_numpy(bank), bank_chunk=bank_chunk, query_chunk=query_chunk
    ).numpy()
    expected = _brute_nearest(queries, bank)
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=1e-4)
    assert got[:3].max() < 2e-3


def _naive_kcenter(x: np.ndarray, n: int, first: int) -> list[int]:
    chosen = [first]
    for _ in range(n - 1):
        d = np.sqrt(((x[:, None, :] - x[chosen][None, :, :]) ** 2).sum(-1)).min(axis=1)
        chosen.append(int(np.argmax(d)))
    return chosen


def test_greedy_coreset_is_the_k_center_greedy_selection() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    got = greedy_coreset(torch.from_numpy(x), 12, projection_dim=None, seed=3).tolist()
    first = int(torch.randint(60, (1,), generator=torch.Generator().manual_seed(3)))
    assert got == _naive_kcenter(x.astype(np.float64), 12, first)
    assert len(set(got)) == 12


def test_greedy_coreset_with_projection_covers_the_outliers() -> None:
    x = torch.randn(200, 64, generator=torch.Generator().manual_seed(0))
    x[17] += 40.0  # two far-away points on opposite sides: a k-center selection of 5 takes both
    x[99] -= 40.0
    chosen = greedy_coreset(x, 5, projection_dim=16, seed=0).tolist()
    assert {17, 99} <= set(chosen)
    assert chosen == greedy_coreset(x, 5, projection_dim=16, seed=0).tolist()  # seeded


def test_bank_module_scores_patches_and_bank_size_follows_the_ratio() -> None:
    tokens = torch.randn(10, 9, 12, generator=torch.Generator().manual_seed(0))
    full = fit_memory_bank(tokens, coreset_ratio=1.0)
    assert torch.equal(full.bank, tokens.reshape(-1, 12))
    assert full(tokens).abs().max() < 1e-3  # every training patch is in the bank
    model = fit_memory_bank(tokens, coreset_ratio=0.1, seed=0)
    assert model.bank.shape == (9, 12)  # round(0.1 * 90)
    test = torch.randn(3, 9, 12, generator=torch.Generator().manual_seed(5))
    expected = _brute_nearest(test.reshape(-1, 12).numpy(), model.bank.detach().numpy()).reshape(3, 9)
    np.testing.assert_allclose(model(test).detach().numpy(), expected, atol=2e-3, rtol=1e-4)
    with pytest.raises(ConfigError, match="coreset_ratio"):
        PatchCoreSettings(coreset_ratio=0.0)
    with pytest.raises(ConfigError, match="tokens must be"):
        model(torch.randn(2, 9, 5))


def _features(seed: int = 0):
    """20 normal training images, 6 normal + 6 anomalous test images (one patch moved far off)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(32, 16, 8, generator=g)
    tokens[26:, 5] += 12.0
    split = OneClassSplit("good", np.arange(20), np.arange(20, 32), np.array([0] * 6 + [1] * 6, np.int8))
    return tokens, split


def test_run_patchcore_scores_are_max_of_brute_force_distances_and_detect_the_anomalies() -> None:
    tokens, split = _features()
    masks = np.zeros((12, 28, 28), np.uint8)
    masks[6:, 7:14, 7:14] = 1  # patch 5 of a 4 x 4 grid at 28 px: row 1, column 1
    result = run_patchcore(InMemoryFeatures(tokens), split, PatchCoreSettings(coreset_ratio=0.5), masks=masks)
    bank = result.model.bank.detach().numpy()
    assert bank.shape == (160, 8)
    expected = np.array([_brute_nearest(tokens[r].numpy(), bank).max() for r in range(20, 32)])
    np.testing.assert_allclose(result.scores["score"].to_numpy(), expected, atol=2e-3, rtol=1e-4)
    metrics = {row["metric"]: row["value"] for row in result.metrics}
    assert metrics["image_auroc"] == 1.0 and metrics["pixel_auroc"] > 0.9
    assert result.method == "patchcore_knn" and {row["epoch"] for row in result.metrics} == {0}
    assert [row["selection"] for row in result.metrics] == ["last"] * len(result.metrics)


def test_fewshot_bank_uses_only_the_sampled_images() -> None:
    tokens, split = _features()
    result = run_patchcore(
        InMemoryFeatures(tokens), split, PatchCoreSettings(coreset_ratio=1.0), shots=2, seed=4
    )
    assert len(result.train_rows) == 2
    assert torch.equal(result.model.bank, tokens[result.train_rows].reshape(-1, 8))


def test_saved_bank_loads_back_with_its_method(tmp_path) -> None:
    tokens, _ = _features()
    model = fit_memory_bank(tokens[:20], coreset_ratio=0.25, seed=1)
    save_model(model, tmp_path / "m", {"preset": PatchCoreSettings(0.25).to_dict()})
    loaded, config = load_model(tmp_path / "m")
    assert isinstance(loaded, PatchCoreModel) and model_method(config) == "patchcore_knn"
    assert model_top_k(config) == 1
    assert torch.equal(loaded.bank, model.bank)
    assert torch.equal(loaded(tokens[20:]), model(tokens[20:]))


def test_training_patches_beyond_the_cap_are_a_seeded_sample_read_batch_by_batch() -> None:
    from generalad.method.knn_experiment import training_patches

    tokens = torch.randn(30, 9, 4, generator=torch.Generator().manual_seed(2))
    source = InMemoryFeatures(tokens)
    rows = np.arange(3, 30)
    assert torch.equal(training_patches(source, rows, max_patches=None, seed=0), tokens[3:].reshape(-1, 4))
    got = training_patches(source, rows, max_patches=50, seed=7, batch_size=4)
    chosen = np.sort(np.random.default_rng(7).choice(27 * 9, size=50, replace=False))
    assert torch.equal(got, tokens[3:].reshape(-1, 4)[chosen])  # the same sample as from the full set at once
    settings = PatchCoreSettings(coreset_ratio=0.5, max_patches=50)
    tokens_split = _features()
    result = run_patchcore(InMemoryFeatures(tokens_split[0]), tokens_split[1], settings)
    assert result.model.bank.shape[0] == 25  # half of the 50 sampled patches
