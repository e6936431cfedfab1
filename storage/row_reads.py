"""Rows of a feature-store array read in few, large requests: contiguous runs of whole shards' bytes.

Why: through Zarr, a batch of rows costs one codec-pipeline pass per row (chunk) and, for unordered rows, an
orthogonal selection; a warm whole-shard slice ran at ~1/8 of reading the shard file. The store's arrays are
uncompressed shards of one-row chunks (`storage.feature_store.StoreWriter`), so a row is a byte range of its
shard file, and consecutive rows written together are adjacent. `ShardRows` reads each shard's index once
(the Zarr v3 sharding index at the end of the file: per chunk an offset and a length), then serves a batch
as one byte range per run of adjacent rows (runs closer than ``gap_bytes`` are merged and the gap read
through, which pays on object stores), fetched with one ``cat_ranges`` call, which fsspec's async
filesystems (s3, gcs, http) issue concurrently. Local files are read with ``readinto`` straight into the
batch buffer. The rows come back in the asked order, exactly the values Zarr returns (tested).

Arrays in any other layout (compressed, other codecs, a missing chunk) get ``None`` from `ShardRows.of` or
`NotRaw` from `read`, and the caller reads through Zarr (`zarr_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ShardingCodecIndexLocation

from storage import urls

__all__ = ["ShardRows", "NotRaw", "read_rows", "zarr_rows", "REMOTE_GAP_BYTES"]

# merge runs of an object store this close (bytes): one more request costs about what 1 MiB takes to arrive
REMOTE_GAP_BYTES = 1 << 20
_INDEX_ENTRY = 16  # uint64 offset + uint64 length per chunk
_CRC = 4
_EMPTY = np.uint64(2**64 - 1)


class NotRaw(Exception):
    """The requested rows are not all plain byte ranges (e.g. a chunk was never written)."""


def zarr_rows(array: zarr.Array, index: np.ndarray) -> np.ndarray:
    """``array[index]`` along axis 0 through Zarr: one slice for consecutive rows, else an orthogonal selection."""
    if index.size == 0:
        return np.empty((0, *array.shape[1:]), dtype=array.dtype)
    if index.size > 1 and np.all(np.diff(index) == 1):
        return array[int(index[0]) : int(index[-1]) + 1]
    order = np.argsort(index, kind="stable")
    data = array.get_orthogonal_selection((index[order],))
    out = np.empty_like(data)
    out[order] = data
    return out


def read_rows(reader: ShardRows | None, array: zarr.Array, index: np.ndarray) -> np.ndarray:
    """``array[index]`` (any order, repeats allowed): by byte ranges where ``reader`` can, else through Zarr."""
    if reader is None:
        return zarr_rows(array, index)
    unique, inverse = np.unique(index, return_inverse=True)
    try:
        data = reader.read(unique)
    except NotRaw:
        return zarr_rows(array, index)
    if len(unique) == len(index) and np.array_equal(unique, index):
        return data  # sorted batches (training, scoring): no reordering copy
    return data[inverse.reshape(-1)]


def _is_raw_sharded(array: zarr.Array) -> bool:
    """Only the layout `StoreWriter` creates: one sharding codec over one-row chunks, raw little-endian bytes."""
    codecs = getattr(array.metadata, "codecs", ())
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    shard = codecs[0]
    inner, index = tuple(shard.codecs), tuple(shard.index_codecs)
    return (
        tuple(shard.chunk_shape) == (1, *array.shape[1:])
        and len(inner) == 1
        and isinstance(inner[0], BytesCodec)
        and (inner[0].endian is None or inner[0].endian.value == "little")
        and len(index) == 2
        and isinstance(index[0], BytesCodec)
        and isinstance(index[1], Crc32cCodec)
        and shard.index_location == ShardingCodecIndexLocation.end
        and np.dtype(array.dtype).byteorder in ("<", "=", "|")
    )


@dataclass
class ShardRows:
    """Reads rows of one raw sharded array by byte ranges (see the module docstring)."""

    url: str  # the array's folder
    array: zarr.Array
    gap_bytes: int
    _indexes: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._fs, self._root = urls.filesystem(self.url)
        self._local = urls.is_local(self.url)

    @classmethod
    def of(cls, url: str, array: zarr.Array, *, gap_bytes: int | None = None) -> ShardRows | None:
        """A reader for ``array`` stored at ``url``, or None when its layout is not raw one-row shards."""
        if not _is_raw_sharded(array):
            return None
        if gap_bytes is None:
            gap_bytes = 0 if urls.is_local(url) else REMOTE_GAP_BYTES
        return cls(urls.normalize(url), array, gap_bytes)

    @property
    def shard_size(self) -> int:
        return int(self.array.shards[0])

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.array.shape[1:], dtype=np.int64)) * np.dtype(self.array.dtype).itemsize

    def _path(self, shard: int) -> str:
        key = self.array.metadata.encode_chunk_key((shard,) + (0,) * (self.array.ndim - 1))
        return f"{self._root.rstrip('/')}/{key}"

    def _load_indexes(self, shards: list[int]) -> None:
        missing = [s for s in shards if s not in self._indexes]
        if not missing:
            return
        size = self.shard_size * _INDEX_ENTRY + _CRC
        paths = [self._path(s) for s in missing]
        try:
            blobs = self._fs.cat_ranges(paths, [-size] * len(paths), [None] * len(paths), on_error="raise")
        except FileNotFoundError as exc:  # a shard never written: zarr serves fill values
            raise NotRaw(str(exc)) from exc
        for shard, blob in zip(missing, blobs, strict=True):
            if len(blob) != size:
                raise NotRaw(f"shard {shard}: index of {len(blob)} bytes, expected {size}")
            self._indexes[shard] = np.frombuffer(blob[:-_CRC], dtype="<u8").reshape(-1, 2)

    def _runs(self, rows: np.ndarray) -> list[tuple[int, int, int, list[tuple[int, int]]]]:
        """(shard, start byte, end byte, [(row position in `rows`, byte offset in the run)]) per request."""
        shards = rows // self.shard_size
        self._load_indexes(sorted(set(shards.tolist())))
        runs: list[tuple[int, int, int, list[tuple[int, int]]]] = []
        for pos, (row, shard) in enumerate(zip(rows.tolist(), shards.tolist(), strict=True)):
            offset, length = self._indexes[shard][row - shard * self.shard_size]
            if offset == _EMPTY or int(length) != self.row_bytes:
                raise NotRaw(f"row {row} is not a raw chunk of {self.row_bytes} bytes")
            offset = int(offset)
            if runs and runs[-1][0] == shard and 0 <= offset - runs[-1][2] <= self.gap_bytes:
                _, start, _, members = runs[-1]
                members.append((pos, offset - start))
                runs[-1] = (shard, start, offset + self.row_bytes, members)
            else:
                runs.append((shard, offset, offset + self.row_bytes, [(pos, 0)]))
        return runs

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The rows (sorted, unique) as one (len(rows), ...) array of the stored dtype."""
        out = np.empty((len(rows), *self.array.shape[1:]), dtype=self.array.dtype)
        if not len(rows):
            return out
        runs = self._runs(rows)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        if self._local and self.gap_bytes == 0:
            for shard, start, end, members in runs:  # adjacent rows of a run are adjacent in `out` too
                first = members[0][0]
                with open(self._path(shard), "rb", buffering=0) as handle:
                    handle.seek(start)
                    view = memoryview(flat[first : first + len(members)]).cast("B")
                    if handle.readinto(view) != end - start:
                        raise NotRaw(f"shard {shard}: short read")
            return out
        blobs = self._fs.cat_ranges(
            [self._path(r[0]) for r in runs], [r[1] for r in runs], [r[2] for r in runs], on_error="raise"
        )
        for (_, start, end, members), blob in zip(runs, blobs, strict=True):
            if len(blob) != end - start:
                raise NotRaw("short read")
            data = np.frombuffer(blob, dtype=np.uint8)
            for pos, at in members:
                flat[pos] = data[at : at + self.row_bytes]
        return out
