"""Run every benchmark and print one summary table: question, measured ratio, target, holds?

    make bench-quick    .venv/bin/python bench/run_all.py --quick   (about 2 minutes on 2 idle cores)
    make bench          .venv/bin/python bench/run_all.py           (about 15 minutes on 2 idle cores)

The benchmarks run one after the other in this process (one `import torch` instead of seven; the memory and
Dask benchmarks start their own child processes). Each prints its own table and writes
``bench/results/<name>.json``; this script adds ``bench/results/summary.json`` with every summary row, the wall
time of each benchmark and the load average sampled every 2 s while it ran. A benchmark that fails is reported
and the others still run; the exit code is then 1. A target that does not hold is a finding, not a failure.

| script | question |
|---|---|
| extraction.py | 1 extraction efficiency, decode share, attention-capture overhead; 2 backbone utilisation |
| suite_payoff.py | 3 the cache's payoff on a mini-suite (executed, and extrapolated to real proportions) |
| train_step.py | 4 discriminator step vs the FLOP bound; batched vs per-view forward |
| store_io.py | 5 store write/read MB/s vs plain file I/O; bytes per image |
| memory.py | 6 peak RSS on a store of 1x vs 8x the images |
| dask_classes.py | 7 per-class throughput with 1 and 2 Dask workers |
| gpu.py | 8 GPU: extraction in fp32/fp16/bf16, discriminator training, end-to-end inference (skips without CUDA) |

``--with-prefect`` also runs ``bench/parallel_classes.py`` (question 7 through the Prefect flows; written and
owned separately) in a child process and adds its speed-ups to the summary.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # the benchmarks import each other by module name

from common import (  # noqa: E402
    RESULTS_DIR,
    ROOT,
    LoadSampler,
    check,
    cpu_model,
    loadavg,
    machine,
    print_table,
    write_json,
)

SCRIPTS = ("extraction", "suite_payoff", "train_step", "store_io", "memory", "dask_classes", "gpu")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children (memory, Dask workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_prefect_bench() -> dict:
    """Run bench/parallel_classes.py (another engineer's; it starts a local Prefect server) in a child process
    and turn its 2-vs-1-worker speed-ups into summary rows."""
    import subprocess

    script = BENCH / "parallel_classes.py"
    if not script.exists():
        return {"ok": False, "error": f"{script.name} is absent", "summary": []}
    done = subprocess.run([sys.executable, str(script)], check=False)
    out = RESULTS_DIR / "parallel_classes.json"
    if done.returncode != 0 or not out.exists():
        return {"ok": False, "error": f"{script.name} exited with {done.returncode}", "summary": []}
    speedups = json.loads(out.read_text()).get("speedup_2_vs_1", {})
    rows = [
        check(
            "7 parallel classes",
            f"  Prefect train-classes subflow, {mode} cluster: 2 / 1 workers (info)",
            value,
            fmt="{:.2f}",
            note="bench/parallel_classes.py",
        )
        for mode, value in speedups.items()
    ]
    return {"ok": True, "summary": rows}


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=None, help="run only these benchmarks")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, cores))")
    parser.add_argument(
        "--with-prefect",
        action="store_true",
        help="also run bench/parallel_classes.py (per-class training through the Prefect flows; minutes)",
    )
    return parser.parse_args(argv)


def run_one(name: str, sampler: LoadSampler, run) -> dict:
    """`run()`'s entry (ok, summary rows, or the error), with its wall and CPU seconds and the load meanwhile."""
    mark = sampler.mark()
    begin, cpu_begin = time.perf_counter(), _cpu_seconds()
    try:
        entry = run()
    except Exception as exc:  # noqa: BLE001 - one failing benchmark must not hide the others
        traceback.print_exc()
        entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "summary": []}
    entry |= {
        "seconds": time.perf_counter() - begin,
        "cpu_seconds": _cpu_seconds() - cpu_begin,
        "load": sampler.stats(mark),
    }
    gc.collect()
    return entry


def run_benchmarks(names, args, sampler: LoadSampler) -> dict[str, dict]:
    """Each benchmark's `main` in this process, one after the other; then the Prefect one, if asked for."""
    mode = "quick" if args.quick else "full"
    extra = (["--quick"] if args.quick else []) + (["--threads", str(args.threads)] if args.threads else [])
    results: dict[str, dict] = {}

    def in_process(name: str):
        def run() -> dict:
            result = importlib.import_module(name).main(extra)
            return {"ok": True, "summary": result.get("summary", [])}

        return run

    for i, name in enumerate(names, 1):
        bar = "=" * 30
        print(f"\n{bar} [{i}/{len(names)}] {name} ({mode}), load {loadavg()} {bar}", flush=True)
        results[name] = run_one(name, sampler, in_process(name))
    if args.with_prefect:
        print(f"\n{'=' * 30} parallel_classes (Prefect flows), load {loadavg()} {'=' * 30}", flush=True)
        results["parallel_classes"] = run_one("parallel_classes", sampler, run_prefect_bench)
    return results


def print_summary(results: dict[str, dict], mode: str, load: dict, total: float) -> None:
    rows = [row for entry in results.values() for row in entry["summary"]]
    print(f"\n{'=' * 30} summary ({mode}) {'=' * 30}")
    print_table(
        ["question", "metric", "measured", "target", "holds?", "note"],
        [
            [
                r["question"],
                r["metric"],
                r["shown"],
                (r["target"] + (" *" if r.get("target_source") == "bench" else "")) if r["target"] else "—",
                {True: "yes", False: "NO", None: "n/a"}[r["holds"]],
                r.get("note", ""),
            ]
            for r in rows
        ],
    )
    for name, entry in results.items():
        if not entry["ok"]:
            print(f"FAILED: {name}: {entry['error']}")
    print("* target set by the benchmark (the issue gives none); targets without * come from the issue")
    print_times = ", ".join(
        f"{n} {e['seconds']:.0f} s / {e['cpu_seconds']:.0f} CPU s (load {e['load']['median']:.1f})"
        for n, e in results.items()
    )
    cpu = sum(e["cpu_seconds"] for e in results.values())
    print(
        f"wall {total:.0f} s, {cpu:.0f} CPU s ({cpu / (os.cpu_count() or 1):.0f} s if every core were ours): "
        f"{print_times}"
    )
    print(
        f"load average (1 min) during the run: min {load['min']:.2f}, median {load['median']:.2f}, "
        f"max {load['max']:.2f} on {os.cpu_count()} cores"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    names = args.only or SCRIPTS
    started = time.perf_counter()
    print(
        f"GeneralAD benchmarks ({mode}): {', '.join(names)}; cpu {cpu_model()}, {os.cpu_count()} cores; "
        f"load {loadavg()}"
    )
    with LoadSampler() as sampler:
        results = run_benchmarks(names, args, sampler)
        load = sampler.stats()
    total = time.perf_counter() - started
    print_summary(results, mode, load, total)
    summary = {
        "mode": mode,
        "seconds": total,
        "cpu_seconds": sum(e["cpu_seconds"] for e in results.values()),
        "loadavg_during": load,
        "machine": machine(),
        "benchmarks": results,
        "rows": [row for entry in results.values() for row in entry["summary"]],
    }
    out = write_json(RESULTS_DIR / "summary.json", summary)
    print(f"wrote {out.relative_to(ROOT)}")
    return 1 if any(not e["ok"] for e in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
