"""`generalad fit-folder` and `generalad predict`: your own images, in one command each.

fit-folder: extract (cached in a feature store), train and evaluate on your folders with the industrial preset,
then write the model and a report. predict: score new images with a saved model and write heat-map overlays at
each image's own size plus a CSV of scores. The method lives in `generalad.apps.fit_folder` (with
`fit_outputs`) and `generalad.apps.predict` (with `predictor`, `predict_inputs`, `predict_scoring`); this module
only parses arguments and connects them to the feature store.

Feature store of fit-folder: `--store`, else `$GENERALAD_STORE`, else `<parent of --out>/stores`. The store is
keyed by the images and the backbone settings, so a second fit on the same folders with other training settings
(epochs, seed, another --out) reuses it and runs no backbone at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from generalad.cli.common import add_backbone_options, add_device_option, add_precision_option, image_size_of
from generalad.defaults import METHODS

__all__ = ["add_parsers", "COMMANDS", "default_fit_store"]


def default_fit_store(out: str | os.PathLike[str]) -> str:
    """`$GENERALAD_STORE` when set, else the folder `stores` next to the output folder."""
    env = os.environ.get("GENERALAD_STORE")
    if env:
        return env
    return str(Path(out).expanduser().resolve().parent / "stores")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `fit-folder`, `predict` and `export` on the `generalad` subcommand parser."""
    _add_fit_folder_parser(sub)
    _add_predict_parser(sub)
    _add_export_parser(sub)


def _add_fit_folder_parser(sub: argparse._SubParsersAction) -> None:
    """Register `fit-folder`: its data folders, then the output, training and backbone options."""
    fit = sub.add_parser(
        "fit-folder",
        help="extract, train and evaluate on your own image folders (industrial preset) in one command",
        description="Train a GeneralAD discriminator on your folders of normal images and evaluate it on test "
        "folders when given. Masks are named like their image (`007.png`, `007.<ext>` or `007_mask.<ext>`), "
        "directly in --masks or in --masks/<defect folder name>/.",
        conflict_handler="resolve",  # our --seed (training) replaces the backbone group's --seed
    )
    _add_fit_data_options(fit)
    fit.add_argument("--out", required=True, help="result folder (model, metrics, report/)")
    fit.add_argument(
        "--store",
        default=None,
        help="feature store root (default: $GENERALAD_STORE, else <parent of --out>/stores)",
    )
    fit.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's 160)")
    fit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the industrial preset, e.g. --set sigma=0.5 --set top_k=5 (JSON values)",
    )
    add_backbone_options(fit)
    fit.add_argument("--seed", type=int, default=0, help="training seed")
    fit.add_argument(
        "--backbone-seed", type=int, default=0, help="seed of the random init (--weights random)"
    )
    add_precision_option(fit, "--train-precision", what="training and scoring")
    fit.add_argument(
        "--method",
        choices=METHODS,
        default="generalad",
        help="generalad (train the discriminator) or patchcore_knn (a nearest-neighbour memory bank)",
    )
    fit.add_argument(
        "--coreset-ratio", type=float, default=None, help="patchcore_knn: share of patches kept (default 0.1)"
    )
    fit.add_argument("--grid-size", type=int, default=16, help="test images shown in report/grid.png")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    fit.add_argument("--no-progress", action="store_true")
    fit.add_argument(
        "--config",
        default=None,
        help="TOML file whose [fit-folder] table holds these options (flags override it)",
    )


def _add_fit_data_options(fit: argparse.ArgumentParser) -> None:
    """The `data` group of fit-folder: the image folders (or one MVTec-style root) and the masks."""
    data = fit.add_argument_group("data")
    data.add_argument("--normal", default=None, help="folder of normal training images")
    data.add_argument(
        "--root",
        default=None,
        help="instead of the folders: a root with train/good, test/good, test/<defect>, ground_truth/<defect>",
    )
    data.add_argument("--test-normal", default=None, help="folder of normal test images")
    data.add_argument(
        "--test-anomalous",
        nargs="+",
        action="extend",
        default=None,
        metavar="DIR",
        help="folder(s) of anomalous test images; each folder's name is the defect type",
    )
    data.add_argument("--masks", default=None, help="folder of ground-truth masks (optional, all or nothing)")


