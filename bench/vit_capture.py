"""Attention capture and backbone FLOPs for bench/extraction.py (questions 1 and 2; see its docstring).

The timm model without the capture hook, an alternative capture that reuses the block's own qkv output, the
FLOP count of one image, and the interleaved one-thread CPU-time comparison of the three capture variants.
"""

from __future__ import annotations

import time

import torch
from common import interleaved, median, print_table

MATMUL = 2048  # side of the reference fp32 matmul


def plain_model(spec):
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


def measure_capture(spec, decoded, plain, args) -> dict:
    """Attention capture: the same forward three ways, plus a matmul; ONE torch thread, CPU time of this thread
    (steady under load, see common.interleaved), paired per round."""
    from generalad.backbone import load_backbone

    backbone = load_backbone(spec)
    qkv_model = plain_model(spec)
    layer = backbone.layers[-1]
    qkv_hook = _QKVOutputHook(qkv_model.blocks[layer].attn, backbone.num_prefix)
    sample = torch.stack((decoded * (1 + args.hook_batch // len(decoded)))[: args.hook_batch])
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
    try:
        times = interleaved(variants, rounds=args.hook_rounds, warmup=1, clock=time.thread_time)
    finally:
        torch.set_num_threads(args.threads)
    return {"times": times, "parity": parity}


def print_capture(a: dict, capture: dict, flops: dict, args) -> None:
    """Question 1's capture table and question 2's utilisation line."""
    best, overhead = a["best"], a["overhead"]
    print_table(
        [
            "capture variant (1 thread, CPU s)",
            "best CPU s / batch",
            "overhead vs plain",
            "max |diff| vs Backbone",
        ],
        [
            ["forward_intermediates, no hook", best["plain"], "", ""],
            ["Backbone (pre-hook, recomputes qkv)", best["backbone"], f"{overhead['backbone']:+.2%}", ""],
            [
                "proposed: hook on qkv output",
                best["qkv_output_hook"],
                f"{overhead['qkv_output_hook']:+.2%}",
                f"{capture['parity']:.1e}",
            ],
        ],
        title=f"\nattention capture, batch {args.hook_batch}, best of {args.hook_rounds} interleaved rounds "
        f"(the pre-hook's extra qkv projection is {a['recompute']:.1%} of the forward's FLOPs)",
    )
    print(
        f"\nutilisation: {flops['total'] / 1e9:.2f} GFLOP/image (counted linear+conv "
        f"{flops['counted_linear_conv'] / 1e9:.2f} + attention {flops['attention_analytic'] / 1e9:.2f}); one thread: "
        f"Backbone forward {a['forward_rate'] / 1e9:.1f} GFLOP/s vs matmul {MATMUL}^3 fp32 "
        f"{a['matmul_rate'] / 1e9:.1f} GFLOP/s (CPU time, best round) -> {a['utilisation']:.2f}; {args.threads} "
        f"threads, wall: bare forward {median(a['wall_forward']) / 1e9:.1f} vs matmul "
        f"{median(a['wall_matmul']) / 1e9:.1f} GFLOP/s -> {a['utilisation_wall']:.2f}"
    )
