"""Question 4: one discriminator training step against the FLOP bound at the measured matmul rate, and all
views in ONE batched forward against one forward per view.

Measured in one process, interleaved (A B C, C B A, ...): the training step (views + forward + loss + backward +
AdamW, `generalad.method.training.training_step`) batched and per view, the batched step with torch's own
attention and dropout (``reference``: `generalad.method.kernels.reference_kernels`, the path before the CPU
kernels), with ``--bf16`` both batched steps under ``torch.autocast(bfloat16)`` too, and a float32 matmul of
2048^3 (the machine's rate). Reported: the step's analytic FLOPs / step time / matmul FLOP/s (the fraction of the matmul bound the
step reaches; 1.0 = as fast as a plain matmul), and per-view time / batched time (> 1: batching pays). A
``torch.profiler`` run of one batched step (first, doubling as the warm-up) splits its time by kind of operator,
which says what limits it.

Clock: on the CPU, by default ONE torch thread and the CPU seconds of the calling thread (``time.thread_time``;
the forward, the autograd backward and AdamW all run on it), best of the rounds: on a shared, oversubscribed
2-core machine, wall times of 2-thread steps swing by tens of percent from round to round, CPU time of a
1-thread step by a few. ``--clock wall`` times ``--threads`` threads in wall time (median of paired rounds); on a
GPU it is the only choice.

FLOP count (multiply-add = 2 FLOPs; Bv = batch x views sequences of N tokens, width E, MLP width M, blocks L)::

    linear layers, forward  2 * Bv*N * (3E*E + E*E + 2*E*M) * L  +  2 * Bv*N * E      (qkv, out, MLP, head)
    attention, forward      2 * Bv * N*N * E * 2 * L                                   (Q K^T and A V, all heads)
    step                    3 * forward                                                (backward = 2 x forward)

Softmax, LayerNorm, GELU, dropout, the distortions and AdamW are elementwise and left out (memory-bound, small in
FLOPs), so the fraction is a lower bound on how well the step uses the matmul units.

Shapes: ViT-S features, E = 384, batch 16, the industrial preset (clean + noise_all + noise_random). Full:
N = 1369 (518 px, the paper's; about a minute per step on this CPU); quick: N = 256 (224 px).

Usage::

    .venv/bin/python bench/train_step.py [--quick] [--num-patches 1369] [--rounds 2] [--device cpu]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from common import (
    base_parser,
    check,
    finish,
    interleaved,
    loadavg,
    median,
    paired_ratios,
    peak_rss_mb,
    print_table,
    reset_peak_rss,
)
from step_profile import profile_split

NAME = "train_step"
MATMUL = 2048


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


@dataclass(frozen=True)
class Config:
    """The run's sizes and clock: the options, or the mode's defaults where they are unset."""

    num_patches: int
    warmup: int
    profile_batch: int
    clock_name: str  # "cpu": thread CPU time, 1 thread, best round; "wall": median of paired rounds
    threads: int
    rounds: int
    allocator_tuned: bool = False  # glibc thresholds raised (`generalad.allocator`), as CPU training does


@dataclass
class Steps:
    """Makes the timed training steps; all share the inputs, the preset and the device, and record their peaks."""

    device: torch.device
    preset: Any
    num_patches: int
    embed_dim: int
    batch: int
    tokens: torch.Tensor
    attn: torch.Tensor
    peaks: dict[str, list[float]] = field(default_factory=dict)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def make(
        self,
        batched: bool,
        batch: int | None = None,
        record: str = "",
        reference: bool = False,
        bf16: bool = False,
    ):
        """One step of a fresh discriminator (batched or one forward per view, CPU kernels or ``reference``,
        fp32 or bf16 autocast); with ``record``, the growth of the peak RSS over each call's start is kept."""
        from generalad.method.kernels import reference_kernels
        from generalad.method.training import build_discriminator, make_optimizer, training_step

        batch, device, preset = batch or self.batch, self.device, self.preset
        torch.manual_seed(0)
        model = build_discriminator(self.num_patches, self.embed_dim, preset).to(device).train()
        optimizer, _ = make_optimizer(model, preset, epochs=1)
        generator = torch.Generator(device=device).manual_seed(0)
        feats, maps = self.tokens[:batch], self.attn[:batch]

        def step() -> None:
            base = peak_rss_mb() if record and reset_peak_rss() else None
            with (
                reference_kernels(reference),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
            ):
                training_step(
                    model, optimizer, feats, maps, views=preset.views, generator=generator, batched=batched
                )
            self.sync()
            if base is not None:  # growth of the peak over the RSS before the step
                self.peaks.setdefault(record, []).append(peak_rss_mb() - base)

        return step


def parse_args(argv: list[str] | None):
    parser = base_parser(__doc__)
    parser.add_argument("--embed-dim", type=int, default=384)
    parser.add_argument("--num-patches", type=int, default=None, help="default 256 quick, 1369 full")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3 quick, 2 full)")
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed steps per variant (the profiled step warms up)"
    )
    parser.add_argument("--profile-batch", type=int, default=None, help="batch of the profiled step (16 / 4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--bf16", action="store_true", help="also time both batched steps under bf16 autocast"
    )
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default=None, help="cpu (1 thread; CPU default) or wall"
    )
    return parser.parse_args(argv)


