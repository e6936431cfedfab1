"""Exceptions the project raises on bad input.

Every message names the offending file or value, so a user can fix the input without reading code.
"""

from __future__ import annotations

__all__ = [
    "GeneralADError",
    "ConfigError",
    "DatasetError",
    "ImageError",
    "WeightsError",
    "StoreError",
    "TrainingError",
]


class GeneralADError(Exception):
    """Base class of every error raised on bad input or an unusable environment."""


class ConfigError(GeneralADError, ValueError):
    """An option has a value that cannot work (image size, layer index, unknown name, ...)."""


class DatasetError(GeneralADError):
    """A dataset root does not have the expected layout, or a class/category is unknown or empty."""


class ImageError(DatasetError):
    """An image or mask file cannot be decoded, or has the wrong size."""


class WeightsError(GeneralADError):
    """Backbone weights are unreachable, or belong to another architecture."""


class StoreError(GeneralADError):
    """A feature store is missing, incomplete, of another schema version, or does not fit the request."""


class TrainingError(GeneralADError):
    """Training or evaluation cannot give a valid result (NaN loss, no anomalies in the test split, ...)."""
