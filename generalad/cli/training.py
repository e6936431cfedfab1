"""`generalad train` and `generalad evaluate`: one discriminator from a feature store, and a saved one scored."""

from __future__ import annotations

import argparse
import sys

from generalad.cli.common import add_device_option, add_precision_option, print_metrics, refuse_existing

__all__ = ["add_parsers", "COMMANDS"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `train` and `evaluate`."""
    train = sub.add_parser("train", help="train and evaluate one discriminator from a feature store")
    train.add_argument("--store", required=True, help="feature store URL (printed by `generalad extract`)")
    train.add_argument("--class", dest="normal_class", required=True, help="the normal class")
    train.add_argument("--preset", default=None, help="preset name (default: the store's dataset)")
    train.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--shots", type=int, default=None, help="few-shot: train on K seeded random normal images"
    )
    train.add_argument(
        "--eval-every-epoch",
        action="store_true",
        help="score the test set after every epoch and also report the best epoch (`best_on_test`)",
    )
    add_device_option(train)
    add_precision_option(train, what="training and scoring")
    train.add_argument("--out", required=True, help="output folder (model, metrics.json, scores.parquet)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    train.add_argument("--no-progress", action="store_true")

    evaluate = sub.add_parser("evaluate", help="score a store's test split with a saved model")
    evaluate.add_argument("--store", required=True)
    evaluate.add_argument("--model", required=True, help="a folder written by `generalad train`")
    evaluate.add_argument("--out", required=True, help="output folder (metrics.json, scores.parquet)")
    add_device_option(evaluate)
    add_precision_option(evaluate, what="scoring")
    evaluate.add_argument("--overwrite", action="store_true")


def _cmd_train(args: argparse.Namespace) -> int:
    from generalad.apps.model_io import write_run_outputs
    from generalad.apps.train_job import feature_info, resolve_preset, train_from_store
    from storage.feature_store import FeatureStore

    store = FeatureStore.open(args.store)
    preset = resolve_preset(store, args.preset, {"epochs": args.epochs} if args.epochs else None)
    refuse_existing(args.out, args.overwrite)
    result = train_from_store(
        store,
        args.normal_class,
        preset=preset,
        seed=args.seed,
        shots=args.shots,
        eval_every_epoch=args.eval_every_epoch,
        progress=not args.no_progress,
        device=args.device,
        precision=args.precision,
    )
    info = feature_info(store)
    out = write_run_outputs(
        result,
        args.out,
        image_ids=store.manifest["image_id"].to_numpy(),
        extra_columns={"dataset": store.dataset, "class_name": args.normal_class, "seed": args.seed},
        feature_info=info,
        overwrite=args.overwrite,
    )
    print(
        f"trained {store.dataset} class {args.normal_class!r}: {len(result.train_rows)} images, "
        f"{result.epochs} epochs, {result.train_seconds:.1f} s on {result.device} ({result.precision}); "
        f"backbone {info['backbone']} ({info['weights']})",
        file=sys.stderr,
    )
    print_metrics(result.metrics)
    print(out)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from generalad.apps.model_io import write_evaluation_outputs
    from generalad.apps.train_job import evaluate_from_store
    from storage.feature_store import FeatureStore

    store = FeatureStore.open(args.store)
    refuse_existing(args.out, args.overwrite)
    saved = evaluate_from_store(store, args.model, device=args.device, precision=args.precision)
    out = write_evaluation_outputs(
        saved.evaluation,
        saved.metrics,
        args.out,
        image_ids=store.manifest["image_id"].to_numpy(),
        overwrite=args.overwrite,
    )
    print_metrics(saved.metrics)
    print(out)
    return 0


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate}
