"""Writing a result folder all at once: build it under a hidden temporary sibling, rename it into place at the end.

A failure (an unreadable image, Ctrl-C, a full disk) removes the temporary folder, so the target is either the
complete new result, the untouched old one, or absent: never half written.

Example:
    >>> with staged_dir("runs/grid", overwrite=False) as tmp:  # doctest: +SKIP
    ...     tmp.mkdir()
    ...     (tmp / "scores.csv").write_text("...")
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from generalad.errors import ConfigError

__all__ = ["staged_dir", "refuse_existing"]


def refuse_existing(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """``out_dir`` as a Path; ConfigError when it exists and ``overwrite`` is False (checked before any work)."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ConfigError(f"output folder {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a folder")
    return out


@contextmanager
def staged_dir(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path of ``out_dir`` (NOT yet created); on success rename it to ``out_dir``.

    The caller creates the yielded folder (directly or through a writer that creates its target, such as
    ``generalad.apps.model_io.write_run_outputs``). An existing ``out_dir`` is replaced only when ``overwrite`` is
    True, and only after the new folder is complete.

    Raises:
        ConfigError: ``out_dir`` exists and ``overwrite`` is False, or the block did not create the folder.
    """
    out = refuse_existing(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = out.parent / f".{out.name}.tmp-{token}"
    try:
        yield tmp
        if not tmp.is_dir():
            raise ConfigError(f"nothing was written for {out}")
        if out.exists():
            trash = out.parent / f".{out.name}.old-{token}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
