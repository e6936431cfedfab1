"""What identifies the run behind a report row: the environment it ran in, and the hash of its configuration."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["config_hash", "environment_identity"]


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
