"""Questions 1 and 2: extraction efficiency, attention-capture overhead, decode share, backbone utilisation.

Measured in one process, same model (random-initialised ViT-S/14 DINOv2, explicit seed), batch and torch threads:

1. **Extraction efficiency** = images/s of the full extraction path (`storage.extraction.extract_features` on a
   real image folder: decode, LANCZOS resize, normalise, masks, forward, attention capture, Zarr write, verify,
   COMPLETE marker) / images/s of a bare timm ``forward_features`` on the same images pre-decoded to tensors.
   The two are interleaved (A B B A) and compared per round. The verdict uses the steady state: the extraction's
   wall time less its per-call fixed costs (building the model, creating the store; timed by wrapping what
   `extract_features` calls), which a real dataset of hundreds to 60,000 images amortises; the end-to-end ratio
   is printed too, with a split of where extraction's time goes. Target >= 0.90.
2. **Decode share**: single-thread milliseconds per image to decode the file and to resize/normalise it (plus the
   mask, for anomalous industrial images), against the bare forward's milliseconds per image. On 2 cores the
   decoding thread competes with the two torch threads, so extraction cannot beat ``1 - decode share`` by much.
3. **Attention-capture overhead**: `Backbone` (forward pre-hook on the last block that recomputes the CLS row
   from the block's qkv projection) against ``model.forward_intermediates`` alone (no hook), same arguments; and
   a bench-local alternative that gives the same values without the extra projection: a forward hook on
   ``attn.qkv`` that reuses the output the block computes anyway. Measured with ONE torch thread in CPU seconds
   of the calling thread (``time.thread_time``), interleaved, best of 5 (quick) or 7 rounds (interference only adds time): a
   1-3 % effect is lost in wall-time noise on a shared 2-core machine. Target <= 3 %.
4. **Backbone utilisation** (question 2): FLOPs of one image (``FlopCounterMode`` for the linear layers and the
   patch embedding, plus the attention matmuls ``4 T^2 D`` per block counted analytically, since the counter does
   not see the CPU's fused attention kernel) x the `Backbone` forward's images/s, divided by the float32 matmul
   FLOP/s (2048^3) measured in the same rounds. Verdict: one thread, best CPU time (as 3.); the bare forward at the
   run's threads against a matmul at the same threads, in wall time, is printed too.

Quick: 224 px (N = 256), 16 images; full: 518 px (N = 1369, the paper's), 24 images.

Usage::

    .venv/bin/python bench/extraction.py [--quick] [--image-size 518] [--images 24] [--rounds 2]
"""

from __future__ import annotations

import time

import torch
from common import (
    base_parser,
    check,
    finish,
    grid_adapter,
    instrumented_extraction,
    interleaved,
    loadavg,
    median,
    paired_ratios,
    print_table,
    scratch_dir,
)

NAME = "extraction"
MODEL = "vit_small_patch14_dinov2"
MATMUL = 2048  # side of the reference fp32 matmul


def _plain_model(spec):
    """The timm model `load_backbone` builds for a random spec, with the same weights, but no hook."""
    import timm

    kwargs = {"img_size": spec.image_size, "num_classes": 0}
    if spec.init_values is not None:
        kwargs["init_values"] = spec.init_values
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return timm.create_model(spec.name, pretrained=False, **kwargs).eval().requires_grad_(False)


class _QKVOutputHook:
    """Alternative capture: a forward hook on ``attn.qkv`` that reuses the projection the block computes anyway."""

    def __init__(self, attn, num_prefix: int):
        self.attn, self.num_prefix, self.captured = attn, num_prefix, None
        attn.qkv.register_forward_hook(self)

    def __call__(self, module, args, output):
        attn = self.attn
        batch, tokens, _ = output.shape
        qkv = output.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim)
        q = attn.q_norm(qkv[:, :1, 0].transpose(1, 2))
        k = attn.k_norm(qkv[:, :, 1].transpose(1, 2))
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        self.captured = logits.softmax(dim=-1)[:, :, 0, self.num_prefix :]


def _intermediates(model, images, layer):
    return model.forward_intermediates(
        images, indices=[layer], norm=True, stop_early=True, output_fmt="NLC", intermediates_only=True
    )


