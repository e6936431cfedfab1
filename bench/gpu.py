"""Question 8: the GPU script. One prepared run (a few minutes on one GPU) of what the CPU benchmarks cannot say.

On ``cuda:0``, for DINOv2 ViT-S/B/L at 518 px (random weights with LayerScale 1.0, so every block changes the
tokens; speed does not depend on the values):

1. **Extraction forward** images/s (`generalad.backbone.Backbone`, CLS-attention capture included, batch 16) in
   float32 (TF32 off), float32 with TF32 matmuls, and float16 / bfloat16 autocast; for the half types, how far
   the tokens are from float32: max and mean absolute difference, and the cosine similarity per token (mean and
   minimum), plus the same for the CLS attention maps. These are what decides whether a half-precision store can
   keep image AUROC within 0.001 (docs/method.md section 1 asks for a parity test before such a default).
2. **Full extraction path** for ViT-S: `storage.extraction.extract_features` with ``device=DEVICE`` on a
   generated 1024 x 1024 PNG category (decode and resize run on the CPU in one background thread), against the
   forward alone: on a GPU the CPU-side decode is the likely limit.
3. **Discriminator training** images/s: `generalad.method.training.training_step` at N = 1369, E = 384/768/1024,
   batch 16, 3 views (industrial preset), float32 and bfloat16 autocast.
4. **End-to-end inference** images/s: preprocessed batch -> Backbone -> discriminator (eval) -> top-10 image
   score + 518 x 518 blurred anomaly maps, batch 16 and batch 1, against the paper's 154 / 52 / 17 images/s
   (S / B / L) on one A100-40GB (`generalad.apps.paper.INFERENCE_IMAGES_PER_SECOND`). Another GPU: compare with care.

5. **The flow path** (`bench/gpu_flow.py`): `reproduce-all` on quickstart with ``--device cuda`` against
   ``--device cpu`` (image AUROC within 0.005 in fp32, and both wall times), decode+resize images/s against the
   forward's, training steps/s (= the training images/s above / batch), and the `table1` ViT-L `--plan`
   estimate from a calibration on this GPU.

Without a CUDA device it prints why and exits 0 (the summary row says "skipped").

Usage::

    .venv/bin/python bench/gpu.py [--quick] [--sizes small base large] [--repeats 10]
"""

from __future__ import annotations

import time

import gpu_flow
from common import base_parser, check, finish, loadavg, print_table, scratch_dir

NAME = "gpu"
# set by main(): the device and image size (cuda / 518 normally; --device cpu --image-size 56 smoke-tests the code)
DEVICE = "cuda"
SIZE = 518
LETTER = {"small": "S", "base": "B", "large": "L"}


