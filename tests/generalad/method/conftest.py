"""Tiny feature fixtures shared by the method tests (no Zarr, no backbone)."""

from __future__ import annotations

import numpy as np
import pytest

from generalad.method.feature_source import InMemoryFeatures
from generalad.method.presets import Preset, preset_for
from generalad.method.split import OneClassSplit

NUM_PATCHES = 16
EMBED_DIM = 8
NUM_HEADS = 2


@pytest.fixture
def tiny_source() -> InMemoryFeatures:
    """48 images of random features (16 patches of width 8) with random CLS attention over 2 heads."""
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(48, NUM_PATCHES, EMBED_DIM)).astype(np.float32)
    attn = rng.random(size=(48, NUM_HEADS, NUM_PATCHES)).astype(np.float32)
    return InMemoryFeatures(tokens, attn)


@pytest.fixture
def tiny_split() -> OneClassSplit:
    """Rows 0..31 train, 32..47 test with the last 6 labelled anomalous."""
    labels = np.zeros(16, dtype=np.int8)
    labels[-6:] = 1
    return OneClassSplit(
        normal_class="0",
        train_rows=np.arange(32, dtype=np.int64),
        test_rows=np.arange(32, 48, dtype=np.int64),
        test_labels=labels,
    )


@pytest.fixture
def tiny_preset() -> Preset:
    """Industrial settings with a small MLP and 2 epochs, for speed."""
    return preset_for("quickstart").with_overrides(mlp_dim=32, epochs=2, top_k=4)