def _add_predict_parser(sub: argparse._SubParsersAction) -> None:
    """Register `predict`: inputs and model, the decision threshold, then the overlay and run options."""
    predict = sub.add_parser(
        "predict",
        help="score images with a saved model: overlays at each image's size and a CSV of scores",
        description="Score images (files or folders, searched recursively) with a model folder written by "
        "`generalad fit-folder` or `generalad train`. Decision threshold (optional): --threshold VALUE, or "
        "--normal DIR: the --quantile (default 1.0 = the maximum) of the scores of those normal images, which "
        "must not be training images; an image is flagged (pred=1) when its score is above the threshold. "
        "Without either, the model folder's threshold.json (written by fit-folder) is used. score_normalised: "
        "the score as the fraction of normal reference scores below it (0..1).",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    predict.add_argument(
        "--model",
        required=True,
        help="model folder (model.json + model.safetensors), or a .onnx file written by `generalad export`",
    )
    predict.add_argument(
        "--out", required=True, help="output folder (scores.csv, overlays/, prediction.json)"
    )
    _add_predict_threshold_options(predict)
    predict.add_argument(
        "--weights",
        default=None,
        help="the backbone weights file, when the model was trained on a local file",
    )
    _add_predict_output_options(predict)
    predict.add_argument("--batch-size", type=int, default=8, help="backbone batch size")
    add_device_option(predict)
    add_precision_option(predict, what="backbone and discriminator")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    predict.add_argument("--no-progress", action="store_true")


def _add_predict_threshold_options(predict: argparse.ArgumentParser) -> None:
    """predict's decision threshold: a given value or a quantile of normal images, else the stored one."""
    decision = predict.add_mutually_exclusive_group()
    decision.add_argument(
        "--threshold", type=float, default=None, help="decision threshold on the image score"
    )
    decision.add_argument(
        "--normal", default=None, help="folder of normal (non-training) images for the threshold"
    )
    predict.add_argument(
        "--quantile",
        type=float,
        default=1.0,
        help="threshold = this quantile of the --normal scores (default max)",
    )
    predict.add_argument(
        "--no-stored-threshold",
        action="store_true",
        help="ignore the model folder's threshold.json (by default it decides pred when neither --threshold nor "
        "--normal is given, and its normal scores give score_normalised)",
    )


def _add_predict_output_options(predict: argparse.ArgumentParser) -> None:
    """predict's overlays, maps and unreadable files."""
    predict.add_argument(
        "--map-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="colour scale of the overlays in map units (default: the range over this call's images)",
    )
    predict.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity (0..1)")
    predict.add_argument(
        "--save-maps", action="store_true", help="also write maps/<name>.npy at the image size"
    )
    predict.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="record undecodable files in scores.csv (error column) instead of stopping",
    )


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Register `export`: a model folder as one ONNX graph (backbone + model + score + map)."""
    export = sub.add_parser(
        "export",
        help="export a model folder to ONNX: backbone, model, image score and anomaly map in one graph",
        description="Input 0 `image`: float32 (B, 3, S, S), resized to S x S with PIL LANCZOS and normalised with "
        "the ImageNet mean/std; output 0 `score` (B,), output 1 `map` (B, S, S); metadata image_size, mean, std, "
        "model, threshold (JSON). Needs the `onnx` extra.",
    )
    export.add_argument("--model", required=True, help="model folder of train / fit-folder")
    export.add_argument("--out", required=True, help="the .onnx file to write")
    export.add_argument("--weights", default=None, help="the backbone weights file, for file-weights models")
    export.add_argument("--overwrite", action="store_true")


def _parse_overrides(items: list[str]) -> dict:
    """`FIELD=VALUE` strings as a dict; VALUE is read as JSON (numbers, true/false, null, lists), else a string."""
    import json

    from generalad.errors import ConfigError

    overrides = {}
    for item in items:
        field, sep, raw = item.partition("=")
        if not sep or not field.strip():
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides[field.strip()] = tuple(value) if isinstance(value, list) else value
    return overrides


def _print_metrics(rows: list[dict]) -> None:
    print(f"{'metric':<14}{'value':>9}")
    for row in rows:
        print(f"{row['metric']:<14}{row['value']:>9.4f}")


def _fit_settings(args: argparse.Namespace):
    from generalad.apps.fit_job import FitSettings

    return FitSettings(
        backbone=args.backbone,
        weights=args.weights,
        backbone_seed=args.backbone_seed,
        image_size=image_size_of(args),
        layers=tuple(args.layers),
        dtype=args.dtype,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        train_precision=args.train_precision,
        epochs=args.epochs,
        overrides=_parse_overrides(args.overrides),
        seed=args.seed,
        method=args.method,
        coreset_ratio=args.coreset_ratio,
        progress=not args.no_progress,
    )


def _cmd_fit_folder(args: argparse.Namespace) -> int:
    import time

    from generalad.apps.fit_folder import folder_dataset
    from generalad.apps.fit_job import run_fit_folder
    from generalad.apps.fit_outputs import write_fit_outputs
    from generalad.apps.staging import refuse_existing

    out = refuse_existing(args.out, args.overwrite)
    settings = _fit_settings(args)
    dataset = folder_dataset(
        normal=args.normal,
        root=args.root,
        test_normal=args.test_normal,
        test_anomalous=args.test_anomalous,
        masks=args.masks,
    )
    run = run_fit_folder(dataset, settings, args.store or default_fit_store(out))
    extraction, store, result, notes, timings = run.extraction, run.store, run.result, run.notes, run.timings
    split = store.split("good")
    _print_extraction(extraction, notes)
    info = run.info
    started = time.perf_counter()
    outputs = write_fit_outputs(
        result,
        out,
        dataset=dataset,
        manifest=store.manifest,
        source=store,
        image_size=store.image_size,
        feature_info=info,
        timings=timings,
        notes=notes,
        max_grid=args.grid_size,
        overwrite=args.overwrite,
    )
    report_seconds = time.perf_counter() - started
    print(
        f"trained on {len(split.train_rows)} normal images, {result.epochs} epochs; time: extract "
        f"{timings['extract']:.1f} s, train {timings['train']:.1f} s, evaluate {timings['evaluate']:.1f} s, "
        f"report {report_seconds:.1f} s",
        file=sys.stderr,
    )
    _print_fit_results(result, outputs, notes)
    return 0


def _print_extraction(extraction, notes: list[str]) -> None:
    """fit-folder's first lines (stderr): the feature store reused or extracted, then the dataset's notes."""
    if extraction.reused:
        print(f"features: reused {extraction.url} (no backbone work)", file=sys.stderr)
    else:
        print(
            f"features: extracted {extraction.images_extracted} images in {extraction.seconds:.1f} s -> "
            f"{extraction.url}",
            file=sys.stderr,
        )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _print_fit_results(result, outputs, notes: list[str]) -> None:
    """fit-folder's stdout: the metrics (or why there are none) and where the model, report and grid are."""
    if result.metrics:
        _print_metrics(result.metrics)
    else:
        print("no metrics (" + "; ".join(notes) + ")")
    print(f"model:  {outputs.out_dir}   (generalad predict --model {outputs.out_dir} --out DIR IMAGES...)")
    print(f"report: {outputs.summary}")
    if outputs.grid is not None:
        print(f"grid:   {outputs.grid}")


def _cmd_export(args: argparse.Namespace) -> int:
    from generalad.apps.onnx_export import export_onnx

    path = export_onnx(args.model, args.out, weights=args.weights, overwrite=args.overwrite)
    print(f"exported {args.model} -> {path} ({path.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    print(path)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from generalad.apps.predict import predict_to_folder
    from generalad.apps.predict_inputs import collect_images
    from generalad.apps.predictor import load_predictor
    from generalad.apps.staging import refuse_existing
    from generalad.apps.thresholds import Threshold

    refuse_existing(args.out, args.overwrite)
    inputs, skipped = collect_images(args.images)
    normal = collect_images([args.normal])[0] if args.normal else None
    predictor = load_predictor(args.model, weights=args.weights, device=args.device, precision=args.precision)
    threshold = Threshold(args.threshold, "given") if args.threshold is not None else None
    result = predict_to_folder(
        predictor,
        inputs,
        args.out,
        threshold=threshold,
        normal=normal,
        quantile=args.quantile,
        stored_threshold=not args.no_stored_threshold,
        value_range=tuple(args.map_range) if args.map_range else None,
        alpha=args.alpha,
        batch_size=args.batch_size,
        save_maps=args.save_maps,
        skip_unreadable=args.skip_unreadable,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    _print_predictions(result, skipped)
    print(result.out_dir)
    return 0


def _print_predictions(result, skipped: int) -> None:
    """predict's summary: skipped and unreadable files, the scores (the 10 highest of more than 30), the
    threshold's verdict and the timing."""
    import pandas as pd

    frame = result.scores
    if skipped:
        print(f"skipped {skipped} non-image files in the folders", file=sys.stderr)
    if "error" in frame.columns and (frame["error"] != "").any():
        print(f"{int((frame['error'] != '').sum())} unreadable files (see the error column)", file=sys.stderr)
    shown = frame if len(frame) <= 30 else frame.sort_values("score", ascending=False).head(10)
    if len(frame) > 30:
        print(f"the 10 highest of {len(frame)} scores:")
    has_pred = "pred" in frame.columns
    for row in shown.itertuples(index=False):
        pred = f"  pred {int(row.pred)}" if has_pred and not pd.isna(row.pred) else ""
        print(f"{row.score:>10.4f}{pred}  {row.name}")
    if result.threshold is not None:
        flagged = int((frame["score"] > result.threshold.value).sum())
        print(
            f"threshold {result.threshold.value:.6g} ({result.threshold.rule}): {flagged} of {len(frame)} flagged",
            file=sys.stderr,
        )
    print(
        f"{len(frame)} images in {result.seconds:.1f} s; colour scale {result.map_range[0]:.3g}..{result.map_range[1]:.3g}",
        file=sys.stderr,
    )


COMMANDS = {"fit-folder": _cmd_fit_folder, "predict": _cmd_predict, "export": _cmd_export}
