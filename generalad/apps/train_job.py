"""One one-class experiment against a feature store: the glue shared by `generalad train/evaluate` and the
Prefect task. The method itself lives in `generalad.method.experiment`; this module only opens the store, picks the
split, the masks and the preset, and checks that a saved model fits the store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generalad.apps.model_io import load_model, model_method, model_top_k
from generalad.defaults import METHODS
from generalad.devices import DEFAULT_PRECISION, resolve_device
from generalad.errors import ConfigError
from generalad.method.evaluation import Evaluation, evaluate
from generalad.method.experiment import RunResult, metric_rows, run_one_class
from generalad.method.knn_experiment import run_patchcore
from generalad.method.patchcore import METHOD as PATCHCORE
from generalad.method.patchcore import PatchCoreSettings
from generalad.method.presets import Preset, preset_for
from storage.feature_store import FeatureStore

__all__ = [
    "resolve_preset",
    "feature_info",
    "METHODS",
    "train_from_store",
    "evaluate_from_store",
    "SavedModelEvaluation",
]


def resolve_preset(
    store: FeatureStore, name: str | None = None, overrides: Mapping[str, Any] | None = None
) -> Preset:
    """The preset named `name` (default: the store's dataset), with `overrides` applied."""
    preset = preset_for(name or store.dataset)
    return preset.with_overrides(**dict(overrides or {})) if overrides else preset


def feature_info(store: FeatureStore) -> dict[str, Any]:
    """What a saved model records about the features it was trained on (checked again at evaluation)."""
    fp = store.fingerprint
    return {
        "store": store.url,
        "store_key": store.key,
        "dataset": store.dataset,
        "category": store.category,
        "backbone": fp["backbone"],
        "weights": fp["weights"],
        "layers": fp["layers"],
        "feature_dtype": fp["dtype"],
        "feature_precision": fp.get("precision", DEFAULT_PRECISION),
        "image_size": store.image_size,
        "num_patches": store.num_patches,
        "embed_dim": store.embed_dim,
    }


def _test_masks(store: FeatureStore, rows):
    return store.masks(rows) if store.has_masks else None


def train_from_store(
    store: FeatureStore,
    normal_class: str,
    *,
    preset: Preset,
    seed: int = 0,
    shots: int | None = None,
    eval_every_epoch: bool = False,
    select_on_pixel: bool = False,
    progress: bool = True,
    device: str = "auto",
    precision: str = DEFAULT_PRECISION,
    method: str = "generalad",
    knn: PatchCoreSettings | None = None,
) -> RunResult:
    """Train and evaluate one model on `store` with `normal_class` as the normal class, on `device` (auto, cpu,
    cuda, cuda:N) in `precision` (fp32, tf32, bf16, fp16; GeneralAD only).

    `method` "generalad" trains a discriminator with `preset`; `select_on_pixel` (stores with masks, with
    `eval_every_epoch`) also reports `best_on_test_pixel`. "patchcore_knn" builds a memory bank with the `knn`
    settings (default: coreset ratio 0.1) and ignores the preset, `eval_every_epoch` and `select_on_pixel`.
    """
    split = store.split(normal_class)
    if method == PATCHCORE:
        return run_patchcore(
            store,
            split,
            knn,
            seed=seed,
            shots=shots,
            masks=_test_masks(store, split.test_rows),
            image_size=store.image_size,
            device=resolve_device(device),
        )
    if method != "generalad":
        raise ConfigError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    return run_one_class(
        store,
        split,
        preset,
        seed=seed,
        shots=shots,
        eval_every_epoch=eval_every_epoch,
        select_on_pixel=select_on_pixel and eval_every_epoch and store.has_masks,
        masks=_test_masks(store, split.test_rows),
        image_size=store.image_size,
        progress=progress,
        device=device,
        precision=precision,
    )


@dataclass(frozen=True)
class SavedModelEvaluation:
    evaluation: Evaluation
    config: dict[str, Any]
    metrics: list[dict[str, Any]]


def evaluate_from_store(
    store: FeatureStore, model_dir: str | Path, *, device: str = "auto", precision: str = DEFAULT_PRECISION
) -> SavedModelEvaluation:
    """Score `store`'s test split for the model's normal class with a saved model.

    Raises StoreError when the store's features do not fit the model (feature size, patch count, backbone).
    """
    from generalad.errors import StoreError

    model, config = load_model(model_dir, device=str(resolve_device(device)))
    trained_on = config.get("features", {})
    mine = feature_info(store)
    for key in ("embed_dim", "num_patches", "backbone", "layers"):
        if key in trained_on and trained_on[key] != mine[key]:
            raise StoreError(
                f"store {store.url} has {key}={mine[key]!r} but the model in {model_dir} was trained on "
                f"{key}={trained_on[key]!r}"
            )
    split = store.split(config["normal_class"])
    evaluation = evaluate(
        model,
        store,
        split,
        top_k=model_top_k(config),
        masks=_test_masks(store, split.test_rows),
        image_size=store.image_size,
        precision=precision,
    )
    default_epochs = 0 if model_method(config) == PATCHCORE else Preset.from_dict(config["preset"]).epochs
    rows = metric_rows(evaluation, selection="last", epoch=int(config.get("epochs", default_epochs)))
    return SavedModelEvaluation(evaluation, config, rows)
