"""`generalad datasets` and `generalad extract`: what data there is, and its features into a store."""

from __future__ import annotations

import argparse
import sys

from generalad.cli.common import add_backbone_options, image_size_of

__all__ = ["add_parsers", "COMMANDS"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `datasets` and `extract`."""
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
    extract.add_argument(
        "--dataset-option",
        dest="dataset_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adapter option, repeatable, e.g. split=listing_80_20 for VisA (the reference's split); part of "
        "the store key and of the rows' protocol",
    )
    extract.add_argument("--no-progress", action="store_true")
    add_backbone_options(extract)


def _cmd_datasets(args: argparse.Namespace) -> int:
    from generalad.data import list_datasets
    from generalad.data.check import check_dataset

    if args.action is None:
        for name in list_datasets():
            print(name)
        return 0
    if not args.name or not args.path:
        raise SystemExit("usage: generalad datasets check NAME PATH [--category C]")
    print(check_dataset(args.name, args.path, category=args.category))
    return 0


def _options(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings as a dict; SystemExit naming a malformed one."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--dataset-option must be KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _cmd_extract(args: argparse.Namespace) -> int:
    from generalad.backbone import BackboneSpec
    from generalad.data import get_dataset
    from generalad.defaults import default_store_root
    from storage.extraction import extract_features

    spec = BackboneSpec(
        name=args.backbone,
        weights=args.weights,
        seed=args.seed,
        image_size=image_size_of(args),
        layers=tuple(args.layers),
    )
    adapter = get_dataset(args.dataset, args.root, category=args.category, **_options(args.dataset_options))
    result = extract_features(
        adapter,
        spec,
        args.store or default_store_root(),
        dtype=args.dtype,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
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
