"""Dataset adapters: official on-disk layouts -> deterministic manifests, image decoding, one-class protocols.

Every adapter registers itself by name; open one with `get_dataset(name, root, category=None, **options)`.

Example:
    >>> from generalad.data import get_dataset, list_datasets
    >>> list_datasets()  # doctest: +NORMALIZE_WHITESPACE
    ['aircraft', 'cars', 'cifar10', 'cifar100', 'fmnist', 'folder', 'mpdd', 'mvtec_ad', 'mvtec_loco',
     'quickstart', 'view', 'visa']
    >>> ds = get_dataset("cifar10", "/data/cifar10")  # doctest: +SKIP
    >>> split = ds.one_class_split(ds.manifest(), "cat")  # doctest: +SKIP
"""

from __future__ import annotations

# importing the adapter modules registers them
from generalad.data import aircraft, cars, cifar, fmnist, folder, loco, mvtec, synthetic, view, visa  # noqa: F401
from generalad.data.base import (
    LABEL_BY_PROTOCOL,
    MANIFEST_COLUMNS,
    DatasetAdapter,
    DatasetKind,
    OneClassSplit,
    Record,
    manifest_frame,
)
from generalad.data.check import check_dataset, inspect_dataset
from generalad.data.folder import FolderDataset
from generalad.data.registry import get_dataset, get_dataset_class, list_datasets, register
from generalad.data.synthetic import generate_quickstart

__all__ = [
    "LABEL_BY_PROTOCOL",
    "MANIFEST_COLUMNS",
    "DatasetAdapter",
    "DatasetKind",
    "FolderDataset",
    "OneClassSplit",
    "Record",
    "check_dataset",
    "generate_quickstart",
    "get_dataset",
    "get_dataset_class",
    "inspect_dataset",
    "list_datasets",
    "manifest_frame",
    "register",
]
