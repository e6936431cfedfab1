"""Checks and report forms of single report values: safe names, redacted free text, layers, views, numbers.

Shared by the metric and score rows (`storage.metric_row`, `storage.score_rows`) and by the report store, so that
every writer refuses the same values with the same messages.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime

import numpy as np

from storage.report_schema import VIEWS

__all__ = [
    "check_name",
    "redact",
    "format_layers",
    "format_views",
    "check_views",
    "as_utc",
    "opt_int",
    "opt_float",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
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
    check_views("+".join(names))
    return "+".join(names)


def check_views(views: str) -> None:
    """Raise ValueError unless `views` is a '+'-joined list of known view names."""
    names = views.split("+") if views else []
    unknown = [v for v in names if v not in VIEWS]
    if not names or unknown:
        raise ValueError(f"views must be '+'-joined names from {VIEWS}, got {views!r}")


def as_utc(value: datetime) -> datetime:
    """`created_at` in UTC; a naive datetime is refused (its zone is unknown)."""
    if value.tzinfo is None:
        raise ValueError(f"created_at must be timezone-aware (UTC), got naive {value!r}")
    return value.astimezone(UTC)


def opt_int(name: str, value: object, *, minimum: int | None = None) -> int | None:
    """`value` as an int (None stays None); ValueError naming `name` for a non-int, a bool or one below `minimum`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int or None, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def opt_float(name: str, value: object, *, minimum: float | None = None) -> float | None:
    """`value` as a float (None stays None); ValueError naming `name` for a non-number, NaN or one below `minimum`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name} must be a number or None, got {value!r}")
    out = float(value)
    if math.isnan(out) or (minimum is not None and out < minimum):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return out
