"""Defaults and identities, spelled once: every layer (method, data, storage, flows, apps, CLI) imports them.

What lives here is what more than one layer must agree on: the paper's input size and default backbone, where
stores and reports go (and the environment variables that move them), the names of views, metrics and
selections, and the identity of a backbone's weights (`WeightsSource`: one parse, one format).
See docs/method.md section 1 for the numbers and docs/design.md "Feature store" for the identities.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal, get_args

from generalad.errors import ConfigError

__all__ = [
    "IMAGE_SIZE",
    "PATCH_SIZE",
    "DEFAULT_BACKBONE",
    "STORE_ENV",
    "REPORTS_ENV",
    "DEFAULT_STORE_ROOT",
    "DEFAULT_REPORTS_ROOT",
    "default_store_root",
    "default_reports_root",
    "VIEW_NAMES",
    "ViewName",
    "SELECTIONS",
    "METHODS",
    "WeightsKind",
    "WeightsSource",
]

# docs/method.md section 1: 518 x 518 input, DINOv2 patch 14 -> 37 x 37 = 1369 patches
IMAGE_SIZE = 518
PATCH_SIZE = 14
DEFAULT_BACKBONE = "vit_small_patch14_dinov2"

# where features and reports go when nothing is given; the environment variables move them for every entry point
STORE_ENV = "GENERALAD_STORE"
REPORTS_ENV = "GENERALAD_REPORTS"
DEFAULT_STORE_ROOT = "stores"
DEFAULT_REPORTS_ROOT = "reports"


def default_store_root() -> str:
    """`$GENERALAD_STORE`, else `./stores`."""
    return os.environ.get(STORE_ENV) or DEFAULT_STORE_ROOT


def default_reports_root() -> str:
    """`$GENERALAD_REPORTS`, else `./reports`."""
    return os.environ.get(REPORTS_ENV) or DEFAULT_REPORTS_ROOT


# docs/method.md section 2: the seven distortion views, in the order the paper lists them
ViewName = Literal[
    "clean",
    "noise_all",
    "noise_random",
    "noise_attention",
    "attention_shuffle",
    "copy_out",
    "random_shuffle",
]
VIEW_NAMES: tuple[ViewName, ...] = get_args(ViewName)

# docs/method.md sections 4 and 7: `last` (honest), `best_on_test` (the reference's oracle selection on image
# AUROC) and `best_on_test_pixel` (the epoch with the best pixel AUROC, the selection behind the paper's Table 2),
# all three from the same training run
SELECTIONS: tuple[str, ...] = ("last", "best_on_test", "best_on_test_pixel")

# the methods that read a feature store: the paper's discriminator, and the PatchCore-style kNN baseline
# (generalad.method.patchcore); the report's `method` column holds one of them
METHODS: tuple[str, ...] = ("generalad", "patchcore_knn")

WeightsKind = Literal["hub", "file", "random"]
_IDENTITY_RE = re.compile(
    r"^(?:hub:(?P<repo>[^\s:][^\s]*)"
    r"|file:sha256:(?P<sha>[0-9a-f]{64})"
    r"|random:(?P<seed>-?\d+)(?::init_values=(?P<init>[^:\s]+))?)$"
)


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from, as recorded in stores, model files and report rows.

    Its string form (`format()`, parsed back by `parse()`) is the weights identity: `hub:<repo>`,
    `file:sha256:<hex>` or `random:<seed>[:init_values=<g>]`. It changes whenever the weights' values change.

    Example:
        >>> WeightsSource.parse("random:3").seed
        3
        >>> WeightsSource(kind="hub", repo="timm/vit_small_patch14_dinov2.lvd142m").format()
        'hub:timm/vit_small_patch14_dinov2.lvd142m'
    """

    kind: WeightsKind
    repo: str | None = None  # hub
    sha256: str | None = None  # file
    seed: int | None = None  # random
    init_values: float | None = None  # random, when LayerScale was initialised explicitly

    def format(self) -> str:
        if self.kind == "hub":
            return f"hub:{self.repo}"
        if self.kind == "file":
            return f"file:sha256:{self.sha256}"
        suffix = "" if self.init_values is None else f":init_values={self.init_values:g}"
        return f"random:{self.seed}{suffix}"

    @property
    def pretrained(self) -> bool:
        return self.kind != "random"

    @classmethod
    def parse(cls, identity: str) -> WeightsSource:
        """The source of a recorded identity; raises ConfigError naming the malformed string."""
        match = _IDENTITY_RE.match(identity) if isinstance(identity, str) else None
        if match is None:
            raise ConfigError(
                f"weights identity {identity!r} is not one of hub:<repo>, file:sha256:<64 hex>, random:<seed>"
            )
        if match["repo"] is not None:
            return cls(kind="hub", repo=match["repo"])
        if match["sha"] is not None:
            return cls(kind="file", sha256=match["sha"])
        init = None if match["init"] is None else float(match["init"])
        return cls(kind="random", seed=int(match["seed"]), init_values=init)
