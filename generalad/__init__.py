"""GeneralAD: DINOv2 features cached once, per-class anomaly models trained on them.

``from generalad import GeneralAD`` gives the Python API (``generalad.api``); it is imported on first use, so
``import generalad`` stays cheap (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from generalad.api import GeneralAD, Predictions

__all__ = ["GeneralAD", "Predictions"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from generalad import api

        return getattr(api, name)
    raise AttributeError(f"module 'generalad' has no attribute {name!r}")
