"""Benchmark: one discriminator training step at ViT-S shapes, against the machine's matmul throughput.

Measures, in one process:

- the median wall time of a training step (views + forward + loss + backward + AdamW) after warm-up, with all
  views in ONE batched forward and with one forward per view;
- the step's FLOPs, counted analytically (below), and the FLOP/s they imply;
- the float32 matmul FLOP/s of this machine (a large ``torch.matmul``, 2 * n^3 FLOPs), and the ratio.

FLOP count (multiply-add = 2 FLOPs; Bv = batch x views sequences of N tokens, width E, MLP width M, blocks L)::

    linear layers, forward  2 * Bv*N * (3E*E + E*E + 2*E*M) * L  +  2 * Bv*N * E      (qkv, out, MLP, head)
    attention, forward      2 * Bv * N*N * E * 2 * L                                   (Q K^T and A V, all heads)
    step                    3 * forward                                                (backward = 2 x forward)

Softmax, LayerNorm, GELU, dropout, the distortions and AdamW are elementwise and left out (they are memory-bound
and small in FLOPs), so the ratio is a lower bound on how well the step uses the matmul units.

Usage::

    .venv/bin/python bench/train_step.py [--steps 3] [--warmup 1] [--threads 1] [--device cpu]

Prints a table and writes ``bench/results/train_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from generalad.presets import preset_for
from generalad.training import build_discriminator, make_optimizer, training_step

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"


def step_flops(
    *, batch: int, views: int, num_patches: int, embed_dim: int, mlp_dim: int, blocks: int
) -> dict:
    """Analytic FLOPs of one training step (see the module docstring)."""
    tokens = batch * views * num_patches
    linear = (
        2 * tokens * (4 * embed_dim * embed_dim + 2 * embed_dim * mlp_dim) * blocks + 2 * tokens * embed_dim
    )
    attention = 4 * batch * views * num_patches * num_patches * embed_dim * blocks
    forward = linear + attention
    return {"forward_linear": linear, "forward_attention": attention, "forward": forward, "step": 3 * forward}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(
    fn: Callable[[], object], *, repeats: int, warmup: int, device: torch.device
) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_flops_per_second(size: int, *, repeats: int, device: torch.device) -> float:
    """float32 FLOP/s of a size x size matmul (median of ``repeats``)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    times = _median_seconds(lambda: torch.matmul(a, b), repeats=repeats, warmup=1, device=device)
    return 2 * size**3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embed-dim", type=int, default=384)
    parser.add_argument("--num-patches", type=int, default=1369)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preset = preset_for("mvtec_ad")  # clean + noise_all + noise_random
    heads = 6
    torch.manual_seed(0)
    tokens = torch.randn(args.batch, args.num_patches, args.embed_dim, device=device)
    attn = torch.rand(args.batch, heads, args.num_patches, device=device)

    results: dict[str, dict] = {}
    for variant, batched in (("batched", True), ("per_view", False)):
        torch.manual_seed(0)
        model = build_discriminator(args.num_patches, args.embed_dim, preset).to(device).train()
        optimizer, _ = make_optimizer(model, preset, epochs=1)
        generator = torch.Generator(device=device).manual_seed(0)

        def step(model=model, optimizer=optimizer, generator=generator, batched=batched) -> None:
            training_step(
                model, optimizer, tokens, attn, views=preset.views, generator=generator, batched=batched
            )

        times = _median_seconds(step, repeats=args.steps, warmup=args.warmup, device=device)
        results[variant] = {"median_s": statistics.median(times), "times_s": times}
        del model, optimizer

    flops = step_flops(
        batch=args.batch,
        views=len(preset.views),
        num_patches=args.num_patches,
        embed_dim=args.embed_dim,
        mlp_dim=preset.mlp_dim,
        blocks=preset.num_blocks,
    )
    peak = matmul_flops_per_second(args.matmul_size, repeats=5, device=device)
    for r in results.values():
        r["flops_per_s"] = flops["step"] / r["median_s"]
        r["fraction_of_matmul"] = r["flops_per_s"] / peak

    report = {
        "config": {
            "embed_dim": args.embed_dim,
            "num_patches": args.num_patches,
            "batch": args.batch,
            "views": list(preset.views),
            "mlp_dim": preset.mlp_dim,
            "disc_heads": preset.num_heads,
            "steps": args.steps,
            "warmup": args.warmup,
            "threads": args.threads,
            "device": str(device),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "flops": flops,
        "matmul": {"size": args.matmul_size, "flops_per_s": peak},
        "steps": results,
        "batched_speedup": results["per_view"]["median_s"] / results["batched"]["median_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(
        f"train step, E={args.embed_dim} N={args.num_patches} batch={args.batch} x {len(preset.views)} views, "
        f"{args.threads} thread(s), {device}"
    )
    print(
        f"FLOPs/step (analytic): {flops['step'] / 1e12:.3f} T "
        f"(forward linear {flops['forward_linear'] / 1e9:.1f} G, attention {flops['forward_attention'] / 1e9:.1f} G)"
    )
    print(f"matmul {args.matmul_size}^3 float32: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'variant':<10} {'median s':>10} {'GFLOP/s':>10} {'of matmul':>10}")
    for name, r in results.items():
        print(
            f"{name:<10} {r['median_s']:>10.3f} {r['flops_per_s'] / 1e9:>10.1f} {r['fraction_of_matmul']:>10.1%}"
        )
    print(f"batched forward speed-up over one forward per view: {report['batched_speedup']:.3f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