def config_of(args) -> Config:
    clock_name = args.clock or ("cpu" if args.device == "cpu" else "wall")
    return Config(
        num_patches=args.num_patches or (256 if args.quick else 1369),
        warmup=args.warmup,
        profile_batch=args.profile_batch or (16 if args.quick else 4),
        clock_name=clock_name,
        threads=1 if clock_name == "cpu" else args.threads,
        rounds=args.rounds or (3 if args.quick else 2),
    )


def measure(args, cfg: Config, steps: Steps) -> dict:
    """The two profiled steps (first: they warm up), then every variant and the matmul, interleaved."""
    device = steps.device
    mat_a = torch.randn(MATMUL, MATMUL, device=device)
    mat_b = torch.randn(MATMUL, MATMUL, device=device)

    def matmul() -> None:
        torch.matmul(mat_a, mat_b)
        steps.sync()

    # the profiled step comes first and doubles as a warm-up (first-call kernel selection, allocator)
    split = profile_split(steps.make(True, cfg.profile_batch), device)
    reference_split = profile_split(steps.make(True, cfg.profile_batch, reference=True), device)
    variants = {
        "batched": steps.make(True, record="batched"),
        "per_view": steps.make(False, record="per_view"),
        "reference": steps.make(True, record="reference", reference=True),
    }
    if args.bf16:
        variants["batched_bf16"] = steps.make(True, record="batched_bf16", bf16=True)
        variants["reference_bf16"] = steps.make(True, record="reference_bf16", reference=True, bf16=True)
    times = interleaved(
        {**variants, "matmul": matmul},
        rounds=cfg.rounds,
        warmup=cfg.warmup,
        clock=time.thread_time if cfg.clock_name == "cpu" else time.perf_counter,
    )
    if cfg.clock_name == "cpu":  # interference only adds CPU time: keep the best round of each variant
        times = {name: [min(values)] for name, values in times.items()}
    return {"split": split, "reference_split": reference_split, "variants": list(variants), "times": times}


def analyse(args, cfg: Config, preset, m: dict) -> dict:
    """FLOPs per step, the matmul rate per round, each variant's fraction of the matmul bound, the speed-ups."""
    times = m["times"]
    flops = step_flops(
        batch=args.batch,
        views=len(preset.views),
        num_patches=cfg.num_patches,
        embed_dim=args.embed_dim,
        mlp_dim=preset.mlp_dim,
        blocks=preset.num_blocks,
    )
    matmul_rates = [2 * MATMUL**3 / t for t in times["matmul"]]
    fraction = {
        name: median([flops["step"] / t / rate for t, rate in zip(times[name], matmul_rates, strict=True)])
        for name in m["variants"]
    }
    return {
        "flops": flops,
        "matmul_rates": matmul_rates,
        "fraction": fraction,
        "speedup": median(paired_ratios(times, "per_view", "batched")),
        "kernel_speedup": median(paired_ratios(times, "reference", "batched")),
        "bf16_speedup": median(paired_ratios(times, "reference", "batched_bf16")) if args.bf16 else None,
    }


def print_report(args, cfg: Config, views: int, device, m: dict, a: dict, peaks, load_start) -> None:
    times, flops, matmul_rates = m["times"], a["flops"], a["matmul_rates"]
    print(
        f"\ntrain step, E={args.embed_dim} N={cfg.num_patches} batch={args.batch} x {views} views, "
        f"{cfg.threads} thread(s), {device}, {cfg.clock_name} clock "
        f"({'best' if cfg.clock_name == 'cpu' else 'median'} of {cfg.rounds} rounds); load at start {load_start}; "
        f"allocator {'tuned' if cfg.allocator_tuned else 'default'}"
    )
    print(
        f"FLOPs/step (analytic): {flops['step'] / 1e12:.3f} T (forward linear {flops['forward_linear'] / 1e9:.1f} G, "
        f"attention {flops['forward_attention'] / 1e9:.1f} G); matmul {MATMUL}^3 fp32 "
        f"{median(matmul_rates) / 1e9:.1f} GFLOP/s (median of rounds)"
    )
    print_table(
        ["variant", "s/step", "rounds (s)", "FLOP bound s", "fraction of matmul"],
        [
            [name, median(times[name]), " ".join(f"{t:.2f}" for t in times[name])]
            + [flops["step"] / median(matmul_rates), f"{a['fraction'][name]:.1%}"]
            for name in m["variants"]
        ],
    )
    print(f"one batched forward vs one forward per view: {a['speedup']:.3f}x (> 1: batching is faster)")
    print(f"CPU kernels vs torch's attention and dropout (reference / batched): {a['kernel_speedup']:.3f}x")
    if a["bf16_speedup"] is not None:
        print(f"bf16 autocast with the kernels vs fp32 reference: {a['bf16_speedup']:.3f}x")
    if peaks and device.type == "cpu":
        print(
            "peak memory of a step above the RSS before it (VmHWM, max of rounds): "
            + ", ".join(f"{name} {max(values):,.0f} MB" for name, values in peaks.items())
            + (
                " (allocator tuned: the heap keeps earlier steps' blocks, so these understate; bench/memory.py"
                " measures what a run needs)"
                if cfg.allocator_tuned
                else ""
            )
        )
    split, reference_split = m["split"], m["reference_split"]
    kinds = list(dict.fromkeys([*split, *reference_split]))
    print_table(
        ["operator kind", "share of self time", "reference kernels"],
        [[k, f"{split.get(k, 0.0):.1%}", f"{reference_split.get(k, 0.0):.1%}"] for k in kinds],
        title=f"\nprofile of one batched step (batch {cfg.profile_batch})",
    )


