"""The schema of the Parquet reports: one row per metric value, and one row per image score.

Metric rows are long format (docs/design.md "Reports"): one row per (run, class, selection, metric), the value exactly
as computed (never rounded), never an aggregate over classes. Every row records the whole resolved training preset
(views, epochs, lr, sigma, top_k, batch size, weight decay, cosine floor, epoch subset, fixed-point labelling and the
discriminator's size) and `config_hash` covers all of it; `suite` and `variant` name the suite and the entry label
(e.g. `sigma=0.5`) that produced it, so tables can give a sweep one row per variant. A failed class task is a row too (`status="failed"`,
`value=None`, `error` says why), so a report always names what is missing.

Reports hold only the columns below: never environment variables, paths of the user's home or secrets; free text
(`error`) is scrubbed of the values of secret-looking environment variables and of URL credentials.

Example:
    >>> row = MetricRow(run_id="r1", dataset="mvtec_ad", category="bottle", backbone="vit_small_patch14_dinov2",
    ...                 weights="hub:timm/vit_small_patch14_dinov2.lvd142m", image_size=518, layers="-1",
    ...                 preset="mvtec_ad", views="clean+noise_all+noise_random", epochs=160, lr=5e-4, top_k=10,
    ...                 sigma=0.25, batch_size=16, weight_decay=1e-5, lr_min_factor=0.2, epoch_subset=None,
    ...                 exclude_fixed_points=False, disc_blocks=1, disc_heads=4, mlp_dim=2048, dropout=0.1,
    ...                 seed=0, feature_dtype="float16", split_protocol="official", class_name="bottle",
    ...                 metric="image_auroc", value=0.993)
    >>> table = metric_table([row])

Reading: files of schema version 1 (no suite, variant or preset columns beyond views/epochs/lr/top_k/sigma) and 2
(no reused / computed_by_run_id) stay readable; their missing columns read as null.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from generalad.defaults import METHODS, VIEW_NAMES, WeightsSource
from generalad.defaults import SELECTIONS as _SELECTIONS
from generalad.errors import ConfigError

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "METRIC_SCHEMA",
    "SCORE_SCHEMA",
    "PARTITION_COLUMNS",
    "METRICS",
    "METRIC_IMPLS",
    "SELECTIONS",
    "METHODS",
    "STATUSES",
    "VIEWS",
    "Selection",
    "Status",
    "MetricRow",
    "ScoreRow",
    "metric_table",
    "score_table",
    "scores_from_arrays",
    "environment_identity",
    "config_hash",
    "CONFIG_COLUMNS",
    "format_layers",
    "format_views",
    "redact",
    "check_name",
]

REPORT_SCHEMA_VERSION = "3"  # 2: suite, variant and the whole preset; 3: reused, computed_by_run_id

Selection = Literal["last", "best_on_test", "best_on_test_pixel"]
Status = Literal["ok", "failed"]

SELECTIONS: tuple[str, ...] = _SELECTIONS
# the methods a row can report (generalad.defaults.METHODS): the paper's, and the kNN baseline on the same features
STATUSES: tuple[str, ...] = ("ok", "failed")

# metric name -> the implementation recorded by default (docs/method.md section 5). The reference's non-standard AUPRO
# has its own name so it can never be averaged with the MVTec one.
METRIC_IMPLS: dict[str, str] = {
    "image_auroc": "sklearn.roc_auc_score",
    "image_ap": "sklearn.average_precision_score",
    "image_f1_max": "sklearn.precision_recall_curve.f1_max",
    "pixel_auroc": "sklearn.roc_auc_score",
    "pixel_ap": "sklearn.average_precision_score",
    "aupro": "aupro_mvtec_fpr0.3",
    "aupro_reference": "aupro_reference_200thr_dilate14",
    "train_loss": "bce_with_logits_sum_of_views",
}
METRICS: tuple[str, ...] = tuple(METRIC_IMPLS)

# the distortion views of docs/method.md section 2
VIEWS: tuple[str, ...] = VIEW_NAMES

# partition columns: low cardinality, stored in the directory names (hive layout), not inside the files
PARTITION_COLUMNS: tuple[str, ...] = ("dataset", "backbone")

_TS = pa.timestamp("us", tz="UTC")
_METADATA = {b"generalad.report_schema_version": REPORT_SCHEMA_VERSION.encode()}

METRIC_SCHEMA = pa.schema(
    [
        # identity
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("flow_run_id", pa.string()),
        pa.field("created_at", _TS, nullable=False),
        pa.field("generalad_version", pa.string(), nullable=False),
        pa.field("torch_version", pa.string()),
        pa.field("timm_version", pa.string()),
        pa.field("git_sha", pa.string()),
        # configuration
        pa.field("method", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("backbone", pa.string(), nullable=False),
        pa.field("weights", pa.string(), nullable=False),
        pa.field("pretrained", pa.bool_(), nullable=False),
        pa.field("image_size", pa.int32(), nullable=False),
        pa.field("layers", pa.string(), nullable=False),
        pa.field("preset", pa.string()),  # v2; the preset's name (the dataset it was made for)
        pa.field("views", pa.string(), nullable=False),
        pa.field("epochs", pa.int32(), nullable=False),
        pa.field("lr", pa.float64(), nullable=False),
        pa.field("top_k", pa.int32(), nullable=False),
        pa.field("sigma", pa.float64(), nullable=False),
        # v2: the rest of the resolved preset (null in version-1 files)
        pa.field("batch_size", pa.int32()),
        pa.field("weight_decay", pa.float64()),
        pa.field("lr_min_factor", pa.float64()),
        pa.field("epoch_subset", pa.int32()),
        pa.field("exclude_fixed_points", pa.bool_()),
        pa.field("disc_blocks", pa.int32()),
        pa.field("disc_heads", pa.int32()),
        pa.field("mlp_dim", pa.int32()),
        pa.field("dropout", pa.float64()),
        pa.field("seed", pa.int32(), nullable=False),
        pa.field("shots", pa.int32()),
        pa.field("feature_dtype", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("store_key", pa.string(), nullable=False),
        # protocol
        pa.field("split_protocol", pa.string(), nullable=False),
        pa.field("suite", pa.string()),  # v2: the suite that ran it (None outside suites)
        pa.field("variant", pa.string()),  # v2: the suite entry's label, "" for plain entries
        pa.field("selection", pa.string(), nullable=False),
        pa.field("eval_resolution", pa.int32()),
        pa.field("pixel_postprocess", pa.string()),
        pa.field("metric_impl", pa.string(), nullable=False),
        # measure
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("epoch", pa.int32()),
        pa.field("n_test", pa.int32()),
        pa.field("n_anomalous", pa.int32()),
        # cost
        pa.field("extract_seconds", pa.float64()),
        pa.field("train_seconds", pa.float64()),
        pa.field("eval_seconds", pa.float64()),
        pa.field("device", pa.string()),
        # outcome
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        # provenance of the value: read back from the class-result cache, and the run that computed it
        pa.field("reused", pa.bool_()),  # always written; null only in files older than version 3
        pa.field("computed_by_run_id", pa.string()),
    ],
    metadata=_METADATA,
)

SCORE_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("backbone", pa.string(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("seed", pa.int32(), nullable=False),
        pa.field("shots", pa.int32()),
        pa.field("selection", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        # which method scored the image (METHODS); a table without the column is read as "generalad"
        pa.field("method", pa.string(), nullable=False),
    ],
    metadata=_METADATA,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_LAYERS_RE = re.compile(r"^-?\d+(,-?\d+)*$")
_AGGREGATE_NAMES = frozenset({"mean", "avg", "average", "all", "total", "__mean__", "__all__"})
_MAX_ERROR_CHARS = 4000
_SECRET_ENV_RE = re.compile(
    r"(TOKEN|SECRET|PASS|KEY|CREDENTIAL|AUTH|CONNECTION_STRING|PRIVATE|SESSION|COOKIE|SIGNATURE|SAS_)",
    re.IGNORECASE,
)
# the user-info part of a URL (`scheme://user:password@`, `scheme://token@`)
_URL_CREDENTIALS_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@]+@")
# secret-looking query parameters of signed URLs (`?X-Amz-Signature=...`, `&sig=...`, `?token=...`)
_URL_SECRET_PARAM_RE = re.compile(
    r"([?&][A-Za-z0-9_.\-]*(?:token|sig|signature|secret|key|password|credential)[A-Za-z0-9_.\-]*=)[^&\s#]+",
    re.IGNORECASE,
)


def check_name(kind: str, value: object) -> str:
    """A run id or partition value that is safe as a path segment: `[A-Za-z0-9][A-Za-z0-9_.-]*`, <= 128 chars.

    Raises:
        ValueError: naming `kind` and the value when it is not.
    """
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"{kind} must be a non-empty string of letters, digits, '_', '.', '-' (<= 128 chars, not starting "
            f"with '.', '_' or '-'), got {value!r}"
        )
    return value


def redact(text: str) -> str:
    """`text` with URL credentials, secret-looking URL query parameters and the values of secret-looking
    environment variables replaced by `***`."""
    text = _URL_CREDENTIALS_RE.sub(r"\1***@", text)
    text = _URL_SECRET_PARAM_RE.sub(r"\1***", text)
    for name, value in os.environ.items():
        if len(value) >= 6 and _SECRET_ENV_RE.search(name) and value in text:
            text = text.replace(value, "***")
    return text


def format_layers(layers: Iterable[int]) -> str:
    """Layer indices as the report's string: `(-1,)` -> `"-1"`, `(-4, -1)` -> `"-4,-1"`."""
    out = ",".join(str(int(i)) for i in layers)
    if not out:
        raise ValueError("layers must name at least one block")
    return out


