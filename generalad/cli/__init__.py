"""The `generalad` command: single steps run directly (no Prefect start-up), suites run the Prefect flow.

One module per command group: `features` (datasets, extract), `training` (train, evaluate), `suites`
(reproduce, report), `practitioner` (fit-folder, predict). Nothing else imports this package.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from generalad.cli import features, practitioner, suites, training
from generalad.cli.config_file import expand_config
from generalad.errors import GeneralADError

__all__ = ["main", "build_parser"]

# Offline-friendly defaults before anything imports prefect or huggingface_hub.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

GROUPS = (features, training, suites, practitioner)
COMMANDS = {name: command for group in GROUPS for name, command in group.COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="generalad", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv = expand_config(sys.argv[1:] if argv is None else argv, parser)  # `--config FILE.toml` tables
    except GeneralADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GeneralADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