def _time(fn, *, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()``: CUDA events when the device is a GPU, perf_counter otherwise."""
    import statistics

    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def _empty_cache() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def _parity(reference, other) -> dict[str, float]:
    import torch.nn.functional as F

    ref, oth = reference.float(), other.float()
    diff = (ref - oth).abs()
    cosine = F.cosine_similarity(ref, oth, dim=-1)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "mean_abs_value": float(ref.abs().mean()),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
    }


def bench_backbone(size: str, *, batch: int, repeats: int) -> dict:
    import torch

    from generalad.backbone import BackboneSpec, load_backbone

    spec = BackboneSpec(name=f"vit_{size}_patch14_dinov2", weights="random", image_size=SIZE, init_values=1.0)
    backbone = load_backbone(spec).to(DEVICE)
    images = torch.randn(
        batch, 3, SIZE, SIZE, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0)
    )
    out: dict = {"model": spec.name, "batch": batch, "precision": {}}
    reference = None
    for name, dtype, tf32 in (
        ("float32", None, False),
        ("float32+tf32", None, True),
        ("float16", torch.float16, False),
        ("bfloat16", torch.bfloat16, False),
    ):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

        def forward(dtype=dtype):
            with torch.inference_mode(), torch.autocast(DEVICE, dtype=dtype, enabled=dtype is not None):
                return backbone(images)

        seconds = _time(forward, repeats=repeats)
        tokens, attn = forward()
        entry = {"images_per_s": batch / seconds, "seconds_per_batch": seconds}
        if reference is None:
            reference = (tokens.float(), attn.float())
        else:
            entry["tokens_vs_float32"] = _parity(reference[0], tokens)
            entry["cls_attn_vs_float32"] = _parity(reference[1], attn)
            entry["finite"] = bool(torch.isfinite(tokens).all())
        out["precision"][name] = entry
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out["embed_dim"] = backbone.embed_dim
    out["num_heads"] = backbone.num_heads
    return out


def bench_discriminator(embed_dim: int, *, batch: int, repeats: int) -> dict:
    import torch

    from generalad.method.presets import preset_for
    from generalad.method.training import build_discriminator, make_optimizer, training_step

    preset = preset_for("mvtec_ad")
    n = (SIZE // 14) ** 2
    gen = torch.Generator(DEVICE).manual_seed(0)
    tokens = torch.randn(batch, n, embed_dim, device=DEVICE, generator=gen)
    attn = torch.rand(batch, 6, n, device=DEVICE, generator=gen)
    out = {}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        torch.manual_seed(0)
        model = build_discriminator(n, embed_dim, preset).to(DEVICE).train()
        optimizer, _ = make_optimizer(model, preset, 1)
        generator = torch.Generator(DEVICE).manual_seed(0)

        def step(model=model, optimizer=optimizer, generator=generator, dtype=dtype):
            with torch.autocast(DEVICE, dtype=dtype, enabled=dtype is not None):
                training_step(model, optimizer, tokens, attn, views=preset.views, generator=generator)

        seconds = _time(step, repeats=repeats)
        out[name] = {"images_per_s": batch / seconds, "seconds_per_step": seconds}
    return out


def bench_inference(size: str, *, batches: tuple[int, ...], repeats: int) -> dict:
    import torch

    from generalad.backbone import BackboneSpec, load_backbone
    from generalad.method.presets import preset_for
    from generalad.method.scoring import anomaly_maps, image_scores
    from generalad.method.training import build_discriminator

    spec = BackboneSpec(name=f"vit_{size}_patch14_dinov2", weights="random", image_size=SIZE, init_values=1.0)
    backbone = load_backbone(spec).to(DEVICE)
    preset = preset_for("mvtec_ad")
    model = build_discriminator(backbone.num_patches, backbone.embed_dim, preset).to(DEVICE).eval()
    out = {}
    for batch in batches:
        images = torch.randn(batch, 3, SIZE, SIZE, device=DEVICE)
        for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):

            def infer(images=images, dtype=dtype):
                with torch.inference_mode(), torch.autocast(DEVICE, dtype=dtype, enabled=dtype is not None):
                    tokens, _ = backbone(images)
                    logits = model(tokens).float()
                    return image_scores(logits, preset.top_k), anomaly_maps(logits, SIZE)

            seconds = _time(infer, repeats=repeats)
            out[f"batch{batch}_{name}"] = {"images_per_s": batch / seconds, "seconds_per_batch": seconds}
    return out


def bench_extract_path(tmp, *, repeats: int) -> dict:
    """extract_features on the GPU over generated 1024x1024 PNGs, against the forward alone on the same count."""
    import torch

    from generalad.backbone import BackboneSpec, load_backbone
    from generalad.data import generate_quickstart, get_dataset
    from storage.extraction import extract_features

    scale = 1 if DEVICE == "cuda" else 8  # a CPU smoke test extracts 8x fewer images
    root = generate_quickstart(
        tmp / "qs", n_train=48 // scale, n_test_good=8 // scale, n_test_defect=8 // scale, image_size=1024
    )
    adapter = get_dataset("quickstart", root, category="brick")
    n = len(adapter.manifest())
    spec = BackboneSpec(name="vit_small_patch14_dinov2", weights="random", image_size=SIZE, init_values=1.0)
    runs = []
    for i in range(max(1, repeats // 5)):
        start = time.perf_counter()
        extract_features(adapter, spec, str(tmp / f"store{i}"), device=DEVICE, batch_size=16, progress=False)
        runs.append(time.perf_counter() - start)
    backbone = load_backbone(spec).to(DEVICE)
    images = torch.randn(16, 3, SIZE, SIZE, device=DEVICE)

    def forward():
        with torch.inference_mode():
            backbone(images)

    forward_s = _time(forward, repeats=repeats) / 16
    return {
        "images": n,
        "extract_images_per_s": n / min(runs),
        "forward_images_per_s": 1.0 / forward_s,
        "cpu_threads": torch.get_num_threads(),
    }


def parse_args(argv: list[str] | None):
    parser = base_parser(__doc__)
    parser.add_argument(
        "--sizes", nargs="+", default=None, choices=list(LETTER), help="default all (S only quick)"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=None, help="timed iterations per measurement (5 / 10)")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script")
    parser.add_argument("--image-size", type=int, default=518, help="518; smaller only to smoke-test")
    return parser.parse_args(argv)


def measure(sizes: list[str], *, batch: int, repeats: int, quick: bool) -> dict:
    """Steps 1-5 of the module docstring, keyed as the result's payload."""
    backbones = {s: bench_backbone(s, batch=batch, repeats=repeats) for s in sizes}
    discs = {s: bench_discriminator(backbones[s]["embed_dim"], batch=batch, repeats=repeats) for s in sizes}
    inference = {s: bench_inference(s, batches=(batch, 1), repeats=repeats) for s in sizes}
    with scratch_dir("gpu") as tmp:
        extract_path = bench_extract_path(tmp, repeats=repeats)
        flow_path = gpu_flow.run(tmp, DEVICE, quick=quick, decode_only=DEVICE != "cuda")
    return {
        "flow_path": flow_path,
        "backbone": backbones,
        "discriminator": discs,
        "inference": inference,
        "extract_path": extract_path,
    }


def print_tables(m: dict, sizes: list[str], batch: int, device_name: str, load_start) -> None:
    from generalad.apps.paper import INFERENCE_IMAGES_PER_SECOND

    backbones, discs, inference, extract_path = (
        m["backbone"],
        m["discriminator"],
        m["inference"],
        m["extract_path"],
    )
    print(
        f"\nGPU: {device_name}, {SIZE} px, batch {batch}, random weights (LayerScale 1.0); load {load_start}"
    )
    rows = []
    for s, b in backbones.items():
        for name, e in b["precision"].items():
            tok = e.get("tokens_vs_float32", {})
            rows.append(
                [LETTER[s], name, e["images_per_s"]]
                + [tok.get(k, "") for k in ("max_abs_diff", "mean_abs_diff", "cosine_mean", "cosine_min")]
            )
    print_table(
        ["ViT", "precision", "extract fwd img/s", "max |d| tokens", "mean |d|", "cos mean", "cos min"],
        rows,
        title="\nextraction forward (Backbone, capture included)",
    )
    print(
        f"\nextract_features on the GPU, ViT-S, {extract_path['images']} generated 1024x1024 PNGs: "
        f"{extract_path['extract_images_per_s']:.1f} img/s vs forward alone {extract_path['forward_images_per_s']:.1f}"
    )
    print_table(
        ["ViT", "E", "train img/s fp32", "train img/s bf16", "infer img/s b16 fp32", "b16 bf16", "b1 fp32"]
        + ["paper (A100)"],
        [
            [LETTER[s], backbones[s]["embed_dim"]]
            + [discs[s]["float32"]["images_per_s"], discs[s]["bfloat16"]["images_per_s"]]
            + [inference[s][f"batch{batch}_float32"]["images_per_s"]]
            + [inference[s][f"batch{batch}_bfloat16"]["images_per_s"]]
            + [inference[s]["batch1_float32"]["images_per_s"], INFERENCE_IMAGES_PER_SECOND[LETTER[s]]]
            for s in sizes
        ],
        title=f"\ndiscriminator training (N={(SIZE // 14) ** 2}, 3 views) and end-to-end inference",
    )


def summary_rows(m: dict, sizes: list[str], batch: int, device_name: str) -> list[dict]:
    from generalad.apps.paper import INFERENCE_DEVICE, INFERENCE_IMAGES_PER_SECOND

    summary = []
    for s in sizes:
        paper = INFERENCE_IMAGES_PER_SECOND[LETTER[s]]
        fp32 = m["inference"][s][f"batch{batch}_float32"]["images_per_s"]
        summary.append(
            check(
                "8 GPU",
                f"ViT-{LETTER[s]} end-to-end inference img/s / paper's ({INFERENCE_DEVICE})",
                fp32 / paper,
                fmt="{:.2f}",
                note=f"{fp32:.0f} img/s fp32 on {device_name}",
            )
        )
        precision = m["backbone"][s]["precision"]
        summary.append(
            check(
                "8 GPU",
                f"  ViT-{LETTER[s]} bf16 / fp32 extraction speed (info)",
                precision["bfloat16"]["images_per_s"] / precision["float32"]["images_per_s"],
                fmt="{:.2f}",
                note=f"token cosine min {precision['bfloat16']['tokens_vs_float32']['cosine_min']:.4f}",
            )
        )
    extract_path = m["extract_path"]
    summary.append(
        check(
            "8 GPU",
            "extract_features / forward alone, ViT-S (info)",
            extract_path["extract_images_per_s"] / extract_path["forward_images_per_s"],
            fmt="{:.2f}",
        )
    )
    summary += gpu_flow.summary_rows(m["flow_path"])
    summary += [
        check("16 GPU", f"ViT-{LETTER[s]} training steps/s fp32 (batch {batch})",
              m["discriminator"][s]["float32"]["images_per_s"] / batch, fmt="{:.2f}")
        for s in sizes
    ]  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    global DEVICE, SIZE
    DEVICE, SIZE = args.device, args.image_size
    started = time.perf_counter()
    load_start = loadavg()

    import torch

    if DEVICE == "cuda" and not torch.cuda.is_available():
        message = "no CUDA device here (torch.cuda.is_available() is False): GPU benchmark skipped"
        print(f"\n{message}. Run `.venv/bin/python bench/gpu.py` on a machine with an NVIDIA GPU.")
        summary = [check("8 GPU", "GPU benchmark", None, note="skipped: no CUDA device")]
        return finish(NAME, args, {"skipped": True, "reason": message, "summary": summary}, started)

    from generalad.apps.paper import INFERENCE_IMAGES_PER_SECOND

    sizes = args.sizes or (["small"] if args.quick else ["small", "base", "large"])
    repeats = args.repeats or (5 if args.quick else 10)
    device_name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else f"{DEVICE} (smoke test)"
    m = measure(sizes, batch=args.batch, repeats=repeats, quick=args.quick)
    print_tables(m, sizes, args.batch, device_name, load_start)
    summary = summary_rows(m, sizes, args.batch, device_name)
    payload = {
        "device": device_name,
        "flow_path": m["flow_path"],
        "config": {"image_size": SIZE, "batch": args.batch, "repeats": repeats, "sizes": sizes},
        "loadavg_start": load_start,
        "backbone": m["backbone"],
        "discriminator": m["discriminator"],
        "inference": m["inference"],
        "extract_path": m["extract_path"],
        "paper_images_per_s": dict(INFERENCE_IMAGES_PER_SECOND),
        "summary": summary,
    }
    return finish(NAME, args, payload, started)


if __name__ == "__main__":
    main()