def model_flops(model, image_size: int) -> dict[str, float]:
    """FLOPs of one image's ``forward_features``: counted linear/conv + analytic attention (see the docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.forward_features(torch.zeros(1, 3, image_size, image_size))
    counted = float(counter.get_total_flops())
    tokens = (image_size // 14) ** 2 + int(model.num_prefix_tokens)
    dim, depth = int(model.embed_dim), len(model.blocks)
    attention = 4.0 * tokens * tokens * dim * depth  # Q K^T and A V, 2 FLOPs per multiply-add
    linear_analytic = 24.0 * dim * dim * tokens * depth  # qkv 3D^2 + proj D^2 + MLP 8D^2, x 2 FLOPs
    return {
        "counted_linear_conv": counted,
        "attention_analytic": attention,
        "linear_analytic": linear_analytic,
        "total": counted + attention,
    }


def decode_times(adapter, records, image_size: int) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Decode every record once (single thread), timing file decode, resize+normalise and masks separately."""
    from generalad.data.images import load_mask
    from generalad.data.preprocess import preprocess_image, preprocess_mask

    decoded, t_decode, t_resize, t_mask = [], 0.0, 0.0, 0.0
    for record in records:
        start = time.perf_counter()
        image = adapter.load_image(record)
        t_decode += time.perf_counter() - start
        start = time.perf_counter()
        decoded.append(preprocess_image(image, image_size))
        t_resize += time.perf_counter() - start
        if adapter.has_masks and record.mask_paths:
            start = time.perf_counter()
            mask = load_mask([adapter.root / p for p in record.mask_paths], expected_size=image.size)
            preprocess_mask(mask, image_size)
            t_mask += time.perf_counter() - start
    n = len(records)
    return decoded, {
        "decode_ms": 1e3 * t_decode / n,
        "resize_normalise_ms": 1e3 * t_resize / n,
        "mask_ms": 1e3 * t_mask / n,
        "image_mode": image.mode,
        "image_size": list(image.size),
    }