def summary_rows(cfg: Config, device, m: dict, a: dict, peaks) -> list[dict]:
    times, fraction, n = m["times"], a["fraction"], cfg.num_patches
    summary = [
        check(
            "4 train step",
            f"step FLOP bound / step time (batched, N={n})",
            fraction["batched"],
            0.50,
            ">=",
            source="bench",
            note=f"{median(times['batched']):.2f} s/step; top: {next(iter(m['split']))}",
        ),
        check(
            "4 train step",
            f"  same, with torch's attention and dropout (reference, N={n}) (info)",
            fraction["reference"],
            note=f"{median(times['reference']):.2f} s/step",
        ),
        check(
            "4 train step",
            "reference step time / step time (CPU kernels' speed-up)",
            a["kernel_speedup"],
            1.0,
            ">=",
            source="bench",
            fmt="{:.2f}",
        ),
        check(
            "4 train step",
            "per-view time / batched time",
            a["speedup"],
            1.0,
            ">=",
            source="bench",
            note="> 1 means one batched forward pays",
        ),
    ]
    if a["bf16_speedup"] is not None:
        summary.append(
            check(
                "4 train step",
                "  fp32 reference time / bf16 autocast time (info)",
                a["bf16_speedup"],
                fmt="{:.2f}",
                note=f"fraction of the fp32 bound {fraction['batched_bf16']:.1%}",
            )
        )
    if peaks.get("batched") and peaks.get("per_view") and device.type == "cpu":
        batched, per_view = max(peaks["batched"]), max(peaks["per_view"])
        summary.append(
            check(
                "4 train step",
                "  step peak memory, batched / per view (info)",
                batched / per_view,
                fmt="{:.2f}",
                note=f"{batched:,.0f} vs {per_view:,.0f} MB above the step's start",
            )
        )
    return summary


def payload_of(args, cfg: Config, preset, device, m: dict, a: dict, peaks, load_start, summary) -> dict:
    return {
        "config": {
            "embed_dim": args.embed_dim,
            "num_patches": cfg.num_patches,
            "batch": args.batch,
            "views": list(preset.views),
            "mlp_dim": preset.mlp_dim,
            "disc_heads": preset.num_heads,
            "rounds": cfg.rounds,
            "clock": cfg.clock_name,
            "threads": cfg.threads,
            "warmup": cfg.warmup,
            "device": str(device),
            "bf16": args.bf16,
            "matmul": MATMUL,
            "allocator_tuned": cfg.allocator_tuned,
        },
        "loadavg_start": load_start,
        "flops": a["flops"],
        "times_s": m["times"],
        "matmul_flops_per_s_rounds": a["matmul_rates"],
        "fraction_of_matmul": a["fraction"],
        "batched_speedup": a["speedup"],
        "kernel_speedup": a["kernel_speedup"],
        "bf16_speedup": a["bf16_speedup"],
        "profile_split": m["split"],
        "profile_split_reference": m["reference_split"],
        "step_peak_mb": {k: max(v) if v else None for k, v in peaks.items()},
        "profile_batch": cfg.profile_batch,
        "summary": summary,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    cfg = config_of(args)
    torch.set_num_threads(cfg.threads)
    load_start = loadavg()

    from generalad.allocator import tune_for_training
    from generalad.method.presets import preset_for

    cfg = replace(cfg, allocator_tuned=args.device == "cpu" and tune_for_training())  # as training does

    device = torch.device(args.device)
    preset = preset_for("mvtec_ad")  # clean + noise_all + noise_random
    heads = 6
    torch.manual_seed(0)
    tokens = torch.randn(args.batch, cfg.num_patches, args.embed_dim, device=device)
    attn = torch.rand(args.batch, heads, cfg.num_patches, device=device)
    steps = Steps(device, preset, cfg.num_patches, args.embed_dim, args.batch, tokens, attn)
    m = measure(args, cfg, steps)
    a = analyse(args, cfg, preset, m)
    print_report(args, cfg, len(preset.views), device, m, a, steps.peaks, load_start)
    summary = summary_rows(cfg, device, m, a, steps.peaks)
    payload = payload_of(args, cfg, preset, device, m, a, steps.peaks, load_start, summary)
    return finish(NAME, args, payload, started)


if __name__ == "__main__":
    main()
