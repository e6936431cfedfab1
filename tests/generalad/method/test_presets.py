"""The preset table: every dataset, the published values, overrides."""

from __future__ import annotations

import dataclasses

import pytest

from generalad.errors import ConfigError
from generalad.method.presets import PRESETS, Preset, preset_for

DATASETS = [
    "cifar10",
    "cifar100",
    "fmnist",
    "view",
    "aircraft",
    "cars",
    "mvtec_ad",
    "mvtec_loco",
    "visa",
    "mpdd",
    "folder",
    "quickstart",
]


def test_every_registry_name_has_a_preset():
    assert sorted(PRESETS) == sorted(DATASETS)


@pytest.mark.parametrize("name", DATASETS)
def test_common_settings(name):
    p = preset_for(name)
    assert p.name == name
    assert (p.sigma, p.lr, p.weight_decay, p.lr_min_factor, p.batch_size) == (0.25, 5e-4, 1e-5, 0.2, 16)
    assert (p.num_blocks, p.num_heads, p.mlp_dim, p.dropout) == (1, 4, 2048, 0.1)
    assert p.views[:2] == ("clean", "noise_all")
    assert Preset.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    ("name", "views", "top_k", "epochs", "subset"),
    [
        ("cifar10", ("clean", "noise_all"), None, 20, 250),
        ("cifar100", ("clean", "noise_all"), None, 20, 250),
        ("fmnist", ("clean", "noise_all"), None, 20, 250),
        ("view", ("clean", "noise_all"), None, 20, 250),
        ("aircraft", ("clean", "noise_all"), None, 160, None),
        ("cars", ("clean", "noise_all"), None, 160, None),
        ("mvtec_ad", ("clean", "noise_all", "noise_random"), 10, 160, None),
        ("visa", ("clean", "noise_all", "noise_random"), 10, 160, None),
        ("mpdd", ("clean", "noise_all", "noise_random"), 10, 160, None),
        ("folder", ("clean", "noise_all", "noise_random"), 10, 160, None),
        ("quickstart", ("clean", "noise_all", "noise_random"), 10, 160, None),
        ("mvtec_loco", ("clean", "noise_all", "noise_random", "attention_shuffle"), 10, 160, None),
    ],
)
def test_published_values(name, views, top_k, epochs, subset):
    p = preset_for(name)
    assert (p.views, p.top_k, p.epochs, p.epoch_subset) == (views, top_k, epochs, subset)


def test_overrides_and_errors():
    p = preset_for("mvtec_ad")
    q = p.with_overrides(epochs=3, views=["clean", "noise_all"])
    assert q.epochs == 3 and q.views == ("clean", "noise_all") and p.epochs == 160
    with pytest.raises(ConfigError, match="unknown preset field"):
        p.with_overrides(epoch=3)
    with pytest.raises(ConfigError, match="epochs"):
        p.with_overrides(epochs=0)
    with pytest.raises(ConfigError, match="unknown view"):
        p.with_overrides(views=("clean", "blur"))
    with pytest.raises(ConfigError, match="no preset"):
        preset_for("imagenet")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.epochs = 1  # type: ignore[misc]