FIXED_PARTS = ("build model", "create store")


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--image-size", type=int, default=None, help="default 224 quick, 518 full")
    parser.add_argument(
        "--images", type=int, default=None, help="images extracted (default 16 quick, 24 full)"
    )
    parser.add_argument("--batch", type=int, default=8, help="extraction batch (the project's default)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds of bare forward / extraction"
    )
    parser.add_argument(
        "--hook-rounds", type=int, default=None, help="interleaved rounds of the capture variants (5 / 7)"
    )
    parser.add_argument("--hook-batch", type=int, default=None, help="batch of the capture variants (2 / 1)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    size = args.image_size or (224 if args.quick else 518)
    n_images = args.images or (16 if args.quick else 24)
    hook_batch = args.hook_batch or (2 if args.quick else 1)
    args.hook_rounds = args.hook_rounds or (5 if args.quick else 7)
    torch.set_num_threads(args.threads)
    load_start = loadavg()

    from generalad.backbone import BackboneSpec, load_backbone
    from storage.extraction import _record, extract_features

    spec = BackboneSpec(name=MODEL, weights="random", seed=0, image_size=size, init_values=1.0)
    with scratch_dir("extract") as tmp:
        n_test = max(2, n_images // 4)
        adapter, source = grid_adapter(tmp, n_train=n_images - n_test, n_test=n_test)
        records = [_record(row) for row in adapter.manifest().itertuples(index=False)]
        decoded, decode = decode_times(adapter, records, size)
        plain = _plain_model(spec)
        batches = [torch.stack(decoded[i : i + args.batch]) for i in range(0, len(decoded), args.batch)]
        splits: list[dict[str, float]] = []

        def bare() -> None:
            with torch.inference_mode():
                for images in batches:
                    plain.forward_features(images)

        def extract() -> None:
            splits.append({})
            with instrumented_extraction(splits[-1]):
                result = extract_features(
                    adapter, spec, str(tmp / f"store{len(splits)}"), batch_size=args.batch, progress=False
                )
            assert result.images_extracted == len(records)

        mat_a, mat_b = torch.randn(MATMUL, MATMUL), torch.randn(MATMUL, MATMUL)

        def matmul() -> None:
            torch.matmul(mat_a, mat_b)

        with torch.inference_mode():  # warm-up (first-call kernel selection), not timed
            plain.forward_features(batches[0])
        times = interleaved({"bare": bare, "extract": extract, "matmul": matmul}, rounds=args.rounds)

        # attention capture: the same forward three ways, plus a matmul; ONE torch thread, CPU time of this
        # thread (steady under load, see common.interleaved), paired per round
        backbone = load_backbone(spec)
        qkv_model = _plain_model(spec)
        layer = backbone.layers[-1]
        qkv_hook = _QKVOutputHook(qkv_model.blocks[layer].attn, backbone.num_prefix)
        sample = torch.stack((decoded * (1 + hook_batch // len(decoded)))[:hook_batch])
        with torch.inference_mode():
            _, reference = backbone(sample)
            _intermediates(qkv_model, sample, layer)
        parity = float((qkv_hook.captured - reference).abs().max())
        mat_a, mat_b = torch.randn(MATMUL, MATMUL), torch.randn(MATMUL, MATMUL)

        def run(fn):
            def call() -> None:
                with torch.inference_mode():
                    fn()

            return call

        variants = {
            "plain": run(lambda: _intermediates(plain, sample, layer)),
            "backbone": run(lambda: backbone(sample)),
            "qkv_output_hook": run(lambda: _intermediates(qkv_model, sample, layer)),
            "matmul": run(lambda: torch.matmul(mat_a, mat_b)),
        }
        torch.set_num_threads(1)
        hook_times = interleaved(variants, rounds=args.hook_rounds, warmup=1, clock=time.thread_time)
        torch.set_num_threads(args.threads)
        flops = model_flops(plain, size)

    n = len(records)
    # efficiency per round: bare seconds / extraction seconds (= images/s ratio); steady state leaves out the
    # per-call fixed costs (model build, store creation), which a real dataset (hundreds to 60k images) amortises
    efficiency = paired_ratios(times, "bare", "extract")
    fixed = [sum(sp.get(k, 0.0) for k in FIXED_PARTS) for sp in splits]
    steady = [b / (e - f) for b, e, f in zip(times["bare"], times["extract"], fixed, strict=True)]
    # CPU-time measurements: interference only ever adds time, so the minimum over rounds is the intrinsic cost
    best = {name: min(values) for name, values in hook_times.items()}
    overhead = {name: best[name] / best["plain"] - 1.0 for name in ("backbone", "qkv_output_hook")}
    # what the pre-hook adds, counted: one more qkv projection of the last block (3 D^2 x 2 FLOPs per token)
    tokens = (size // 14) ** 2 + int(plain.num_prefix_tokens)
    recompute = 6.0 * int(plain.embed_dim) ** 2 * tokens / flops["total"]
    # utilisation: FLOPs of the Backbone forward per second / matmul FLOP/s; the verdict uses one thread and CPU
    # time (steady under load), the bare forward at the run's threads and wall time is shown too
    matmul_rate = 2 * MATMUL**3 / best["matmul"]
    forward_rate = flops["total"] * hook_batch / best["backbone"]
    utilisation = forward_rate / matmul_rate
    wall_matmul = [2 * MATMUL**3 / t for t in times["matmul"]]
    wall_forward = [flops["total"] * n / t for t in times["bare"]]
    utilisation_wall = median([f / m for f, m in zip(wall_forward, wall_matmul, strict=True)])
    bare_ips, extract_ips = n / median(times["bare"]), n / median(times["extract"])
    forward_ms = 1e3 / bare_ips
    decode_total_ms = decode["decode_ms"] + decode["resize_normalise_ms"] + decode["mask_ms"]
    decode_share = decode_total_ms / (decode_total_ms + forward_ms)
    split_mean = {k: median([sp.get(k, 0.0) for sp in splits]) for k in splits[0]}
    split_mean["other (manifest, fingerprint, lock, loop)"] = median(times["extract"]) - sum(
        v for k, v in split_mean.items() if "background" not in k
    )

    print(
        f"\nextraction, {MODEL} random init, {size} px (N={(size // 14) ** 2}), batch {args.batch}, "
        f"{args.threads} threads, {n} images of {source} ({decode['image_size'][0]}x{decode['image_size'][1]} "
        f"{decode['image_mode']}); load at start {load_start}"
    )
    print_table(
        ["path", "images/s (median)", "rounds (s)"],
        [
            ["bare forward_features, pre-decoded", bare_ips, " ".join(f"{t:.2f}" for t in times["bare"])],
            ["extract_features (decode..Zarr)", extract_ips, " ".join(f"{t:.2f}" for t in times["extract"])],
        ],
    )
    print(
        f"efficiency, median of paired rounds: steady state {median(steady):.3f} (target >= 0.90); "
        f"end to end incl. model build and store creation {median(efficiency):.3f}"
    )
    print_table(
        ["part of extract_features", "s / run", "share of wall"],
        [[k, v, f"{v / median(times['extract']):.1%}"] for k, v in split_mean.items()],
        title="\nwhere extraction's time goes (the background decode overlaps the forward)",
    )
    print_table(
        ["per image, single thread", "ms"],
        [
            ["decode file (PIL)", decode["decode_ms"]],
            ["LANCZOS resize + normalise", decode["resize_normalise_ms"]],
            ["mask decode + resize (avg over images)", decode["mask_ms"]],
            ["bare forward (2 threads, batched)", forward_ms],
        ],
        title="\ndecode share",
    )
    print(
        f"decode share of decode + forward: {decode_share:.1%} (on 2 busy cores extraction tops out near "
        f"{1 - decode_share:.2f})"
    )
    print_table(
        [
            "capture variant (1 thread, CPU s)",
            "best CPU s / batch",
            "overhead vs plain",
            "max |diff| vs Backbone",
        ],
        [
            ["forward_intermediates, no hook", best["plain"], "", ""],
            [
                "Backbone (pre-hook, recomputes qkv)",
                best["backbone"],
                f"{overhead['backbone']:+.2%}",
                "",
            ],
            [
                "proposed: hook on qkv output",
                best["qkv_output_hook"],
                f"{overhead['qkv_output_hook']:+.2%}",
                f"{parity:.1e}",
            ],
        ],
        title=f"\nattention capture, batch {hook_batch}, best of {args.hook_rounds} interleaved rounds "
        f"(the pre-hook's extra qkv projection is {recompute:.1%} of the forward's FLOPs)",
    )
    print(
        f"\nutilisation: {flops['total'] / 1e9:.2f} GFLOP/image (counted linear+conv "
        f"{flops['counted_linear_conv'] / 1e9:.2f} + attention {flops['attention_analytic'] / 1e9:.2f}); one thread: "
        f"Backbone forward {forward_rate / 1e9:.1f} GFLOP/s vs matmul {MATMUL}^3 fp32 "
        f"{matmul_rate / 1e9:.1f} GFLOP/s (CPU time, best round) -> {utilisation:.2f}; {args.threads} threads, "
        f"wall: bare forward {median(wall_forward) / 1e9:.1f} vs matmul {median(wall_matmul) / 1e9:.1f} GFLOP/s "
        f"-> {utilisation_wall:.2f}"
    )

    summary = [
        check(
            "1 extraction",
            f"extract_features / bare forward, images/s, steady state ({size} px)",
            median(steady),
            0.90,
            ">=",
            note=f"{n} images; decode share {decode_share:.0%}",
        ),
        check(
            "1 extraction",
            "  same, end to end incl. model build + store creation (info)",
            median(efficiency),
            note=f"fixed costs {median(fixed):.1f} s per call",
        ),
        check("1 extraction", "  decode share of decode + forward (info)", decode_share),
        check(
            "1 extraction",
            "attention-capture overhead (Backbone vs no hook, 1 thread CPU s)",
            overhead["backbone"],
            0.03,
            "<=",
            fmt="{:+.3f}",
            note=f"analytic {recompute:.1%}; batch {hook_batch}, {args.hook_rounds} rounds",
        ),
        check(
            "1 extraction",
            "  proposed hook on qkv output (info)",
            overhead["qkv_output_hook"],
            fmt="{:+.3f}",
            note=f"max diff {parity:.0e}",
        ),
        check(
            "2 utilisation",
            f"extraction forward FLOP/s / fp32 matmul FLOP/s ({size} px, 1 thread CPU s)",
            utilisation,
            0.50,
            ">=",
            source="bench",
        ),
        check(
            "2 utilisation",
            f"  same, {args.threads} threads, wall, bare forward (info)",
            utilisation_wall,
        ),
    ]
    payload = {
        "config": {
            "model": MODEL,
            "weights": "random seed 0, init_values=1.0",
            "image_size": size,
            "batch": args.batch,
            "images": n,
            "data": source,
            "hook_batch": hook_batch,
            "matmul": MATMUL,
        },
        "loadavg_start": load_start,
        "bare_images_per_s": bare_ips,
        "extract_images_per_s": extract_ips,
        "times_s": times,
        "efficiency_end_to_end_rounds": efficiency,
        "efficiency_steady_state_rounds": steady,
        "extract_split_s": splits,
        "decode": decode | {"forward_ms": forward_ms, "decode_share": decode_share},
        "capture": {
            "times_s": hook_times,
            "overhead": overhead,
            "overhead_analytic": recompute,
            "parity_max_abs_diff": parity,
        },
        "flops_per_image": flops,
        "matmul_flops_per_s_1thread": matmul_rate,
        "forward_flops_per_s_1thread": forward_rate,
        "utilisation": utilisation,
        "utilisation_wall": utilisation_wall,
        "summary": summary,
    }
    return finish(NAME, args, payload, started)


if __name__ == "__main__":
    main()
