"""The flow path of the GPU check (bench/gpu.py calls these; also runnable alone, the decode part on a CPU too).

1. `reproduce-all` on quickstart (smoke with --quick) with ``--device cuda`` and ``--device cpu`` into separate
   stores and reports: image AUROC per class must agree within 0.005 in fp32; wall times of both.
2. Decode and resize against the forward: `storage.extraction` decode-only images/s of generated 1024 x 1024
   PNGs with 1 decode thread and with the default pool, against the ViT-S forward's images/s at 518.
3. The `table1` plan restricted to ViT-L: its counts and estimated wall time on this device
   (`flows.plan_build.plan_suite`, a real calibration at 518).

Usage::

    .venv/bin/python bench/gpu_flow.py --device cuda        # all three
    .venv/bin/python bench/gpu_flow.py --device cpu --decode-only
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, base_parser, check, finish, loadavg, print_table, scratch_dir

NAME = "gpu_flow"
AUROC_TOLERANCE = 0.005


def _reproduce(tmp: Path, suite: str, device: str) -> tuple[dict[str, float], float]:
    """Run `generalad reproduce` in a subprocess; (class -> image AUROC of `last`, seconds)."""
    import pandas as pd

    reports = tmp / f"reports-{device}"
    env = os.environ | {"GENERALAD_HOME": str(tmp / "home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cli = "import sys; from generalad.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", cli, "reproduce", "--suite", suite, "--device", device,
               "--reports", str(reports), "--store", str(tmp / f"stores-{device}"), "--weights", "random"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    from storage.reports import ReportStore

    frame: pd.DataFrame = ReportStore(str(reports)).read_metrics()
    last = frame[(frame["metric"] == "image_auroc") & (frame["selection"] == "last")]
    return dict(zip(last["class_name"], last["value"], strict=True)), seconds


def bench_reproduce(tmp: Path, suite: str) -> dict:
    cuda, cuda_s = _reproduce(tmp, suite, "cuda")
    cpu, cpu_s = _reproduce(tmp, suite, "cpu")
    diffs = {c: abs(cuda[c] - cpu[c]) for c in cpu}
    return {"suite": suite, "cuda": cuda, "cpu": cpu, "max_abs_diff": max(diffs.values()),
            "cuda_seconds": cuda_s, "cpu_seconds": cpu_s}  # fmt: skip


def bench_decode(tmp: Path, device: str, *, n: int = 32) -> dict:
    """Decode+resize images/s (1 thread, the default pool) vs the ViT-S forward's images/s at 518."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from generalad.backbone import BackboneSpec, load_backbone
    from generalad.data import generate_quickstart, get_dataset
    from generalad.data.base import manifest_record
    from storage.extraction import decode_record, default_decode_workers

    root = generate_quickstart(tmp / "big", n_train=n, n_test_good=1, n_test_defect=3, image_size=1024)
    adapter = get_dataset("quickstart", root, category="brick")
    records = [manifest_record(r) for r in adapter.manifest().itertuples(index=False)]
    rates = {}
    for workers in (1, default_decode_workers()):
        with ThreadPoolExecutor(workers) as pool:
            start = time.perf_counter()
            list(pool.map(lambda r: decode_record(adapter, r, 518, True), records))
            rates[workers] = len(records) / (time.perf_counter() - start)
    backbone = load_backbone(BackboneSpec(weights="random", image_size=518, init_values=1.0)).to(device)
    batch = torch.randn(2 if device == "cpu" else 32, 3, 518, 518, device=device)
    with torch.inference_mode():
        backbone(batch[:1])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        backbone(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        forward = len(batch) / (time.perf_counter() - start)
    return {"images": len(records), "decode_1_thread": rates[1], "decode_workers": max(rates),
            "workers": default_decode_workers(), "forward_vit_s_518": forward, "device": device}  # fmt: skip


def bench_plan_vitl(device: str) -> dict:
    from flows.plan_build import plan_suite
    from flows.plan_report import render_plan
    from flows.suites import Suite, get_suite

    table1 = get_suite("table1")
    vitl = Suite(
        "table1-vit-l", "table1, ViT-L only", tuple(e for e in table1.entries if "large" in e.backbone)
    )
    plan = plan_suite(vitl, device=device, store=str(ROOT / "stores"))
    print(render_plan(plan, max_tasks=5))
    return {"totals": plan.totals, "estimate": plan.estimate(), "calibration_s": plan.calibration_seconds}


def run(tmp: Path, device: str, *, quick: bool, decode_only: bool) -> dict:
    out = {"decode": bench_decode(tmp, device)}
    d = out["decode"]
    print(f"\ndecode+resize 1024->518 px: {d['decode_1_thread']:.1f} img/s (1 thread), {d['decode_workers']:.1f} "
          f"img/s ({d['workers']} threads); ViT-S forward at 518 on {device}: {d['forward_vit_s_518']:.1f} img/s")  # fmt: skip
    if decode_only:
        return out
    out["reproduce"] = bench_reproduce(tmp, "smoke" if quick else "quickstart")
    r = out["reproduce"]
    print_table(
        ["class", "AUROC cuda", "AUROC cpu", "|d|"],
        [[c, r["cuda"][c], r["cpu"][c], abs(r["cuda"][c] - r["cpu"][c])] for c in r["cpu"]],
        title=f"\nreproduce-all {r['suite']}: cuda {r['cuda_seconds']:.0f} s, cpu {r['cpu_seconds']:.0f} s",
    )
    out["plan_vit_l"] = bench_plan_vitl(device)
    return out


def summary_rows(out: dict) -> list[dict]:
    d = out["decode"]
    rows = [check("16 GPU", "decode (pool) img/s / ViT-S forward img/s at 518", d["decode_workers"] / d["forward_vit_s_518"],
                  1.0, ">=", fmt="{:.2f}", note=f"{d['workers']} decode threads")]  # fmt: skip
    if "reproduce" in out:
        r = out["reproduce"]
        rows.append(check("16 GPU", f"reproduce {r['suite']} max |AUROC cuda - cpu|", r["max_abs_diff"],
                          AUROC_TOLERANCE, "<=", fmt="{:.4f}",
                          note=f"cuda {r['cuda_seconds']:.0f} s vs cpu {r['cpu_seconds']:.0f} s"))  # fmt: skip
        est = out["plan_vit_l"]["estimate"]["total_s"]
        rows.append(check("16 GPU", "table1 ViT-L --plan estimate (days)", est / 86400, fmt="{:.1f}"))
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--decode-only", action="store_true")
    args = parser.parse_args(argv)
    started, load = time.perf_counter(), loadavg()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: the flow-path GPU check is skipped (use --device cpu --decode-only)")
        return finish(NAME, args, {"skipped": True, "summary": []}, started)
    with scratch_dir("gpu_flow") as tmp:
        out = run(tmp, args.device, quick=args.quick, decode_only=args.decode_only)
    out |= {"loadavg_start": load, "loadavg_end": loadavg(), "summary": summary_rows(out)}
    print(json.dumps(out["summary"], default=str, indent=1)[:2000])
    return finish(NAME, args, out, started)


if __name__ == "__main__":
    main()
