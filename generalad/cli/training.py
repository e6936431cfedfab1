"""`generalad train` and `generalad evaluate`: one discriminator from a feature store, and a saved one scored."""

from __future__ import annotations

import argparse
import sys

from generalad.cli.common import add_device_option, add_precision_option, print_metrics, refuse_existing
from generalad.defaults import METHODS

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
    train.add_argument(
        "--method",
        choices=METHODS,
        default="generalad",
        help="generalad (train the discriminator) or patchcore_knn (a nearest-neighbour memory bank of the "
        "normal patches; no training, --preset/--epochs/--eval-every-epoch do not apply)",
    )
    train.add_argument(
        "--coreset-ratio",
        type=float,
        default=None,
        help="patchcore_knn: share of the training patches kept in the bank (default 0.1, the PatchCore "
        "paper's main setting; 0.01 is its cheap variant, 1 keeps all)",
    )
    train.add_argument("--out", required=True, help="output folder (model, metrics.json, scores.parquet)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument(
        "--config", default=None, help="TOML file whose [train] table holds these options (flags override it)"
    )

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

    knn = _knn_settings(args)
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
        method=args.method,
        knn=knn,
    )
    info = feature_info(store)
    out = write_run_outputs(
        result,
        args.out,
        image_ids=store.manifest["image_id"].to_numpy(),
        extra_columns={
            "dataset": store.dataset,
            "class_name": args.normal_class,
            "seed": args.seed,
            "method": args.method,
        },
        feature_info=info,
        overwrite=args.overwrite,
    )
    what = f"{result.epochs} epochs" if knn is None else f"{result.model.bank.shape[0]} bank patches"
    print(
        f"{args.method} on {store.dataset} class {args.normal_class!r}: {len(result.train_rows)} images, "
        f"{what}, {result.train_seconds:.1f} s on {result.device} ({result.precision}); "
        f"backbone {info['backbone']} ({info['weights']})",
        file=sys.stderr,
    )
    print_metrics(result.metrics)
    print(out)
    return 0


def _knn_settings(args: argparse.Namespace):
    """The kNN settings for --method patchcore_knn (None for generalad); refuses options of the other method."""
    from generalad.errors import ConfigError
    from generalad.method.patchcore import PatchCoreSettings

    if args.method == "generalad":
        if args.coreset_ratio is not None:
            raise ConfigError("--coreset-ratio belongs to --method patchcore_knn")
        return None
    given = [
        flag for flag, value in (("--epochs", args.epochs), ("--preset", args.preset)) if value is not None
    ]
    if args.eval_every_epoch:
        given.append("--eval-every-epoch")
    if given:
        raise ConfigError(f"{', '.join(given)} do not apply to --method {args.method} (nothing is trained)")
    if args.coreset_ratio is None:
        return PatchCoreSettings()
    return PatchCoreSettings(coreset_ratio=args.coreset_ratio)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from generalad.apps.model_io import model_method, write_evaluation_outputs
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
        extra_columns={"method": model_method(saved.config)},
        overwrite=args.overwrite,
    )
    print_metrics(saved.metrics)
    print(out)
    return 0


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate}
