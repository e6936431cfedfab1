"""Dataset names -> adapter classes, and `get_dataset`, the one way the rest of the project opens a dataset.

Example:
    >>> from generalad.data import get_dataset, list_datasets
    >>> "mvtec_ad" in list_datasets()
    True
    >>> ds = get_dataset("mvtec_ad", "/data/mvtec_ad", category="bottle")  # doctest: +SKIP
    >>> manifest = ds.manifest()  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, TypeVar

from generalad.data.base import DatasetAdapter
from generalad.data.layout import check_name
from generalad.errors import ConfigError, DatasetError

__all__ = ["register", "list_datasets", "get_dataset_class", "get_dataset", "dataset_options"]

_REGISTRY: dict[str, type[DatasetAdapter]] = {}

A = TypeVar("A", bound=type[DatasetAdapter])


def register(cls: A) -> A:
    """Class decorator: make the adapter available under `cls.name`.

    Raises:
        DatasetError: when the name is not a plain name or another class already uses it.
    """
    name = check_name(getattr(cls, "name", None), "dataset name")
    known = _REGISTRY.get(name)
    if known is not None and known is not cls:
        raise DatasetError(
            f"dataset name {name!r} is already registered by {known.__module__}.{known.__qualname__}"
        )
    _REGISTRY[name] = cls
    return cls


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def get_dataset_class(name: str) -> type[DatasetAdapter]:
    """The adapter class registered as `name`.

    Raises:
        DatasetError: for an unsafe or unknown name (listing the known ones).
    """
    check_name(name, "dataset name")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}"
        ) from None


def dataset_options(cls: type[DatasetAdapter]) -> list[str]:
    """The options an adapter class accepts: its constructor's named parameters besides root and category."""
    params = inspect.signature(cls.__init__).parameters.values()
    skip = {"self", "root", "category"}
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.name not in skip and p.kind in kinds]


def get_dataset(name: str, root: str | Path, category: str | None = None, **options: Any) -> DatasetAdapter:
    """Open dataset `name` at `root` (its official layout), optionally one category of it.

    Args:
        name: a registered dataset name (`list_datasets()`).
        root: the dataset's root folder.
        category: the category of industrial datasets (required for them: a store holds one category);
            must be None for datasets without categories.
        **options: adapter-specific options (e.g. `split="listing_80_20"` for VisA).

    Returns:
        The adapter; its layout is checked further by `records()`.

    Raises:
        ConfigError: an option the adapter does not take.
        DatasetError: unknown dataset, missing root (saying what is expected and how to get it), a name or
            category that could escape the root, a missing category (listing them) or an unknown one.
    """
    cls = get_dataset_class(name)
    unknown = sorted(set(options) - set(dataset_options(cls)))
    if unknown:
        accepted = ", ".join(dataset_options(cls)) or "none"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for dataset {name}; accepted: {accepted}")
    root = Path(root).expanduser()
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "does not exist"
        expected = f" Expected: {cls.layout}." if cls.layout else ""
        how = f" How to get it: {cls.how_to_get}" if cls.how_to_get else ""
        raise DatasetError(f"{name} root {root} {state}.{expected}{how}")
    if category is not None:
        check_name(category, "category")
    adapter = cls(root, category, **options)
    if category is None and cls.requires_category:
        available = adapter.categories()
        listed = ", ".join(available) if available else f"none found under {root}"
        raise DatasetError(f"{name} needs a category (one feature store per category); available: {listed}")
    if category is not None:
        available = adapter.categories()
        if not available:
            raise DatasetError(f"{name} has no categories; got category {category!r}")
        if category not in available:
            raise DatasetError(
                f"category {category!r} of {name} not found under {root}; available: {', '.join(available)}"
            )
    return adapter
