"""User suites as TOML files (`generalad reproduce --suite-file my_suite.toml`): the schema of the built-in suites.

A file has `name`, `description` and `[[entries]]` tables whose keys are `flows.suites.SuiteEntry` fields; lists
stand for the tuple fields and "full" in `shots` is the full training set. Every error names the offending key
with its entry (`entries[1].sigma`). Plain data and stdlib, like `flows.suites`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from flows.suites import Suite, SuiteEntry
from generalad.errors import ConfigError

__all__ = ["FULL_SHOT", "load_suite_file"]

# SuiteEntry field -> what a TOML suite file may give for it (lists for the tuple fields)
_ENTRY_TYPES: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "dataset": (str,),
        "categories": (list,),
        "backbone": (str,),
        "image_size": (int,),
        "views": (list,),
        "sigma": (int, float),
        "top_k": (int,),
        "epochs": (int,),
        "seeds": (list,),
        "shots": (list,),
        "layers": (list,),
        "weights": (str,),
        "pixel_metrics": (bool,),
        "select_on_pixel": (bool,),
        "dataset_options": (dict,),
        "label": (str,),
        "methods": (list,),
        "coreset_ratio": (int, float),
    }
)
FULL_SHOT = "full"  # in a suite file's `shots` list: the full training set (None in a SuiteEntry)


def _entry_from_table(table: Any, where: str) -> SuiteEntry:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table ([[entries]])")
    values: dict[str, Any] = {}
    for key, value in table.items():
        kinds = _ENTRY_TYPES.get(key)
        if kinds is None:
            raise ConfigError(f"{where}.{key}: unknown key; known: {', '.join(_ENTRY_TYPES)}")
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise ConfigError(
                f"{where}.{key}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}"
            )
        if key == "shots":
            value = [None if v == FULL_SHOT else v for v in value]
        values[key] = tuple(value) if isinstance(value, list) else value
    if "dataset" not in values:
        raise ConfigError(f"{where}: the key dataset is required")
    try:
        return SuiteEntry(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except TypeError as exc:  # e.g. a list of the wrong element type
        raise ConfigError(f"{where}: {exc}") from None


def load_suite_file(path: str | os.PathLike[str]) -> Suite:
    """A suite from a TOML file: `name`, `description`, and `[[entries]]` tables of `SuiteEntry` fields.

    Lists stand for the tuple fields; in `shots`, "full" is the full training set. Example (examples/my_suite.toml):

        name = "my_suite"
        description = "grid with both methods"
        [[entries]]
        dataset = "mvtec_ad"
        categories = ["grid"]
        methods = ["generalad", "patchcore_knn"]

    Raises:
        ConfigError: a missing file, invalid TOML, an unknown or mistyped key (named with its entry, e.g.
            `entries[1].sigma`), or a value SuiteEntry refuses.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"suite file {file} does not exist")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"name", "description", "entries"})
    if unknown:
        raise ConfigError(
            f"{file}: unknown key(s) {unknown}; a suite file has name, description, [[entries]]"
        )
    name = data.get("name", file.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise ConfigError(f"{file}: name must be a simple name (letters, digits, _ . -), got {name!r}")
    entries = data.get("entries")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{file}: needs at least one [[entries]] table")
    description = data.get("description", f"suite file {file.name}")
    if not isinstance(description, str):
        raise ConfigError(f"{file}: description must be a string")
    return Suite(
        name, description, tuple(_entry_from_table(t, f"{file}: entries[{i}]") for i, t in enumerate(entries))
    )
