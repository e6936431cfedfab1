"""The schema of the Parquet reports: the columns of the metric and score tables, and the names they may hold.

Metric rows are long format (docs/design.md "Reports"): one row per (run, class, selection, metric), the value exactly
as computed (never rounded), never an aggregate over classes. Every row records the whole resolved training preset
(views, epochs, lr, sigma, top_k, batch size, weight decay, cosine floor, epoch subset, fixed-point labelling and the
discriminator's size) and `config_hash` covers all of it; `suite` and `variant` name the suite and the entry label
(e.g. `sigma=0.5`) that produced it, so tables can give a sweep one row per variant. A failed class task is a row too (`status="failed"`,
`value=None`, `error` says why), so a report always names what is missing.

Reports hold only the columns below: never environment variables, paths of the user's home or secrets; free text
(`error`) is scrubbed of the values of secret-looking environment variables and of URL credentials
(`storage.report_values.redact`). The rows themselves are validated by `storage.metric_row.MetricRow` and
`storage.score_rows`.

Reading: files of schema version 1 (no suite, variant or preset columns beyond views/epochs/lr/top_k/sigma) and 2
(no reused / computed_by_run_id) stay readable; their missing columns read as null.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

# METHODS: the methods a row can report, the paper's and the kNN baseline on the same features
from generalad.defaults import METHODS, VIEW_NAMES
from generalad.defaults import SELECTIONS as _SELECTIONS

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
    "CONFIG_COLUMNS",
]

REPORT_SCHEMA_VERSION = "3"  # 2: suite, variant and the whole preset; 3: reused, computed_by_run_id

Selection = Literal["last", "best_on_test", "best_on_test_pixel"]
Status = Literal["ok", "failed"]

SELECTIONS: tuple[str, ...] = _SELECTIONS
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
# what defines one training run (the normal class included), hashed into `config_hash` when the caller gives none
CONFIG_COLUMNS: tuple[str, ...] = (
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
