"""fsspec URLs and local paths, handled the same way everywhere in `storage`.

Object stores (`s3://`, `gs://`, ...) are addressed by URL only; where they are and how to sign in come from the
filesystem's own configuration, never from our code or a report: for S3, botocore's environment
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, ...) or fsspec's (`FSSPEC_S3_ENDPOINT_URL`,
`FSSPEC_S3='{"endpoint_url": ...}'`, or a JSON file in `$FSSPEC_CONFIG_DIR`), read by every process that opens
the URL (the flow, each Dask worker).

An object store has no atomic rename, but a PUT is atomic: an object is visible whole or not at all. So
completeness never relies on a rename there: every small file (a shard marker, COMPLETE.json, a manifest, a report
file) is one PUT of bytes encoded in memory, and what says "done" is written last.
"""

from __future__ import annotations

import os
import uuid
import warnings

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem

from storage import faultpoints

__all__ = [
    "normalize",
    "join",
    "filesystem",
    "is_local",
    "zarr_store",
    "write_bytes_atomic",
    "exists",
    "list_names",
]

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
    """Whether `url` exists now: asks the store, not this process's cached listing (s3fs caches listings, and
    another process may have written a marker since)."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    return fs.exists(path)


def list_names(url: str) -> list[str]:
    """The names directly under the folder `url` (fresh, as in `exists`); [] when it does not exist."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]


def zarr_store(url: str, *, read_only: bool = False) -> zarr.abc.store.Store:
    """A zarr store for a local path (LocalStore) or any fsspec URL (FsspecStore)."""
    url = normalize(url)
    if "://" not in url:
        return zarr.storage.LocalStore(url, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(url, read_only=read_only)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write a small file so that readers see either nothing or all of it: on a local disk a temporary name,
    fsync, then an atomic rename; on an object store one PUT (no temporary object, no copy)."""
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
        # one PUT: the object appears whole when the upload completes, or not at all (a writer killed
        # mid-upload leaves nothing)
        fs.pipe_file(path, data)
