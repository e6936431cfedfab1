"""Scoring a batch of prediction inputs: decode each image, run the backbone and discriminator in batches.

Per image: the image is squashed to S x S (the model's resolution) as at training; the patch logits give the
image score (mean of the top-K logits, K from the model's preset). ``score_inputs`` keeps the logits (for the
anomaly maps of ``generalad.apps.predict``); ``score_images`` gives only the scores, as a table.

Example:
    >>> table = score_images(load_predictor("runs/grid"), ["photos/"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from generalad.apps.predict_inputs import InputImage, collect_images
from generalad.apps.predictor import Predictor
from generalad.data.images import open_image
from generalad.errors import ConfigError, ImageError

__all__ = ["ScoredInputs", "score_inputs", "score_images"]


@dataclass
class ScoredInputs:
    """The patch logits of the readable inputs, their sizes, and the errors of the others."""

    inputs: list[InputImage]
    sizes: list[tuple[int, int] | None]  # (width, height), None when unreadable
    logits: torch.Tensor  # (n_readable, N)
    readable: list[int]  # positions into inputs of the rows of `logits`
    errors: dict[int, str] = field(default_factory=dict)


def score_inputs(
    predictor: Predictor,
    inputs: Sequence[InputImage],
    *,
    batch_size: int,
    skip_unreadable: bool,
    progress: bool,
    desc: str,
) -> ScoredInputs:
    """Decode and score every input in batches; unreadable files raise (or are recorded with skip_unreadable)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    sizes: list[tuple[int, int] | None] = []
    chunks: list[torch.Tensor] = []
    readable: list[int] = []
    errors: dict[int, str] = {}
    bar = tqdm(total=len(inputs), desc=desc, unit="img", disable=not progress, leave=False)
    batch: list[Image.Image] = []

    def flush() -> None:
        if batch:
            chunks.append(predictor.logits(batch))
            bar.update(len(batch))
            batch.clear()

    try:
        for index, item in enumerate(inputs):
            try:
                image = open_image(item.path)
            except ImageError as exc:
                if not skip_unreadable:
                    raise
                errors[index] = str(exc)
                sizes.append(None)
                bar.update(1)
                continue
            sizes.append(image.size)
            readable.append(index)
            batch.append(image)
            if len(batch) == batch_size:
                flush()
        flush()
    finally:
        bar.close()
    logits = torch.cat(chunks) if chunks else torch.empty(0, predictor.num_patches)
    return ScoredInputs(list(inputs), sizes, logits, readable, errors)


def score_images(
    predictor: Predictor,
    paths: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> pd.DataFrame:
    """Image scores of files or folders (no pictures): columns ``image``, ``name``, ``width``, ``height``, ``score``.

    Raises:
        DatasetError / ImageError: as ``collect_images``, or a file cannot be decoded.
    """
    inputs, _ = collect_images(paths)
    scored = score_inputs(
        predictor, inputs, batch_size=batch_size, skip_unreadable=False, progress=progress, desc="score"
    )
    scores = predictor.scores(scored.logits)
    return pd.DataFrame(
        {
            "image": [str(item.path) for item in inputs],
            "name": [item.name for item in inputs],
            "width": [size[0] for size in scored.sizes if size],
            "height": [size[1] for size in scored.sizes if size],
            "score": scores,
        }
    )
