"""The `generalad` command: single steps run directly (no Prefect start-up), suites run the Prefect flow."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

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


COMMANDS = {"datasets": _cmd_datasets, "extract": _cmd_extract}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GeneralADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
