"""The `extract-features` flow: one dataset (or category) through the frozen backbone into a feature store."""

from __future__ import annotations

from collections.abc import Iterable

from prefect import flow, get_run_logger, task

from flows.retry import transient_io_only
from flows.suites import Suite, SuiteEntry
from generalad.backbone import BackboneSpec, resolve_weights
from generalad.data import get_dataset
from generalad.defaults import DEFAULT_BACKBONE, IMAGE_SIZE, default_store_root
from generalad.errors import WeightsError
from storage.extraction import extract_features

__all__ = ["extract_store", "extract_features_flow", "suite_weights"]


def suite_weights(suite: Suite, entries: Iterable[SuiteEntry], weights: str) -> dict[SuiteEntry, str]:
    """The backbone weights of each entry, resolved before any work.

    `auto` (the entry's own weights, else `weights`) becomes `hub` when the pretrained weights are cached or
    reachable. Only an offline suite (quickstart, smoke) falls back to a random backbone; a paper suite whose
    pretrained weights cannot be found raises at once, naming how to provide them, so that a scheduled run never
    reports numbers of a random backbone unless `weights=random` was asked for.

    Raises:
        WeightsError: naming every backbone whose pretrained weights are missing.
    """
    out: dict[SuiteEntry, str] = {}
    found: dict[str, str] = {}  # backbone -> what `auto` resolved to (one hub probe per backbone)
    for entry in entries:
        asked = entry.weights or weights
        if asked != "auto":
            out[entry] = asked
            continue
        if entry.backbone not in found:
            found[entry.backbone] = resolve_weights("auto", entry.backbone)
        out[entry] = found[entry.backbone]
    missing = sorted(b for b, w in found.items() if w != "hub")
    if missing and not suite.offline:
        raise WeightsError(
            f"suite {suite.name!r} needs the pretrained weights of {', '.join(missing)}: they are neither in the "
            "local Hugging Face cache nor reachable, and a paper suite never falls back to a random backbone. "
            "Provide them with weights=FILE (a .safetensors or .pth of the timm model; `generalad reproduce "
            "--weights FILE`, or `--param weights=FILE` for the deployment), or ask for a random backbone "
            "explicitly with weights=random."
        )
    return out


@task(name="extract-store", retries=2, retry_delay_seconds=5, retry_condition_fn=transient_io_only)
def extract_store(
    dataset: str,
    root: str,
    category: str | None,
    *,
    backbone: str,
    weights: str,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    layers: tuple[int, ...] = (-1,),
    dtype: str = "float16",
    store: str,
    dataset_options: dict | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> dict:
    """Extract (or find complete) the store of one dataset/category; returns its URL and the work it took.
    `device` (auto, cpu, cuda, cuda:N) and `precision` (fp32, tf32, bf16, fp16 on CUDA) of the backbone.

    `dataset_options` go to the adapter (e.g. {"split": "listing_80_20"} for VisA) and into the store key."""
    spec = BackboneSpec(
        name=backbone, weights=weights, seed=seed, image_size=image_size, layers=tuple(layers)
    )
    adapter = get_dataset(dataset, root, category=category, **(dataset_options or {}))
    result = extract_features(adapter, spec, store, dtype=dtype, device=device, precision=precision)
    logger = get_run_logger()
    if result.reused:
        logger.info("store complete, no extraction: %s", result.url)
    else:
        logger.info(
            "extracted %d images in %.1f s on %s (%s) into %s",
            result.images_extracted,
            result.seconds,
            result.device,
            result.precision,
            result.url,
        )
    return {
        "url": result.url,
        "images_extracted": result.images_extracted,
        "seconds": result.seconds,
        "reused": result.reused,
        "device": result.device,
    }


@flow(name="extract-features")
def extract_features_flow(
    dataset: str,
    root: str,
    category: str | None = None,
    backbone: str = DEFAULT_BACKBONE,
    weights: str = "auto",
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    layers: list[int] = [-1],  # noqa: B006 - Prefect parameters need a JSON default
    dtype: str = "float16",
    store: str | None = None,
    dataset_options: dict | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> str:
    """Extract one dataset (or one category of it) into `store`; returns the store URL.

    `dataset_options`: adapter options, e.g. {"split": "listing_80_20"} for VisA (part of the store key).

    `weights`: "auto" (pretrained when the hub weights are cached or reachable, else an explicit random init),
    "hub", "random", or a weights file. `store`: default `$GENERALAD_STORE`, else `./stores`.
    `device`: auto (CUDA when visible), cpu, cuda, cuda:N. `precision`: fp32, tf32, bf16, fp16 (CUDA); part of
    the store key unless fp32.
    """
    return extract_store(
        dataset,
        root,
        category,
        backbone=backbone,
        weights=resolve_weights(weights, backbone),
        seed=seed,
        image_size=image_size,
        layers=tuple(layers),
        dtype=dtype,
        store=store or default_store_root(),
        dataset_options=dataset_options,
        device=device,
        precision=precision,
    )["url"]


if __name__ == "__main__":
    import sys

    print(extract_features_flow(*sys.argv[1:3]))
