"""The `generalad` command: single steps run directly (no Prefect start-up), suites run the Prefect flow."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from generalad.cli_practitioner import COMMANDS as PRACTITIONER_COMMANDS
from generalad.cli_practitioner import add_parsers as add_practitioner_parsers
from generalad.errors import GeneralADError

__all__ = ["main", "build_parser"]

# Offline-friendly defaults before anything imports prefect or huggingface_hub.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def _add_backbone_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--backbone", default="vit_small_patch14_dinov2", help="timm DINOv2 model name")
    group.add_argument(
        "--weights",
        default="hub",
        help="'hub' (timm/Hugging Face hub or its local cache), 'random' (explicit random init, offline smoke "
        "runs), or a local .safetensors/.pth file",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the random init (--weights random)")
    group.add_argument(
        "--image-size", type=int, default=518, help="input side, a multiple of 14 (default 518)"
    )
    group.add_argument(
        "--layers", type=int, nargs="+", default=[-1], help="blocks whose tokens are kept (default: the last)"
    )
    group.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype"
    )
    group.add_argument("--batch-size", type=int, default=8, help="backbone batch size")
    group.add_argument("--device", default="cpu", help="torch device for the backbone (cpu, cuda, ...)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="generalad", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    datasets = sub.add_parser(
        "datasets", help="list supported datasets, or check one: datasets check NAME PATH"
    )
    datasets.add_argument("action", nargs="?", choices=("check",))
    datasets.add_argument("name", nargs="?")
    datasets.add_argument("path", nargs="?")
    datasets.add_argument("--category", default=None)

    extract = sub.add_parser("extract", help="extract backbone features of a dataset into a feature store")
    extract.add_argument("--dataset", required=True, help="dataset name (see `generalad datasets`)")
    extract.add_argument("--root", required=True, help="dataset root in its official layout")
    extract.add_argument("--category", default=None, help="category (industrial datasets)")
    extract.add_argument(
        "--store", default=None, help="store root, local path or fsspec URL (default ./stores)"
    )
    extract.add_argument("--no-progress", action="store_true")
    _add_backbone_options(extract)

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
    train.add_argument("--device", default="cpu")
    train.add_argument("--out", required=True, help="output folder (model, metrics.json, scores.parquet)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    train.add_argument("--no-progress", action="store_true")

    evaluate = sub.add_parser("evaluate", help="score a store's test split with a saved model")
    evaluate.add_argument("--store", required=True)
    evaluate.add_argument("--model", required=True, help="a folder written by `generalad train`")
    evaluate.add_argument("--out", required=True, help="output folder (metrics.json, scores.parquet)")
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--overwrite", action="store_true")

    reproduce = sub.add_parser("reproduce", help="run the reproduce-all flow on a suite (the main job)")
    reproduce.add_argument("--suite", default="quickstart", help="table1..table5, fig4, quickstart, smoke")
    reproduce.add_argument("--reports", default="reports", help="report store (local path or fsspec URL)")
    reproduce.add_argument("--store", default=None, help="feature store root (default ./stores)")
    reproduce.add_argument(
        "--weights",
        default="auto",
        help="'auto' (pretrained if available, else an explicit random init), 'hub', 'random', or a file",
    )
    reproduce.add_argument("--config", default=None, help="dataset roots TOML (default ./generalad.toml)")
    reproduce.add_argument(
        "--dask-address", default=None, help="existing Dask scheduler (default: LocalCluster)"
    )
    reproduce.add_argument(
        "--workers", type=int, default=None, help="LocalCluster workers (default: per core)"
    )
    reproduce.add_argument("--run-id", default=None, help="report run id (a rerun replaces its own rows)")
    reproduce.add_argument(
        "--no-epoch-eval", action="store_true", help="evaluate only at the end (`last` only)"
    )

    report = sub.add_parser("report", help="render the paper-style table from a report store")
    report.add_argument("--reports", default="reports")
    report.add_argument("--suite", default=None, help="only the datasets of this suite")
    report.add_argument("--metric", default="image_auroc")
    report.add_argument("--selection", default="last", choices=("last", "best_on_test"))
    report.add_argument("--format", dest="fmt", default="markdown", choices=("markdown", "csv"))
    report.add_argument("--no-paper", action="store_true", help="leave out the paper's numbers")
    add_practitioner_parsers(sub)
    return parser


def _cmd_datasets(args: argparse.Namespace) -> int:
    from generalad.datasets import list_datasets
    from generalad.datasets.check import check_dataset

    if args.action is None:
        for name in list_datasets():
            print(name)
        return 0
    if not args.name or not args.path:
        raise SystemExit("usage: generalad datasets check NAME PATH [--category C]")
    print(check_dataset(args.name, args.path, category=args.category))
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from generalad.backbone import BackboneSpec
    from generalad.datasets import get_dataset
    from storage.extraction import default_store_root, extract_features

    spec = BackboneSpec(
        name=args.backbone,
        weights=args.weights,
        seed=args.seed,
        image_size=args.image_size,
        layers=tuple(args.layers),
    )
    adapter = get_dataset(args.dataset, args.root, category=args.category)
    result = extract_features(
        adapter,
        spec,
        args.store or default_store_root(),
        dtype=args.dtype,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
    )
    if result.reused:
        print(f"store already complete ({result.num_images} images), nothing extracted", file=sys.stderr)
    else:
        rate = result.images_extracted / result.seconds if result.seconds else float("nan")
        print(
            f"extracted {result.images_extracted} images in {result.seconds:.1f} s ({rate:.2f} img/s), "
            f"{result.shards_skipped} shards reused",
            file=sys.stderr,
        )
    print(result.url)
    return 0


def _print_metrics(rows: list[dict]) -> None:
    print(f"{'selection':<14}{'epoch':>6}  {'metric':<14}{'value':>9}")
    for row in rows:
        print(f"{row['selection']:<14}{row['epoch']:>6}  {row['metric']:<14}{row['value']:>9.4f}")


def _cmd_train(args: argparse.Namespace) -> int:
    from generalad.model_io import write_run_outputs
    from storage.feature_store import FeatureStore
    from storage.train_job import feature_info, resolve_preset, train_from_store

    store = FeatureStore.open(args.store)
    preset = resolve_preset(store, args.preset, {"epochs": args.epochs} if args.epochs else None)
    _refuse_existing(args.out, args.overwrite)
    result = train_from_store(
        store,
        args.normal_class,
        preset=preset,
        seed=args.seed,
        shots=args.shots,
        eval_every_epoch=args.eval_every_epoch,
        progress=not args.no_progress,
        device=args.device,
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
        f"{result.epochs} epochs, {result.train_seconds:.1f} s; backbone {info['backbone']} ({info['weights']})",
        file=sys.stderr,
    )
    _print_metrics(result.metrics)
    print(out)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from generalad.model_io import write_evaluation_outputs
    from storage.feature_store import FeatureStore
    from storage.train_job import evaluate_from_store

    store = FeatureStore.open(args.store)
    _refuse_existing(args.out, args.overwrite)
    saved = evaluate_from_store(store, args.model, device=args.device)
    out = write_evaluation_outputs(
        saved.evaluation,
        saved.metrics,
        args.out,
        image_ids=store.manifest["image_id"].to_numpy(),
        overwrite=args.overwrite,
    )
    _print_metrics(saved.metrics)
    print(out)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from flows.runtime import ensure_prefect_api
    from storage.extraction import default_store_root

    with ensure_prefect_api() as api_url:
        # imported only now: Prefect reads PREFECT_API_URL when it is first imported
        from flows.reproduce import SuiteFailed, reproduce_all

        print(f"Prefect API: {api_url}", file=sys.stderr)
        try:
            summary = reproduce_all(
                suite=args.suite,
                reports=args.reports,
                store=args.store or default_store_root(),
                weights=args.weights,
                config=args.config,
                dask_address=args.dask_address,
                n_workers=args.workers,
                eval_every_epoch=not args.no_epoch_eval,
                run_id=args.run_id,
            )
        except SuiteFailed as exc:
            if exc.summary.get("table"):
                print(exc.summary["table"])  # the classes that did run
            print(f"error: {exc}", file=sys.stderr)
            print(f"rows of the tasks that ran are in {args.reports}", file=sys.stderr)
            return 1
        finally:
            _flush_prefect_logs()
    print(summary["table"])
    print(
        f"\nreports: {summary['reports']} (run id {summary['run_id']}); `generalad report --reports {args.reports}`"
    )
    return 0


def _flush_prefect_logs() -> None:
    """Send buffered run logs while the local server still runs (else they fail after it stops)."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()


def _cmd_report(args: argparse.Namespace) -> int:
    from generalad.report_tables import render_table
    from storage.reports import ReportStore

    frame = ReportStore(args.reports).read_metrics()
    if frame.empty:
        raise GeneralADError(f"no report rows in {args.reports}")
    datasets = None
    if args.suite:
        from flows.suites import get_suite

        datasets = get_suite(args.suite).datasets()
    print(
        render_table(
            frame,
            metric=args.metric,
            selection=args.selection,
            datasets=datasets,
            with_paper=not args.no_paper,
            fmt=args.fmt,
        )
    )
    return 0


def _refuse_existing(out: str, overwrite: bool) -> None:
    from generalad.staging import refuse_existing

    refuse_existing(out, overwrite)  # checked before any work, not only when writing


COMMANDS = {
    "datasets": _cmd_datasets,
    "extract": _cmd_extract,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "reproduce": _cmd_reproduce,
    "report": _cmd_report,
    **PRACTITIONER_COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GeneralADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
