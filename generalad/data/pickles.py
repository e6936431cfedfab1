"""Loading the CIFAR python batches with an unpickler that can only rebuild numpy arrays.

The official CIFAR files are Python 2 pickles of dicts holding lists, byte strings and numpy arrays. A plain
`pickle.load` would run any callable the file names; `load_restricted_pickle` allows exactly the globals that
rebuilding numpy arrays needs (under their numpy 1 and numpy 2 module names) and refuses everything else.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from generalad.errors import DatasetError

__all__ = ["load_restricted_pickle"]

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # protocol-2 pickles written by Python 3 encode byte strings with _codecs.encode(str, "latin1")
    ("_codecs", "encode"): codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a dataset pickle"
            ) from None


def _plain_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    return obj


def load_restricted_pickle(path: Path) -> dict[str, Any]:
    """Unpickle a dataset file (a dict) allowing only numpy array reconstruction.

    Python 2 byte strings stay `bytes`; dict keys are decoded to `str` (b"data" -> "data").

    Args:
        path: the pickle file.

    Returns:
        The unpickled dict with str keys.

    Raises:
        DatasetError: naming the file, when it is missing, not a pickle, refers to a forbidden global, or does
            not hold a dict.
    """
    try:
        with open(path, "rb") as fh:
            obj = _RestrictedUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise DatasetError(f"pickle file {path} is missing") from None
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"refusing to load {path}: {exc}") from exc
    except Exception as exc:  # a corrupt pickle raises almost anything (EOFError, ValueError, TypeError, ...)
        raise DatasetError(f"cannot unpickle {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return _plain_keys(obj)
