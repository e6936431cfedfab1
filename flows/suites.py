"""Experiment suites as data: which (dataset, backbone, preset overrides, classes, seeds, shots) to run.

A suite is a named tuple of `SuiteEntry`s (a user's, from TOML: `flows.suite_file.load_suite_file`); the paper's tables are named suites (`table1` ... `table5`, `fig4`),
plus `quickstart` (the synthetic offline dataset, minutes on 2 CPU cores) and `smoke` (the tiniest run). The
`reproduce-all` flow expands an entry into one training task per (class, seed, shots). Dataset roots come from
`generalad.toml` and `GENERALAD_DATA_<NAME>` environment variables (`dataset_roots`); `missing_datasets` says
which roots a suite still needs and how to get each dataset.

Every entry's `label` names what it varies (`views=...`, `sigma=0.5`, `backbone=DINO-B/8`); the rows of its runs
carry it as `variant` (and the suite's name as `suite`), so a suite that varies a setting on the same class gives
one table row per variant. `dataset_options` reach the dataset adapter (e.g. VisA's `split="listing_80_20"`),
enter the store key and the rows' protocol column.

This module is plain data and stdlib (and the paper's numbers, also plain data): no Prefect, no torch.

Example:
    >>> suite = get_suite("table2")
    >>> [e.dataset for e in suite.entries][:2]
    ['mvtec_ad', 'mvtec_ad']
    >>> missing_datasets(suite, dataset_roots())  # doctest: +SKIP
    {'visa': 'visa: no root set (...); how to get it: ...'}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from flows.dataset_roots import CONFIG_ENV, DATA_ENV_PREFIX, DEFAULT_CONFIG, HOW_TO_GET, dataset_roots
from generalad.apps import paper
from generalad.defaults import IMAGE_SIZE, METHODS
from generalad.errors import ConfigError

__all__ = [
    "SuiteEntry",
    "Suite",
    "SUITES",
    "PAPER_DATASETS",
    "PAPER_BACKBONES",
    "REG4_BACKBONES",
    "HOW_TO_GET",
    "CONFIG_ENV",
    "DATA_ENV_PREFIX",
    "DEFAULT_CONFIG",
    "FIG4_SIGMAS",
    "FIG4_TOP_KS",
    "FIG4_BACKBONE_NOTE",
    "get_suite",
    "list_suites",
    "dataset_roots",
    "missing_datasets",
]

_PATCH_RE = re.compile(r"patch(\d+)")

# the ten datasets of the paper's Table 1, in its column order (dataset registry names)
PAPER_DATASETS: tuple[str, ...] = (
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
)
PAPER_BACKBONES: tuple[str, ...] = (
    "vit_small_patch14_dinov2",
    "vit_base_patch14_dinov2",
    "vit_large_patch14_dinov2",
)
REG4_BACKBONES: tuple[str, ...] = (
    "vit_small_patch14_reg4_dinov2",
    "vit_base_patch14_reg4_dinov2",
    "vit_large_patch14_reg4_dinov2",
)
_VIT_B = PAPER_BACKBONES[1]
_VIT_L = PAPER_BACKBONES[2]
_BOTH_METHODS: tuple[str, ...] = METHODS  # table1 / table3: GeneralAD beside the kNN baseline
# one dataset per anomaly type (semantic, near-distribution, industrial, logical): the paper's ablation set
_REPRESENTATIVE: tuple[str, ...] = ("cifar10", "aircraft", "mvtec_ad", "mvtec_loco")


@dataclass(frozen=True)
class SuiteEntry:
    """One block of experiments: a dataset and backbone, its classes, seeds, shot counts and preset overrides.

    Args:
        dataset: dataset registry name (`generalad.data.list_datasets()`).
        categories: the normal classes / categories to run; None = every normal class of the dataset.
        backbone: timm ViT name with a class token (DINOv2 without a tag; others with their pretrained tag).
        image_size: input side in pixels, a multiple of the backbone's patch size (518 = the paper's 37 x 37
            patches of 14; 224 for the patch-16 and patch-8 backbones of Table 4).
        views: distortion views overriding the dataset preset; None = the preset's.
        sigma: noise standard deviation overriding the preset; None = the preset's (0.25).
        top_k: patches averaged into the image score; None = the preset's (10 industrial, N otherwise).
        epochs: training epochs; None = the preset's.
        seeds: one run per seed.
        shots: few-shot training sizes; None in the tuple = the full training set.
        layers: backbone blocks whose tokens are kept (negative counts from the end).
        weights: backbone weights ("hub", "random" or a file path); None = the caller's default (`--weights`).
        pixel_metrics: also compute pixel AUROC / AUPRO (datasets with masks).
        select_on_pixel: also report `best_on_test_pixel`, the epoch with the best pixel AUROC (Table 2).
        dataset_options: adapter options, e.g. {"split": "listing_80_20"} for VisA (part of the store key).
        label: what this entry varies, for reports (the rows' `variant`, e.g. "sigma=0.5"); "" for plain entries.
        methods: the methods run on each store of the entry: "generalad" and/or "patchcore_knn" (the kNN baseline
            on the same features; it ignores views, sigma, top_k, epochs and select_on_pixel).
        coreset_ratio: the kNN bank's coreset ratio (None = 0.1, the PatchCore paper's main setting).
    """

    dataset: str
    categories: tuple[str, ...] | None = None
    backbone: str = PAPER_BACKBONES[0]
    image_size: int = IMAGE_SIZE
    views: tuple[str, ...] | None = None
    sigma: float | None = None
    top_k: int | None = None
    epochs: int | None = None
    seeds: tuple[int, ...] = (0,)
    shots: tuple[int | None, ...] = (None,)
    layers: tuple[int, ...] = (-1,)
    weights: str | None = None
    pixel_metrics: bool = False
    select_on_pixel: bool = False
    dataset_options: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()
    label: str = ""
    methods: tuple[str, ...] = ("generalad",)
    coreset_ratio: float | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", self.dataset):
            raise ConfigError(f"suite entry: dataset must be a registry name, got {self.dataset!r}")
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(self.categories))
            if not self.categories or not all(isinstance(c, str) and c for c in self.categories):
                raise ConfigError(f"suite entry {self.dataset}: categories must be None or non-empty names")
        found = _PATCH_RE.search(self.backbone.split(".", 1)[0])
        patch = int(found.group(1)) if found else 1  # other names: the backbone spec checks at extraction
        if self.image_size < patch or self.image_size % patch:
            raise ConfigError(
                f"suite entry {self.dataset}: image_size must be a multiple of the patch size {patch} of "
                f"{self.backbone}, got {self.image_size}"
            )
        options = self.dataset_options
        items = options.items() if isinstance(options, Mapping) else options
        object.__setattr__(self, "dataset_options", tuple(sorted((str(k), v) for k, v in items)))
        for name in ("seeds", "shots", "layers", "methods"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if (
            not self.methods
            or any(m not in METHODS for m in self.methods)
            or len(set(self.methods)) < len(self.methods)
        ):
            raise ConfigError(
                f"suite entry {self.dataset}: methods must be distinct names of {METHODS}, got {self.methods}"
            )
        if self.coreset_ratio is not None and (
            isinstance(self.coreset_ratio, bool)
            or not isinstance(self.coreset_ratio, int | float)
            or not 0 < self.coreset_ratio <= 1
        ):
            raise ConfigError(
                f"suite entry {self.dataset}: coreset_ratio must be in (0, 1], got {self.coreset_ratio!r}"
            )
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ConfigError(
                f"suite entry {self.dataset}: seeds must be non-negative ints, got {self.seeds}"
            )
        if not self.shots or any(s is not None and (not isinstance(s, int) or s < 1) for s in self.shots):
            raise ConfigError(
                f"suite entry {self.dataset}: shots must be None or ints >= 1, got {self.shots}"
            )
        if not self.layers or any(not isinstance(i, int) for i in self.layers):
            raise ConfigError(f"suite entry {self.dataset}: layers must be block indices, got {self.layers}")
        if self.views is not None:
            object.__setattr__(self, "views", tuple(self.views))
        if self.sigma is not None and not self.sigma > 0:
            raise ConfigError(f"suite entry {self.dataset}: sigma must be > 0, got {self.sigma}")
        for name in ("top_k", "epochs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"suite entry {self.dataset}: {name} must be an int >= 1, got {value}")

    def overrides(self) -> dict[str, Any]:
        """The preset fields this entry sets (for `preset_for(dataset).with_overrides(**entry.overrides())`)."""
        values = {"views": self.views, "sigma": self.sigma, "top_k": self.top_k, "epochs": self.epochs}
        return {k: v for k, v in values.items() if v is not None}

    def options(self) -> dict[str, Any]:
        """The dataset adapter options as a dict."""
        return dict(self.dataset_options)

    def variants(self) -> list[tuple[int, int | None]]:
        """Every (seed, shots) pair of the entry, shots outer, in order."""
        return [(seed, shots) for shots in self.shots for seed in self.seeds]


@dataclass(frozen=True)
class Suite:
    """A named list of entries, and what it reproduces.

    `offline`: the suite needs nothing from the network (quickstart, smoke): with `weights=auto` and no
    pretrained weights at hand it runs on a random backbone instead of failing.
    """

    name: str
    description: str
    entries: tuple[SuiteEntry, ...] = field(default_factory=tuple)
    offline: bool = False

    def datasets(self) -> list[str]:
        """The datasets the suite reads, in first-use order."""
        return list(dict.fromkeys(e.dataset for e in self.entries))


def _entries(datasets: Iterable[str], backbones: Iterable[str], **common: Any) -> tuple[SuiteEntry, ...]:
    return tuple(SuiteEntry(dataset=d, backbone=b, **common) for d in datasets for b in backbones)


_NOISE_ALL = ("clean", "noise_all")
_ABLATION_VIEWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("noise_all", _NOISE_ALL),
    ("+noise_random", (*_NOISE_ALL, "noise_random")),
    ("+attention_shuffle", (*_NOISE_ALL, "noise_random", "attention_shuffle")),
)
FIG4_SIGMAS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
FIG4_TOP_KS: tuple[int, ...] = (1, 10, 100, 1369)
# the paper does not restate Fig. 4's backbone: ViT-B is this project's assumption, said in the suite and each row
FIG4_BACKBONE_NOTE = "backbone assumed ViT-B"

SUITES: Mapping[str, Suite] = MappingProxyType(
    {
        "table1": Suite(
            "table1",
            "Paper Table 1: image AUROC on the 10 datasets with ViT-S/B/L (each dataset's preset), GeneralAD and "
            "the PatchCore-kNN baseline on the same features.",
            _entries(PAPER_DATASETS, PAPER_BACKBONES, methods=_BOTH_METHODS),
        ),
        "table2": Suite(
            "table2",
            "Paper Table 2: pixel AUROC (and AUPRO) on MVTec-AD and VisA with ViT-S/B/L, under `last` and "
            "`best_on_test_pixel` (the epoch with the best pixel AUROC, the paper's selection).",
            _entries(("mvtec_ad", "visa"), PAPER_BACKBONES, pixel_metrics=True, select_on_pixel=True),
        ),
        "table3": Suite(
            "table3",
            "Paper Table 3: few-shot MVTec-AD, 1/2/4/8 normal training images, seeds 0/10/20/30/40, ViT-S/B/L, "
            "GeneralAD and the PatchCore-kNN baseline on the same features.",
            _entries(
                ("mvtec_ad",),
                PAPER_BACKBONES,
                shots=(1, 2, 4, 8),
                seeds=(0, 10, 20, 30, 40),
                methods=_BOTH_METHODS,
            ),
        ),
        "table4": Suite(
            "table4",
            "Paper Table 4: GeneralAD on five ViT-B backbones (supervised ViT-B/16 ImageNet-21k, OpenCLIP "
            "ViT-B/16, DINO ViT-B/8, DINOv2-B-reg4/14, DINOv2-B/14) on CIFAR-10, FGVC-Aircraft, MVTec-AD, "
            "MVTec-LOCO; patch-16/8 models at 224 px (their weights' resolution), DINOv2 at 518.",
            tuple(
                SuiteEntry(
                    dataset=d,
                    backbone=name,
                    image_size=paper.TABLE4_IMAGE_SIZES[label],
                    label=f"backbone={label}",
                )
                for d in _REPRESENTATIVE
                for label, name in paper.TABLE4_BACKBONES.items()
            ),
        ),
        "table5": Suite(
            "table5",
            "Paper Table 5: distortion ablation with ViT-L (each dataset's deployed preset reproduces its Table 1 "
            "ViT-L value): clean+noise_all, +noise_random, +attention_shuffle on CIFAR-10, FGVC-Aircraft, "
            "MVTec-AD, MVTec-LOCO.",
            tuple(
                SuiteEntry(dataset=d, backbone=_VIT_L, views=views, label="views=" + "+".join(views))
                for d in _REPRESENTATIVE
                for _, views in _ABLATION_VIEWS
            ),
        ),
        "fig4": Suite(
            "fig4",
            f"Paper Fig. 4: noise sigma sweep and top-K sweep with ViT-B ({FIG4_BACKBONE_NOTE}) on CIFAR-10, "
            "FGVC-Aircraft, MVTec-AD, MVTec-LOCO.",
            tuple(
                SuiteEntry(dataset=d, backbone=_VIT_B, sigma=s, label=f"sigma={s:g} ({FIG4_BACKBONE_NOTE})")
                for d in _REPRESENTATIVE
                for s in FIG4_SIGMAS
            )
            + tuple(
                SuiteEntry(dataset=d, backbone=_VIT_B, top_k=k, label=f"top_k={k} ({FIG4_BACKBONE_NOTE})")
                for d in _REPRESENTATIVE
                for k in FIG4_TOP_KS
            ),
        ),
        "quickstart": Suite(
            "quickstart",
            "The synthetic offline quickstart dataset (brick, grass, gravel), ViT-S at 224 px, 20 epochs: "
            "minutes on 2 CPU cores.",
            (
                SuiteEntry(
                    dataset="quickstart",
                    categories=("brick", "grass", "gravel"),
                    backbone=PAPER_BACKBONES[0],
                    image_size=224,
                    epochs=20,
                    pixel_metrics=True,
                ),
            ),
            offline=True,
        ),
        "smoke": Suite(
            "smoke",
            "The tiniest end-to-end run: quickstart brick, random-init ViT-S at 56 px, 1 epoch.",
            (
                SuiteEntry(
                    dataset="quickstart",
                    categories=("brick",),
                    backbone=PAPER_BACKBONES[0],
                    image_size=56,
                    epochs=1,
                    weights="random",
                    pixel_metrics=True,
                ),
            ),
            offline=True,
        ),
    }
)


def list_suites() -> list[str]:
    """Names of the defined suites."""
    return list(SUITES)


def get_suite(name: str) -> Suite:
    """The suite called `name`.

    Raises:
        ConfigError: for an unknown name, listing the suites with their descriptions.
    """
    try:
        return SUITES[name]
    except KeyError:
        listing = "; ".join(f"{s.name}: {s.description}" for s in SUITES.values())
        raise ConfigError(f"unknown suite {name!r}. Suites: {listing}") from None


def missing_datasets(suite: Suite | str | Iterable[SuiteEntry], roots: Mapping[str, str]) -> dict[str, str]:
    """The suite's datasets whose root is not set or does not exist, each with a one-line message.

    Args:
        suite: a Suite, a suite name, or entries.
        roots: dataset name -> root folder (`dataset_roots()`).

    Returns:
        dataset name -> "<name>: <what is wrong>; how to get it: <HOW_TO_GET[name]>", in suite order; empty
        when every root exists.
    """
    if isinstance(suite, str):
        suite = get_suite(suite)
    names = suite.datasets() if isinstance(suite, Suite) else list(dict.fromkeys(e.dataset for e in suite))
    out: dict[str, str] = {}
    for name in names:
        root = roots.get(name)
        if root and Path(root).is_dir():
            continue
        if not root:
            problem = (
                f'no root set (add {name} = "/path" under [datasets] in {DEFAULT_CONFIG}, '
                f"or set {DATA_ENV_PREFIX}{name.upper()})"
            )
        else:
            problem = f"root {root} does not exist"
        how = HOW_TO_GET.get(name, "see the dataset adapter's documentation")
        out[name] = f"{name}: {problem}; how to get it: {how}"
    return out
