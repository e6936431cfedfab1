"""Settings every test shares (offline, one torch thread, telemetry off, where the real data lives) and the
tiny in-memory features the method and apps tests train on."""

from __future__ import annotations

import os
from pathlib import Path

# Set before anything imports prefect / huggingface_hub: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from generalad.method.feature_source import InMemoryFeatures  # noqa: E402
from generalad.method.presets import Preset, preset_for  # noqa: E402
from generalad.method.split import OneClassSplit  # noqa: E402

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip the test when this machine does not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


# -- tiny features (no Zarr, no backbone): the method's and the apps' tests --------------------------------

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
