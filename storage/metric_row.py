"""One report row per metric value: `MetricRow`, the validation of its fields, and the Arrow table of such rows.

The columns and their types are `storage.report_schema.METRIC_SCHEMA`; a row is checked field by field in named
steps (identity, weights, preset, labels, numbers, protocol, class, outcome, provenance), in this order, and the
first bad field raises ValueError naming it.

Example:
    >>> row = MetricRow(run_id="r1", dataset="mvtec_ad", category="bottle", backbone="vit_small_patch14_dinov2",
    ...                 weights="hub:timm/vit_small_patch14_dinov2.lvd142m", image_size=518, layers="-1",
    ...                 preset="mvtec_ad", views="clean+noise_all+noise_random", epochs=160, lr=5e-4, top_k=10,
    ...                 sigma=0.25, batch_size=16, weight_decay=1e-5, lr_min_factor=0.2, epoch_subset=None,
    ...                 exclude_fixed_points=False, disc_blocks=1, disc_heads=4, mlp_dim=2048, dropout=0.1,
    ...                 seed=0, feature_dtype="float16", split_protocol="official", class_name="bottle",
    ...                 metric="image_auroc", value=0.993)
    >>> table = metric_table([row])
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from generalad.defaults import METHODS, WeightsSource
from generalad.errors import ConfigError
from storage.report_schema import CONFIG_COLUMNS, METRIC_IMPLS, METRIC_SCHEMA, METRICS, SELECTIONS, STATUSES
from storage.report_values import as_utc, check_name, check_views, opt_float, opt_int, redact
from storage.run_identity import config_hash, environment_identity

__all__ = ["MetricRow", "metric_table"]

_LAYERS_RE = re.compile(r"^-?\d+(,-?\d+)*$")
_AGGREGATE_NAMES = frozenset({"mean", "avg", "average", "all", "total", "__mean__", "__all__"})
_MAX_ERROR_CHARS = 4000


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
        _check_identity(self)
        _check_weights(self)
        _check_preset(self)
        _check_labels(self)
        _check_numbers(self)
        _check_protocol(self)
        _check_class_name(self)
        _check_outcome(self)
        _check_provenance(self)
        if self.config_hash is None:
            _put(self, "config_hash", config_hash({c: getattr(self, c) for c in CONFIG_COLUMNS}))

    @classmethod
    def failed(cls, *, error: str | BaseException, metric: str = "image_auroc", **fields_: Any) -> MetricRow:
        """A row recording that a class task failed (value None, status "failed", error its message)."""
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        return cls(status="failed", error=error, metric=metric, value=None, **fields_)

    def as_dict(self) -> dict[str, Any]:
        """The row as {column: value}, in schema order."""
        return asdict(self)


def _put(row: MetricRow, name: str, value: object) -> None:
    """Set a field of the frozen row while it is being validated (filled defaults, normalised values)."""
    object.__setattr__(row, name, value)


def _check_identity(row: MetricRow) -> None:
    """Safe run/dataset/backbone names, a known method, `created_at` in UTC, and the environment's versions."""
    check_name("run_id", row.run_id)
    check_name("dataset", row.dataset)
    check_name("backbone", row.backbone)
    if row.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {row.method!r}")
    if not isinstance(row.created_at, datetime):
        raise ValueError(f"created_at must be a datetime, got {row.created_at!r}")
    _put(row, "created_at", as_utc(row.created_at))
    env = environment_identity()
    for name in ("generalad_version", "torch_version", "timm_version", "git_sha"):
        if getattr(row, name) is None:
            _put(row, name, env[name])


def _check_weights(row: MetricRow) -> None:
    """A valid weights source; `pretrained` follows it when left as None and may never contradict it."""
    try:
        is_random = not WeightsSource.parse(row.weights).pretrained
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    if row.pretrained is None:
        _put(row, "pretrained", not is_random)
    elif bool(row.pretrained) == is_random:
        raise ValueError(f"pretrained={row.pretrained!r} contradicts weights={row.weights!r}")


def _check_preset(row: MetricRow) -> None:
    """The resolved training preset: the discriminator's columns are required for GeneralAD only."""
    required_ints = (("image_size", 1), ("epochs", 0), ("top_k", 1), ("seed", 0))
    # the discriminator's training columns: required for GeneralAD, None for the kNN method (nothing trained)
    training_ints = (("batch_size", 1), ("disc_blocks", 1), ("disc_heads", 1), ("mlp_dim", 1))
    trained = row.method == "generalad"
    for name, minimum in required_ints + (training_ints if trained else ()):
        if opt_int(name, getattr(row, name), minimum=minimum) is None:
            raise ValueError(f"{name} must be an int, got None")
    for name, minimum in () if trained else training_ints:
        opt_int(name, getattr(row, name), minimum=minimum)
    opt_int("shots", row.shots, minimum=1)
    opt_int("epoch_subset", row.epoch_subset, minimum=1)
    for name in ("weight_decay", "lr_min_factor", "dropout"):
        if opt_float(name, getattr(row, name), minimum=0.0) is None and trained:
            raise ValueError(f"{name} must be a number, got None")
    if not isinstance(row.exclude_fixed_points, bool | np.bool_):
        raise ValueError(f"exclude_fixed_points must be a bool, got {row.exclude_fixed_points!r}")
    _put(row, "exclude_fixed_points", bool(row.exclude_fixed_points))
    for name in ("preset", "split_protocol", "feature_dtype"):
        if not isinstance(getattr(row, name), str) or not getattr(row, name):
            raise ValueError(f"{name} must be a non-empty string, got {getattr(row, name)!r}")