def format_views(views: Iterable[str]) -> str:
    """View names as the report's string: `("clean", "noise_all")` -> `"clean+noise_all"` (validated)."""
    names = list(views)
    _check_views("+".join(names))
    return "+".join(names)


def _check_views(views: str) -> None:
    names = views.split("+") if views else []
    unknown = [v for v in names if v not in VIEWS]
    if not names or unknown:
        raise ValueError(f"views must be '+'-joined names from {VIEWS}, got {views!r}")


def config_hash(config: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of `config` as canonical JSON (sorted keys); equal configs, equal hashes."""
    blob = json.dumps(dict(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def environment_identity() -> dict[str, str | None]:
    """Versions of generalad, torch and timm, and the git commit of this checkout (None when unknown).

    Read from package metadata and `git rev-parse` (no torch import); cached for the life of the process.
    """
    sha: str | None = None
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if proc.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", proc.stdout.strip()):
            sha = proc.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {
        "generalad_version": _version("generalad") or "0+unknown",
        "torch_version": _version("torch"),
        "timm_version": _version("timm"),
        "git_sha": sha,
    }


# what defines one training run (the normal class included), hashed into `config_hash` when the caller gives none
_CONFIG_COLUMNS = (
    "method",
    "dataset",
    "category",
    "class_name",
    "backbone",
    "weights",
    "image_size",
    "layers",
    "preset",
    "views",
    "epochs",
    "lr",
    "top_k",
    "sigma",
    "batch_size",
    "weight_decay",
    "lr_min_factor",
    "epoch_subset",
    "exclude_fixed_points",
    "disc_blocks",
    "disc_heads",
    "mlp_dim",
    "dropout",
    "seed",
    "shots",
    "feature_dtype",
    "split_protocol",
)
CONFIG_COLUMNS = _CONFIG_COLUMNS


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"created_at must be timezone-aware (UTC), got naive {value!r}")
    return value.astimezone(UTC)


def _opt_int(name: str, value: object, *, minimum: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int or None, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _opt_float(name: str, value: object, *, minimum: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name} must be a number or None, got {value!r}")
    out = float(value)
    if math.isnan(out) or (minimum is not None and out < minimum):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricRow:
    """One metric value of one class of one run; see METRIC_SCHEMA for the column types.

    Required, with no paper defaults (a caller states what it ran): run_id, dataset, backbone, weights,
    image_size, layers, the whole resolved preset (preset, views, epochs, lr, top_k, sigma, batch_size,
    weight_decay, lr_min_factor, epoch_subset, exclude_fixed_points, disc_blocks, disc_heads, mlp_dim, dropout),
    seed, feature_dtype, split_protocol, class_name, metric, and value (None only when status is "failed").
    Left as None, `generalad_version`/`torch_version`/`timm_version`/`git_sha` are read from this
    environment, `pretrained` follows `weights` (False for `random:`), `metric_impl` follows `metric`, and
    `config_hash` hashes the configuration columns. `reused` says the value was read back from the class-result
    cache instead of computed by this run; `computed_by_run_id` names the run that computed it (this run's id when
    left as None). Invalid values raise ValueError naming the field.
    """

    # identity
    run_id: str
    flow_run_id: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    generalad_version: str | None = None
    torch_version: str | None = None
    timm_version: str | None = None
    git_sha: str | None = None
    # configuration
    method: str = "generalad"
    dataset: str
    category: str | None = None
    backbone: str
    weights: str
    pretrained: bool | None = None
    image_size: int
    layers: str
    preset: str
    views: str
    epochs: int
    lr: float
    top_k: int
    sigma: float
    batch_size: int
    weight_decay: float
    lr_min_factor: float
    epoch_subset: int | None
    exclude_fixed_points: bool
    disc_blocks: int
    disc_heads: int
    mlp_dim: int
    dropout: float
    seed: int
    shots: int | None = None
    feature_dtype: str
    config_hash: str | None = None
    store_key: str = ""
    # protocol
    split_protocol: str
    suite: str | None = None
    variant: str = ""
    selection: str = "last"
    eval_resolution: int | None = None
    pixel_postprocess: str | None = None
    metric_impl: str | None = None
    # measure
    class_name: str
    metric: str
    value: float | None
    epoch: int | None = None
    n_test: int | None = None
    n_anomalous: int | None = None
    # cost
    extract_seconds: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    device: str | None = None
    # outcome
    status: str = "ok"
    error: str | None = None
    # provenance
    reused: bool = False
    computed_by_run_id: str | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        check_name("run_id", self.run_id)
        check_name("dataset", self.dataset)
        check_name("backbone", self.backbone)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not isinstance(self.created_at, datetime):
            raise ValueError(f"created_at must be a datetime, got {self.created_at!r}")
        put("created_at", _utc(self.created_at))
        env = environment_identity()
        for name in ("generalad_version", "torch_version", "timm_version", "git_sha"):
            if getattr(self, name) is None:
                put(name, env[name])
        try:
            is_random = not WeightsSource.parse(self.weights).pretrained
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.pretrained is None:
            put("pretrained", not is_random)
        elif bool(self.pretrained) == is_random:
            raise ValueError(f"pretrained={self.pretrained!r} contradicts weights={self.weights!r}")
        required_ints = (("image_size", 1), ("epochs", 0), ("top_k", 1), ("seed", 0))
        # the discriminator's training columns: required for GeneralAD, None for the kNN method (nothing trained)
        training_ints = (("batch_size", 1), ("disc_blocks", 1), ("disc_heads", 1), ("mlp_dim", 1))
        trained = self.method == "generalad"
        for name, minimum in required_ints + (training_ints if trained else ()):
            if _opt_int(name, getattr(self, name), minimum=minimum) is None:
                raise ValueError(f"{name} must be an int, got None")
        for name, minimum in () if trained else training_ints:
            _opt_int(name, getattr(self, name), minimum=minimum)
        _opt_int("shots", self.shots, minimum=1)
        _opt_int("epoch_subset", self.epoch_subset, minimum=1)
        for name in ("weight_decay", "lr_min_factor", "dropout"):
            if _opt_float(name, getattr(self, name), minimum=0.0) is None and trained:
                raise ValueError(f"{name} must be a number, got None")
        if not isinstance(self.exclude_fixed_points, bool | np.bool_):
            raise ValueError(f"exclude_fixed_points must be a bool, got {self.exclude_fixed_points!r}")
        put("exclude_fixed_points", bool(self.exclude_fixed_points))
        for name in ("preset", "split_protocol", "feature_dtype"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.suite is not None and (not isinstance(self.suite, str) or not self.suite):
            raise ValueError(f"suite must be None or a non-empty string, got {self.suite!r}")
        if not isinstance(self.variant, str):
            raise ValueError(f"variant must be a string ('' for plain entries), got {self.variant!r}")
        _opt_int("eval_resolution", self.eval_resolution, minimum=1)
        for name in ("epoch", "n_test", "n_anomalous"):
            _opt_int(name, getattr(self, name), minimum=0)
        if (
            _opt_float("lr", self.lr, minimum=0.0) is None
            or _opt_float("sigma", self.sigma, minimum=0.0) is None
        ):
            raise ValueError("lr and sigma must be numbers")
        for name in ("extract_seconds", "train_seconds", "eval_seconds"):
            _opt_float(name, getattr(self, name), minimum=0.0)
        if not isinstance(self.layers, str) or not _LAYERS_RE.match(self.layers):
            raise ValueError(
                f"layers must be comma-separated block indices such as '-1', got {self.layers!r}"
            )
        _check_views(self.views)
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        if self.metric_impl is None:
            put("metric_impl", METRIC_IMPLS[self.metric])
        elif not isinstance(self.metric_impl, str) or not self.metric_impl:
            raise ValueError(f"metric_impl must be a non-empty string, got {self.metric_impl!r}")
        if not isinstance(self.class_name, str) or not self.class_name:
            raise ValueError(f"class_name must be a non-empty string, got {self.class_name!r}")
        if self.class_name.lower() in _AGGREGATE_NAMES:
            raise ValueError(
                f"class_name {self.class_name!r} looks like an aggregate; reports hold per-class rows"
            )
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.status == "ok":
            value = _opt_float("value", self.value)
            if value is None or math.isinf(value):
                raise ValueError(f"an ok row needs a finite value, got {self.value!r}")
            put("value", value)
            if self.error is not None:
                raise ValueError("an ok row has no error")
        else:
            if self.value is not None and not (isinstance(self.value, float) and math.isnan(self.value)):
                raise ValueError("a failed row has value None")
            put("value", None)
            if not isinstance(self.error, str) or not self.error.strip():
                raise ValueError("a failed row needs an error message")
        if self.error is not None:
            put("error", redact(self.error)[:_MAX_ERROR_CHARS])
        if not isinstance(self.reused, bool):
            raise ValueError(f"reused must be a bool, got {self.reused!r}")
        if self.computed_by_run_id is None:
            put("computed_by_run_id", self.run_id)
        check_name("computed_by_run_id", self.computed_by_run_id)
        if self.config_hash is None:
            put("config_hash", config_hash({c: getattr(self, c) for c in _CONFIG_COLUMNS}))

    @classmethod
    def failed(cls, *, error: str | BaseException, metric: str = "image_auroc", **fields_: Any) -> MetricRow:
        """A row recording that a class task failed (value None, status "failed", error its message)."""
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        return cls(status="failed", error=error, metric=metric, value=None, **fields_)

    def as_dict(self) -> dict[str, Any]:
        """The row as {column: value}, in schema order."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoreRow:
    """The score of one test image (for recomputing metrics without retraining); see SCORE_SCHEMA."""

    run_id: str
    dataset: str
    category: str | None = None
    backbone: str
    class_name: str
    seed: int = 0
    shots: int | None = None
    selection: str = "last"
    image_id: str
    score: float
    label: int
    method: str = "generalad"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        check_name("run_id", self.run_id)
        check_name("dataset", self.dataset)
        check_name("backbone", self.backbone)
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {self.label!r}")
        if _opt_float("score", self.score) is None:
            raise ValueError("score must be a number")


def metric_table(rows: Sequence[MetricRow]) -> pa.Table:
    """Validated metric rows as a pyarrow Table of METRIC_SCHEMA."""
    for row in rows:
        if not isinstance(row, MetricRow):
            raise ValueError(f"metric rows must be MetricRow instances, got {type(row).__name__}")
    columns = [f.name for f in fields(MetricRow)]
    assert columns == METRIC_SCHEMA.names, "MetricRow fields and METRIC_SCHEMA are out of step"
    return pa.Table.from_pylist([row.as_dict() for row in rows], schema=METRIC_SCHEMA)


def scores_from_arrays(
    *,
    run_id: str,
    dataset: str,
    backbone: str,
    class_name: str,
    image_ids: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    category: str | None = None,
    seed: int = 0,
    shots: int | None = None,
    selection: str = "last",
    method: str = "generalad",
) -> pa.Table:
    """The scores of one (run, class, selection) as a SCORE_SCHEMA table, built column-wise (fast for 10k images)."""
    n = len(image_ids)
    if len(scores) != n or len(labels) != n:
        raise ValueError(f"image_ids, scores and labels differ in length: {n}, {len(scores)}, {len(labels)}")
    table = pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "dataset": pa.array([dataset] * n, pa.string()),
            "category": pa.array([category] * n, pa.string()),
            "backbone": pa.array([backbone] * n, pa.string()),
            "class_name": pa.array([class_name] * n, pa.string()),
            "seed": pa.array([seed] * n, pa.int32()),
            "shots": pa.array([shots] * n, pa.int32()),
            "selection": pa.array([selection] * n, pa.string()),
            "image_id": pa.array(list(image_ids), pa.string()),
            "score": pa.array(np.asarray(scores, dtype=np.float64)),
            "label": pa.array(np.asarray(labels).astype(np.int8)),
            "method": pa.array([method] * n, pa.string()),
        },
        schema=SCORE_SCHEMA,
    )
    return score_table(table)


