"""Options and helpers shared by the command groups of `generalad`."""

from __future__ import annotations

import argparse

from generalad.defaults import DEFAULT_BACKBONE

__all__ = [
    "add_backbone_options",
    "image_size_of",
    "add_device_option",
    "add_precision_option",
    "print_metrics",
    "refuse_existing",
]


def add_device_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    from generalad.devices import DEVICE_HELP

    parser.add_argument("--device", default="auto", help=f"torch device: {DEVICE_HELP}")


def add_precision_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str = "--precision",
    what: str = "forward",
) -> None:
    from generalad.devices import DEFAULT_PRECISION, PRECISIONS

    parser.add_argument(
        flag,
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help=f"{what} precision: fp32 (default, the paper's), tf32 (CUDA), bf16 autocast, fp16 autocast + loss "
        "scaling (CUDA)",
    )


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help=f"timm ViT with a class token (default {DEFAULT_BACKBONE}; also e.g. vit_base_patch16_224.augreg_in21k, "
        "vit_base_patch8_224.dino)",
    )
    group.add_argument(
        "--weights",
        default="hub",
        help="'hub' (timm/Hugging Face hub or its local cache), 'random' (explicit random init, offline smoke "
        "runs), or a local .safetensors/.pth file",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the random init (--weights random)")
    group.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side, a multiple of the backbone's patch size (default: 518 for patch-14 models, the "
        "paper's; 224 for patch-16 and patch-8 models, their weights' resolution)",
    )
    group.add_argument(
        "--layers", type=int, nargs="+", default=[-1], help="blocks whose tokens are kept (default: the last)"
    )
    group.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype"
    )
    group.add_argument("--batch-size", type=int, default=8, help="backbone batch size")
    add_device_option(group)
    add_precision_option(group, what="backbone (part of the store key unless fp32)")


def image_size_of(args: argparse.Namespace) -> int:
    """`--image-size`, else the documented default for the backbone's patch size."""
    if args.image_size is not None:
        return int(args.image_size)
    from generalad.backbone import default_image_size, vit_info

    return default_image_size(vit_info(args.backbone.split(".", 1)[0]).patch_size)


def print_metrics(rows: list[dict]) -> None:
    print(f"{'selection':<14}{'epoch':>6}  {'metric':<14}{'value':>9}")
    for row in rows:
        print(f"{row['selection']:<14}{row['epoch']:>6}  {row['metric']:<14}{row['value']:>9.4f}")


def refuse_existing(out: str, overwrite: bool) -> None:
    from generalad.apps.staging import refuse_existing as refuse

    refuse(out, overwrite)  # checked before any work, not only when writing