def _check_labels(row: MetricRow) -> None:
    """The suite and variant labels (not configuration: they are not hashed)."""
    if row.suite is not None and (not isinstance(row.suite, str) or not row.suite):
        raise ValueError(f"suite must be None or a non-empty string, got {row.suite!r}")
    if not isinstance(row.variant, str):
        raise ValueError(f"variant must be a string ('' for plain entries), got {row.variant!r}")


def _check_numbers(row: MetricRow) -> None:
    """The evaluation resolution, the counts, lr and sigma, and the timings."""
    opt_int("eval_resolution", row.eval_resolution, minimum=1)
    for name in ("epoch", "n_test", "n_anomalous"):
        opt_int(name, getattr(row, name), minimum=0)
    if opt_float("lr", row.lr, minimum=0.0) is None or opt_float("sigma", row.sigma, minimum=0.0) is None:
        raise ValueError("lr and sigma must be numbers")
    for name in ("extract_seconds", "train_seconds", "eval_seconds"):
        opt_float(name, getattr(row, name), minimum=0.0)


def _check_protocol(row: MetricRow) -> None:
    """Layers, views, the selection and the metric; `metric_impl` follows the metric when left as None."""
    if not isinstance(row.layers, str) or not _LAYERS_RE.match(row.layers):
        raise ValueError(f"layers must be comma-separated block indices such as '-1', got {row.layers!r}")
    check_views(row.views)
    if row.selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {row.selection!r}")
    if row.metric not in METRICS:
        raise ValueError(f"unknown metric {row.metric!r}; known: {', '.join(METRICS)}")
    if row.metric_impl is None:
        _put(row, "metric_impl", METRIC_IMPLS[row.metric])
    elif not isinstance(row.metric_impl, str) or not row.metric_impl:
        raise ValueError(f"metric_impl must be a non-empty string, got {row.metric_impl!r}")


def _check_class_name(row: MetricRow) -> None:
    """A named class, never an aggregate: reports hold per-class rows."""
    if not isinstance(row.class_name, str) or not row.class_name:
        raise ValueError(f"class_name must be a non-empty string, got {row.class_name!r}")
    if row.class_name.lower() in _AGGREGATE_NAMES:
        raise ValueError(
            f"class_name {row.class_name!r} looks like an aggregate; reports hold per-class rows"
        )


def _check_outcome(row: MetricRow) -> None:
    """An ok row has a finite value and no error; a failed row has no value and an error, stored redacted."""
    if row.status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {row.status!r}")
    if row.status == "ok":
        value = opt_float("value", row.value)
        if value is None or math.isinf(value):
            raise ValueError(f"an ok row needs a finite value, got {row.value!r}")
        _put(row, "value", value)
        if row.error is not None:
            raise ValueError("an ok row has no error")
    else:
        if row.value is not None and not (isinstance(row.value, float) and math.isnan(row.value)):
            raise ValueError("a failed row has value None")
        _put(row, "value", None)
        if not isinstance(row.error, str) or not row.error.strip():
            raise ValueError("a failed row needs an error message")
    if row.error is not None:
        _put(row, "error", redact(row.error)[:_MAX_ERROR_CHARS])


def _check_provenance(row: MetricRow) -> None:
    """`reused` is a bool; `computed_by_run_id` is this run's id when left as None."""
    if not isinstance(row.reused, bool):
        raise ValueError(f"reused must be a bool, got {row.reused!r}")
    if row.computed_by_run_id is None:
        _put(row, "computed_by_run_id", row.run_id)
    check_name("computed_by_run_id", row.computed_by_run_id)


def metric_table(rows: Sequence[MetricRow]) -> pa.Table:
    """Validated metric rows as a pyarrow Table of METRIC_SCHEMA."""
    for row in rows:
        if not isinstance(row, MetricRow):
            raise ValueError(f"metric rows must be MetricRow instances, got {type(row).__name__}")
    columns = [f.name for f in fields(MetricRow)]
    assert columns == METRIC_SCHEMA.names, "MetricRow fields and METRIC_SCHEMA are out of step"
    return pa.Table.from_pylist([row.as_dict() for row in rows], schema=METRIC_SCHEMA)
