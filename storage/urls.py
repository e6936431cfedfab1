"""fsspec URLs and local paths, handled the same way everywhere in `storage`."""

from __future__ import annotations

import os
import uuid
import warnings

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem

from storage import faultpoints

__all__ = ["normalize", "join", "filesystem", "is_local", "zarr_store", "write_bytes_atomic", "exists"]

# zarr 3 warns that consolidated metadata is not yet part of the v3 spec; we use it knowingly.
warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*", category=UserWarning)
# our stores keep the manifest and markers beside the arrays, inside the group folder
warnings.filterwarnings(
    "ignore", message="Object at .* is not recognized as a component", category=UserWarning
)


def normalize(url: str | os.PathLike) -> str:
    """`file://` URLs and relative paths become absolute local paths; other URLs are kept as they are."""
    text = os.fspath(url)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" not in text:
        text = os.path.abspath(os.path.expanduser(text))
    return text.rstrip("/")


def join(url: str, *parts: str) -> str:
    return "/".join([normalize(url), *(p.strip("/") for p in parts)])


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a URL and the path within it."""
    fs, path = fsspec.core.url_to_fs(normalize(url))
    return fs, path


def is_local(url: str) -> bool:
    return isinstance(filesystem(url)[0], LocalFileSystem)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def zarr_store(url: str, *, read_only: bool = False) -> zarr.abc.store.Store:
    """A zarr store for a local path (LocalStore) or any fsspec URL (FsspecStore)."""
    url = normalize(url)
    if "://" not in url:
        return zarr.storage.LocalStore(url, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(url, read_only=read_only)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write a small file so that readers see either nothing or all of it (temp name, then rename/move)."""
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        faultpoints.reach("temp-written", url=url)
        os.replace(tmp, path)
    else:
        # object stores publish a whole object on close; there is no partial visibility to guard against
        fs.pipe_file(path, data)
