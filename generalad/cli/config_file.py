"""`--config FILE.toml` for `train`, `fit-folder` and `reproduce`: a command's options kept in a file.

The file has one table per command, its keys the command's long options (dashes or underscores:
`test-anomalous` or `test_anomalous`; `class` for `--class`):

    [train]
    store = "stores/mvtec_ad/grid/....zarr"
    class = "grid"
    epochs = 20
    out = "runs/grid"

The table becomes command-line arguments placed before the real ones, so the same parser validates both and a flag
on the command line overrides the file (for list options such as `--test-anomalous` or `--set`, a command-line
use replaces the file's list). `reproduce --config` already names the dataset-roots TOML: the same file keeps its
`[datasets]` table for the roots and may add a `[reproduce]` table of options; a file without `[reproduce]` means
what it always did. A value that the option would refuse, or an unknown key, is an error naming the file, the
table and the key.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from generalad.errors import ConfigError

__all__ = ["CONFIG_COMMANDS", "config_path", "expand_config"]

CONFIG_COMMANDS = ("train", "fit-folder", "reproduce")
_OTHER_TABLES = {"datasets"}  # the dataset roots of `reproduce` (flows.suites.dataset_roots)


def config_path(argv: Sequence[str]) -> str | None:
    """The value of `--config` in `argv` (`--config X` or `--config=X`), else None."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _read(path: str) -> dict[str, Any]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option name (without dashes) -> action; the dest too when it differs (`class` and `normal_class`)."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                out[option[2:]] = action
    return out


def _check_value(where: str, action: argparse.Action, raw: str) -> None:
    """The option's own conversion and choices on one value, so a bad file value names its key."""
    try:
        value = action.type(raw) if callable(action.type) else raw
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: invalid value {raw!r} ({exc})") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {raw!r} is not one of {', '.join(map(str, action.choices))}")


def _as_args(where: str, option: str, action: argparse.Action, value: Any) -> list[str]:
    """One file entry as command-line arguments."""
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return [option] if value else []
    if isinstance(value, bool) or isinstance(value, dict) and not isinstance(action, argparse._AppendAction):
        raise ConfigError(f"{where}: unexpected value {value!r}")
    if isinstance(action, argparse._AppendAction):  # --set FIELD=VALUE, as a table or a list of strings
        items = [f"{k}={json.dumps(v)}" for k, v in value.items()] if isinstance(value, dict) else value
        items = items if isinstance(items, list) else [items]
        return [arg for item in items for arg in (option, str(item))]
    values = value if isinstance(value, list) else [value]
    takes_list = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if len(values) != 1 and not takes_list:
        raise ConfigError(f"{where}: takes one value, got {value!r}")
    for item in values:
        _check_value(where, action, str(item))
    return [option, *map(str, values)]


def expand_config(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """`argv` with the `--config` file's table of its command inserted before the command's own arguments.

    Args:
        argv: the command line after the program name (`[command, ...]`).
        parser: the `generalad` parser (its sub-parser of the command validates the keys).

    Raises:
        ConfigError: a missing or invalid file, an unknown table or key, or a value the option refuses.
    """
    argv = list(argv)
    if not argv or argv[0] not in CONFIG_COMMANDS:
        return argv
    path = config_path(argv[1:])
    if path is None:
        return argv
    command, rest = argv[0], argv[1:]
    data = _read(path)
    unknown = sorted(set(data) - set(CONFIG_COMMANDS) - _OTHER_TABLES)
    if unknown:
        raise ConfigError(
            f"{path}: unknown table(s) {unknown}; tables: {', '.join(CONFIG_COMMANDS)}, datasets"
        )
    table = data.get(command)
    if table is None:
        if command == "reproduce":  # the dataset-roots file, as before
            return argv
        raise ConfigError(f"{path} has no [{command}] table")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{command}] must be a table of option = value")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    actions = _actions(sub)
    on_command_line = {arg.split("=", 1)[0] for arg in rest if arg.startswith("--")}
    extra: list[str] = []
    for key, value in table.items():
        name = key.replace("_", "-")
        where = f"{path} [{command}] {key}"
        action = actions.get(name)
        if action is None or name in ("config", "help"):
            known = sorted(n for n in actions if n not in ("config", "help"))
            raise ConfigError(f"{where}: unknown option; known: {', '.join(known)}")
        option = f"--{name}"
        if (
            isinstance(action, argparse._AppendAction | argparse._ExtendAction)
            and set(action.option_strings) & on_command_line
        ):
            continue  # the command line's list replaces the file's
        extra += _as_args(where, option, action, value)
    return [command, *extra, *rest]
