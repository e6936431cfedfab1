"""bf16 against fp32 on this CPU: image AUROC of bf16 features and of bf16 training, same seeds, and the speed.

For MVTec-AD grid (../shared/data, 25 train / 14 test) and the generated quickstart categories (brick, grass,
gravel; 24 train / 16 test each): extract the features twice (backbone in fp32, and in bf16 autocast), train
three discriminators with the same seed (fp32 features + fp32 training = the reference; bf16 features + fp32
training; fp32 features + bf16 training) and compare image AUROC (`last` selection). Extraction and training
timings alternate fp32 / bf16 in one process (ratios, with the load average beside them).

Random-init ViT-S (LayerScale 1.0, so every block changes the tokens): no pretrained weights on this machine.

Usage::

    .venv/bin/python bench/precision.py [--image-size 112] [--epochs 10]
"""

from __future__ import annotations

import time

from common import SHARED_DATA, base_parser, check, finish, loadavg, print_table, scratch_dir

NAME = "precision"


def _datasets(tmp, quick: bool):
    from generalad.data import generate_quickstart, get_dataset

    out = {}
    grid = SHARED_DATA / "mvtec_ad"
    if (grid / "grid").is_dir():
        out["mvtec_ad/grid"] = get_dataset("mvtec_ad", grid, category="grid")
    root = generate_quickstart(tmp / "quickstart")
    for category in ("brick",) if quick else ("brick", "grass", "gravel"):
        out[f"quickstart/{category}"] = get_dataset("quickstart", root, category=category)
    return out


def _auroc(store, cls: str, epochs: int, precision: str) -> tuple[float, float]:
    from generalad.apps.train_job import resolve_preset, train_from_store

    preset = resolve_preset(store, None, {"epochs": epochs})
    start = time.perf_counter()
    result = train_from_store(store, cls, preset=preset, progress=False, device="cpu", precision=precision)
    auroc = next(r["value"] for r in result.metrics if r["metric"] == "image_auroc")
    return auroc, time.perf_counter() - start


def run_dataset(name: str, adapter, tmp, *, image_size: int, epochs: int) -> dict:
    import numpy as np

    from generalad.backbone import BackboneSpec
    from storage.extraction import extract_features
    from storage.feature_store import FeatureStore

    spec = BackboneSpec(weights="random", image_size=image_size, init_values=1.0)
    stores, extract_s = {}, {}
    for precision in ("fp32", "bf16"):  # fp32 first, then bf16: alternating with the training below
        result = extract_features(
            adapter,
            spec,
            str(tmp / "stores"),
            dtype="float32",
            device="cpu",
            precision=precision,
            progress=False,
        )
        stores[precision], extract_s[precision] = FeatureStore.open(result.url), result.seconds
    tokens = {p: s.read(np.arange(s.num_images))[0].numpy() for p, s in stores.items()}
    rel = float(np.linalg.norm(tokens["bf16"] - tokens["fp32"]) / np.linalg.norm(tokens["fp32"]))
    cls = adapter.normal_classes()[0]
    split = stores["fp32"].split(cls)
    labels = np.asarray(split.test_labels)
    pairs = int((labels == 0).sum() * (labels != 0).sum())
    ref, ref_s = _auroc(stores["fp32"], cls, epochs, "fp32")
    feat, _ = _auroc(stores["bf16"], cls, epochs, "fp32")
    train, train_s = _auroc(stores["fp32"], cls, epochs, "bf16")
    return {
        "dataset": name,
        "images": len(adapter.manifest()),
        "pairs": pairs,
        "token_rel_error": rel,
        "auroc_fp32": ref,
        "auroc_bf16_features": feat,
        "auroc_bf16_training": train,
        "extract_speed_bf16_over_fp32": extract_s["fp32"] / extract_s["bf16"],
        "train_speed_bf16_over_fp32": ref_s / train_s,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    started, load_start = time.perf_counter(), loadavg()
    with scratch_dir("precision") as tmp:
        rows = [
            run_dataset(name, adapter, tmp, image_size=args.image_size, epochs=args.epochs)
            for name, adapter in _datasets(tmp, args.quick).items()
        ]
    load_end = loadavg()
    print(f"\nbf16 vs fp32 on the CPU, random ViT-S @ {args.image_size}, {args.epochs} epochs, seed 0; "
          f"load {load_start} -> {load_end}")  # fmt: skip
    print_table(
        ["dataset", "pairs", "tok rel err", "AUROC fp32", "bf16 feat", "bf16 train", "extract x", "train x"],
        [
            [r["dataset"], r["pairs"], r["token_rel_error"], r["auroc_fp32"], r["auroc_bf16_features"],
             r["auroc_bf16_training"], r["extract_speed_bf16_over_fp32"], r["train_speed_bf16_over_fp32"]]
            for r in rows
        ],
    )  # fmt: skip
    worst = max(max(abs(r["auroc_bf16_features"] - r["auroc_fp32"]), abs(r["auroc_bf16_training"] - r["auroc_fp32"]))
                for r in rows)  # fmt: skip
    summary = [check("16 precision", "max |AUROC bf16 - fp32| (features or training)", worst, fmt="{:.4f}")]
    payload = {"config": vars(args), "loadavg": [load_start, load_end], "rows": rows, "summary": summary}
    return finish(NAME, args, payload, started)


if __name__ == "__main__":
    main()
