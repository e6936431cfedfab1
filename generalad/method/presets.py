"""The one table of per-dataset training and scoring settings (docs/method.md sections 2, 4 and 5).

Keys are the dataset registry names. ``folder`` (a user's own images) and ``quickstart`` use the industrial
settings.

| kind | datasets | views | top_k | epochs | epoch_subset |
|---|---|---|---|---|---|
| semantic | cifar10, cifar100, fmnist, view | clean + noise_all | None (= N) | 20 | 250 |
| near-distribution | aircraft, cars | clean + noise_all | None (= N) | 160 | None |
| industrial | mvtec_ad, visa, mpdd, folder, quickstart | + noise_random | 10 | 160 | None |
| logical | mvtec_loco | + noise_random + attention_shuffle | 10 | 160 | None |

Common to all: sigma 0.25, AdamW lr 5e-4, weight decay 1e-5, cosine to 0.2 * lr, batch 16, and the
discriminator of section 3 (1 block, 4 heads, MLP 2048, dropout 0.1).

Example:
    >>> preset_for("mvtec_ad").with_overrides(epochs=5).epochs
    5
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from generalad.errors import ConfigError
from generalad.method.distortions import DEFAULT_SIGMA, ViewName, check_view_names

__all__ = ["Preset", "PresetKind", "PRESETS", "preset_for"]

PresetKind = Literal["semantic", "near_distribution", "industrial", "logical"]


@dataclass(frozen=True)
class Preset:
    """Every setting of one training + scoring run that does not depend on the data.

    Attributes:
        name: the preset's key (the dataset name it was made for).
        kind: the dataset family the settings come from.
        views: active distortion views (docs/method.md section 2).
        top_k: image score = mean of the top-k patch logits; None means all N patches (a plain mean).
        epochs: training epochs.
        epoch_subset: images drawn without replacement for each epoch (a new draw every epoch); None = the
            whole normal training set, shuffled.
        sigma: standard deviation of the feature noise.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_min_factor: cosine annealing ends at ``lr_min_factor * lr``.
        batch_size: images per step (drop_last); few-shot runs with fewer images use all of them.
        exclude_fixed_points: label 0 the positions a shuffle / copy view leaves with their own feature.
        num_blocks: discriminator attention blocks.
        num_heads: discriminator attention heads.
        mlp_dim: discriminator MLP width.
        dropout: discriminator dropout rate.
    """

    name: str
    kind: PresetKind
    views: tuple[ViewName, ...]
    top_k: int | None
    epochs: int
    epoch_subset: int | None = None
    sigma: float = DEFAULT_SIGMA
    lr: float = 5e-4
    weight_decay: float = 1e-5
    lr_min_factor: float = 0.2
    batch_size: int = 16
    exclude_fixed_points: bool = False
    num_blocks: int = 1
    num_heads: int = 4
    mlp_dim: int = 2048
    dropout: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", check_view_names(self.views))
        positive_ints = {"epochs": self.epochs, "batch_size": self.batch_size, "num_blocks": self.num_blocks}
        positive_ints |= {"num_heads": self.num_heads, "mlp_dim": self.mlp_dim}
        if self.top_k is not None:
            positive_ints["top_k"] = self.top_k
        if self.epoch_subset is not None:
            positive_ints["epoch_subset"] = self.epoch_subset
        for key, value in positive_ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"preset {self.name!r}: {key} must be a positive integer, got {value!r}")
        positive_floats = {"sigma": self.sigma, "lr": self.lr}
        for key, value in positive_floats.items():
            if not value > 0:
                raise ConfigError(f"preset {self.name!r}: {key} must be > 0, got {value!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"preset {self.name!r}: weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.lr_min_factor <= 1:
            raise ConfigError(
                f"preset {self.name!r}: lr_min_factor must be in [0, 1], got {self.lr_min_factor}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"preset {self.name!r}: dropout must be in [0, 1), got {self.dropout}")

    def with_overrides(self, **overrides: Any) -> Preset:
        """A copy with some fields replaced; ConfigError for an unknown field or an invalid value."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown preset field(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (views as a list)."""
        data = dataclasses.asdict(self)
        data["views"] = list(self.views)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preset:
        """Inverse of ``to_dict``; ConfigError for unknown fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown preset field(s) {unknown}")
        return cls(**{**data, "views": tuple(data.get("views", ()))})


_SEMANTIC_VIEWS: tuple[ViewName, ...] = ("clean", "noise_all")
_INDUSTRIAL_VIEWS: tuple[ViewName, ...] = ("clean", "noise_all", "noise_random")
_LOGICAL_VIEWS: tuple[ViewName, ...] = ("clean", "noise_all", "noise_random", "attention_shuffle")


def _semantic(name: str) -> Preset:
    return Preset(name, "semantic", _SEMANTIC_VIEWS, top_k=None, epochs=20, epoch_subset=250)


def _near(name: str) -> Preset:
    return Preset(name, "near_distribution", _SEMANTIC_VIEWS, top_k=None, epochs=160)


def _industrial(name: str) -> Preset:
    return Preset(name, "industrial", _INDUSTRIAL_VIEWS, top_k=10, epochs=160)


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "cifar10": _semantic("cifar10"),
        "cifar100": _semantic("cifar100"),
        "fmnist": _semantic("fmnist"),
        "view": _semantic("view"),
        "aircraft": _near("aircraft"),
        "cars": _near("cars"),
        "mvtec_ad": _industrial("mvtec_ad"),
        "visa": _industrial("visa"),
        "mpdd": _industrial("mpdd"),
        "mvtec_loco": Preset("mvtec_loco", "logical", _LOGICAL_VIEWS, top_k=10, epochs=160),
        "folder": _industrial("folder"),
        "quickstart": _industrial("quickstart"),
    }
)


def preset_for(dataset_name: str) -> Preset:
    """The published settings for a dataset registry name; ConfigError naming the known ones otherwise."""
    try:
        return PRESETS[dataset_name]
    except KeyError:
        raise ConfigError(f"no preset for dataset {dataset_name!r}; known: {', '.join(PRESETS)}") from None