def score_table(rows: Sequence[ScoreRow] | pa.Table | pd.DataFrame) -> pa.Table:
    """Score rows (ScoreRow list, DataFrame or Table) as a validated pyarrow Table of SCORE_SCHEMA.

    Raises:
        ValueError: on missing or extra columns, nulls in required columns, unknown selections, labels other
            than 0/1, non-finite scores, or unsafe run/dataset/backbone names.
    """
    if isinstance(rows, pa.Table):
        table = rows
    elif isinstance(rows, pd.DataFrame):
        table = pa.Table.from_pandas(rows, preserve_index=False)
    else:
        for row in rows:
            if not isinstance(row, ScoreRow):
                raise ValueError(f"score rows must be ScoreRow instances, got {type(row).__name__}")
        table = pa.Table.from_pylist([asdict(r) for r in rows], schema=SCORE_SCHEMA)
    if "method" not in table.column_names:  # tables written before the kNN method existed
        table = table.append_column("method", pa.array(["generalad"] * table.num_rows, pa.string()))
    if set(table.column_names) != set(SCORE_SCHEMA.names):
        missing = sorted(set(SCORE_SCHEMA.names) - set(table.column_names))
        extra = sorted(set(table.column_names) - set(SCORE_SCHEMA.names))
        raise ValueError(f"score table columns differ from SCORE_SCHEMA: missing {missing}, extra {extra}")
    for f in SCORE_SCHEMA:
        if not f.nullable and table.column(f.name).null_count:
            raise ValueError(f"score column {f.name!r} has nulls (missing values, or NaN from pandas)")
    try:
        table = table.select(SCORE_SCHEMA.names).cast(SCORE_SCHEMA)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise ValueError(f"score table does not fit SCORE_SCHEMA: {exc}") from None
    for name in ("run_id", "dataset", "backbone"):
        for value in table.column(name).unique().to_pylist():
            check_name(name, value)
    bad_method = set(table.column("method").unique().to_pylist()) - set(METHODS)
    if bad_method:
        raise ValueError(f"method must be one of {METHODS}, got {sorted(bad_method)}")
    bad_sel = set(table.column("selection").unique().to_pylist()) - set(SELECTIONS)
    if bad_sel:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {sorted(bad_sel)}")
    labels = table.column("label").to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("label must be 0 or 1")
    if not np.isfinite(table.column("score").to_numpy()).all():
        raise ValueError("scores must be finite")
    return table.replace_schema_metadata(SCORE_SCHEMA.metadata)
