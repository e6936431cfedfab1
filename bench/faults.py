"""Fault injection: the feature store and the report store under SIGKILL and concurrent writers.

Every fault runs real processes (forked from a fork server that imported torch, timm and the project once, so a
trial costs no import time) against a tiny generated dataset (the synthetic quickstart, category brick) and a tiny
random-init ViT-S at 112 px with 4-image shards, and compares the outcome with an uninterrupted reference run:

- ``SIGKILL extraction, random time``: the extraction is killed at a seeded random moment (while the backbone
  loads, mid-shard, between shards, while verifying; the table's notes say where the kills landed), then rerun. The final store
  must hold exactly the reference values (every element of tokens, cls_attn, masks; the manifest and splits), and
  the rerun must not recompute a shard whose marker was written before the kill (its images_extracted must equal
  the images of the missing shards, and the markers and shard files of done shards keep their mtimes).
- ``SIGKILL extraction, fault point``: the same, with the process killing itself at a chosen point: after the group
  but before the arrays, halfway through a shard's arrays, between a marker's temporary file and its rename, after
  verification but before consolidation, and between COMPLETE.json's temporary file and its rename.
- ``concurrent extraction``: two processes extract the same store key at once: both succeed, exactly one does the
  backbone work, the other waits on the writer lock and reuses the complete store.
- ``concurrent extraction + SIGKILL``: the same, with one of the two killed at a random moment: the survivor
  finishes the store (resuming the killed one's shards if it held the lock).
- ``concurrent report writers``: processes write runs (each rerun once) into the same partitions at once; every
  row must be there with its exact value, once.
- ``SIGKILL report writer``: a writer is killed at a random moment while writing and rewriting runs; every run
  id that is visible afterwards must be complete (no missing, duplicated or foreign rows).

"values lost" counts elements (features) or rows that differ from, or are missing against, what an uninterrupted
run gives; it must be 0. Usage::

    .venv/bin/python bench/faults.py [--trials 12] [--seed 0] [--quick]

The fault points are `storage.faultpoints`' named points of the write path (a hook there kills the process); the
children are in bench/fault_trials.py and bench/fault_reports.py. Prints a table and writes
``bench/results/faults.json``. Exit status 1 when any trial did not survive.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from common import base_parser, finish, loadavg, offline_environment, print_table
from fault_reports import fault_report_kill, fault_report_writers
from fault_trials import FAULT_POINTS, IMAGE_SIZE, SHARD_SIZE, FaultResult, extract_child, noop

offline_environment()

NAME = "faults"
PRELOAD = ["numpy", "torch", "timm", "zarr", "pyarrow.parquet", "storage.extraction", "storage.reports"]
PRELOAD += ["fault_trials", "fault_reports"]


class Bench:
    """The work folder, the process context and the reference store."""

    def __init__(self, work: Path, seed: int) -> None:
        from generalad.data import generate_quickstart

        self.work = work
        self.rng = random.Random(seed)
        self.data = str(
            generate_quickstart(work / "data", n_train=12, n_test_good=4, n_test_defect=6, image_size=64)
        )
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.n = 0
        self.reference: dict | None = None
        self.ref_wall = 0.0

    def path(self, name: str) -> Path:
        self.n += 1
        return self.work / f"{self.n:03d}-{name}"

    def start(self, target, *args, **kwargs) -> multiprocessing.Process:
        proc = self.ctx.Process(target=target, args=args, kwargs=kwargs, daemon=True)
        proc.start()
        return proc

    def extract(self, store: Path, name: str, **kwargs) -> tuple[int, dict | None]:
        """Run one extraction process to its end: (exit code, its result)."""
        out = self.path(name).with_suffix(".json")
        proc = self.start(extract_child, self.data, str(store), str(out), **kwargs)
        proc.join(timeout=600)
        return proc.exitcode, json.loads(out.read_text()) if out.exists() else None

    def make_reference(self) -> None:
        """The uninterrupted run; its wall time (process start to exit, as the parent sees it) scales the kills.

        The fork server starts (and imports the preloaded modules) with the first process: a no-op comes first,
        so that start-up is not counted."""
        warm = self.start(noop)
        warm.join(timeout=600)
        started = time.perf_counter()
        code, result = self.extract(self.path("reference"), "reference")
        if code != 0 or result is None:
            raise SystemExit(f"the reference extraction failed (exit {code})")
        self.ref_wall = time.perf_counter() - started
        self.reference = read_store(result["url"])

    # ------------------------------------------------------------------ checks
    def lost_values(self, url: str | None) -> tuple[int, str | None]:
        """Elements or rows that differ from the reference (everything, when the store cannot be opened)."""
        import numpy as np

        assert self.reference is not None
        total = sum(v.size for k, v in self.reference.items() if isinstance(v, np.ndarray))
        if url is None:
            return total, "no store"
        try:
            got = read_store(url)
        except Exception as exc:  # noqa: BLE001 - a store that cannot be read lost everything
            return total, f"{type(exc).__name__}: {exc}"
        lost = 0
        for name, expected in self.reference.items():
            value = got.get(name)
            if isinstance(expected, np.ndarray):
                if value is None or value.shape != expected.shape:
                    lost += expected.size
                else:
                    lost += int((value != expected).sum())
            elif value != expected:
                lost += 1
        return lost, None


def read_store(url: str) -> dict:
    """Every value of a complete store, through the project's reader (refuses incomplete stores)."""
    import numpy as np
    import zarr

    from storage import urls
    from storage.feature_store import FeatureStore

    store = FeatureStore(url)
    group = zarr.open_group(urls.zarr_store(url, read_only=True), mode="r")
    out = {name: np.asarray(group[name][:]) for name in ("tokens", "cls_attn", "masks")}
    out["manifest"] = store.manifest.astype(str).to_json()
    splits = {c: store.split(c) for c in store.normal_classes}
    out["splits"] = json.dumps(
        {c: [s.train_rows.tolist(), s.test_rows.tolist(), s.test_labels.tolist()] for c, s in splits.items()}
    )
    return out


def shard_state(store_root: Path) -> dict[int, int]:
    """shard -> mtime_ns of its marker, and the shard files' newest mtime, for every shard with a marker."""
    state: dict[int, int] = {}
    for marker in store_root.rglob("_shards/*.json"):
        shard = int(marker.stem)
        zarr_dir = marker.parent.parent
        files = [
            marker,
            *(zarr_dir / a / "c" / str(shard) / "0" / "0" for a in ("tokens", "cls_attn", "masks")),
        ]
        state[shard] = max(f.stat().st_mtime_ns for f in files if f.exists())
    return state


def images_of(shards: set[int], n_images: int) -> int:
    return sum(min(SHARD_SIZE, n_images - s * SHARD_SIZE) for s in shards)


def resume_check(bench: Bench, store: Path, row: FaultResult, label: str) -> None:
    """After a kill: rerun, then check values, and that no shard done before the kill was recomputed."""
    before = shard_state(store)
    code, result = bench.extract(store, f"rerun-{label}")
    row.trials += 1
    if code != 0 or result is None:
        row.values_lost += bench.lost_values(None)[0]
        row.notes.append(f"{label}: rerun exited {code}")
        return
    lost, error = bench.lost_values(result["url"])
    after = shard_state(store)
    n_images = result["num_images"]
    n_shards = -(-n_images // SHARD_SIZE)
    expected_work = images_of(set(range(n_shards)) - set(before), n_images)
    touched = [s for s, mtime in before.items() if after.get(s) != mtime]
    row.values_lost += lost
    row.recomputed_done_shards += len(touched)
    ok = lost == 0 and not touched and result["images_extracted"] == expected_work
    if ok:
        row.survived += 1
    else:
        row.notes.append(
            f"{label}: lost {lost} ({error}), shards done before the kill rewritten {touched}, "
            f"rerun extracted {result['images_extracted']} images, expected {expected_work}"
        )


def fault_random_kills(bench: Bench, trials: int) -> FaultResult:
    row = FaultResult("SIGKILL extraction, random time")
    started = time.perf_counter()
    spans = []
    for trial in range(trials):
        store = bench.path("kill")
        delay = bench.rng.uniform(0.3, 1.1) * bench.ref_wall  # the first ~30 % is start-up and backbone load
        out = bench.path("killed").with_suffix(".json")
        proc = bench.start(extract_child, bench.data, str(store), str(out))
        proc.join(timeout=delay)
        finished = not proc.is_alive()
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
        spans.append(_landed(store, finished))
        resume_check(bench, store, row, f"trial {trial} (kill at {delay:.2f} s)")
    row.seconds = time.perf_counter() - started
    counts = {where: spans.count(where) for where in dict.fromkeys(sorted(spans))}
    row.notes.insert(0, "kills landed: " + ", ".join(f"{where} x{n}" for where, n in counts.items()))
    return row


def _landed(store: Path, finished: bool) -> str:
    """Where a kill landed, from what the store holds afterwards."""
    if finished:
        return "after the end"
    if any(store.rglob("COMPLETE.json")):
        return "after COMPLETE"
    done = len(shard_state(store))
    if not done:
        return "before any marker"
    return f"after {done} markers"


def fault_points(bench: Bench, n_shards: int) -> FaultResult:
    row = FaultResult("SIGKILL extraction, fault point")
    started = time.perf_counter()
    for point in FAULT_POINTS:
        shard = bench.rng.randrange(n_shards)
        store = bench.path(point)
        code, _ = bench.extract(store, point, fault=point, shard=shard)
        if code != -signal.SIGKILL:
            row.notes.append(f"{point}: the fault did not fire (exit {code})")
        resume_check(bench, store, row, f"{point}@shard{shard}")
    row.seconds = time.perf_counter() - started
    return row


def fault_concurrent_extraction(bench: Bench, trials: int, kill: bool) -> FaultResult:
    row = FaultResult("concurrent extraction" + (" + SIGKILL of one" if kill else ""))
    started = time.perf_counter()
    for trial in range(trials):
        store = bench.path("concurrent")
        go = bench.path("go")
        outs = [bench.path(f"writer{i}").with_suffix(".json") for i in range(2)]
        procs = [bench.start(extract_child, bench.data, str(store), str(o), go=str(go)) for o in outs]
        time.sleep(0.5)  # both are forked and waiting
        go.touch()
        victim = None
        if kill:
            victim = bench.rng.randrange(2)
            time.sleep(bench.rng.uniform(0.2, 1.0) * bench.ref_wall)
            if procs[victim].is_alive():
                os.kill(procs[victim].pid, signal.SIGKILL)
        for proc in procs:
            proc.join(timeout=600)
        row.trials += 1
        results = [json.loads(o.read_text()) if o.exists() else None for o in outs]
        survivors = [i for i in range(2) if i != victim]
        failed = [i for i in survivors if procs[i].exitcode != 0 or results[i] is None]
        url = next((r["url"] for r in results if r is not None), None)
        lost, error = bench.lost_values(url)
        row.values_lost += lost
        work = [r["images_extracted"] for r in results if r is not None]
        n_images = next((r["num_images"] for r in results if r is not None), 0)
        one_did_the_work = kill or sorted(work) == [0, n_images]
        if not failed and lost == 0 and one_did_the_work:
            row.survived += 1
        else:
            row.notes.append(
                f"trial {trial}: exits {[p.exitcode for p in procs]}, work {work}, lost {lost} ({error})"
            )
    row.seconds = time.perf_counter() - started
    return row


def print_rows(rows: list[FaultResult]) -> None:
    table = [
        [
            r.fault,
            r.trials,
            r.survived,
            r.values_lost,
            str(r.recomputed_done_shards) if "extraction" in r.fault else "-",
            f"{r.seconds:.1f}",
        ]
        for r in rows
    ]
    print_table(["fault", "trials", "survived", "values lost", "done shards redone", "s"], table)
    for r in rows:
        for note in r.notes:
            print(f"  {r.fault}: {note}")


def parse_args(argv: list[str] | None):
    parser = base_parser(__doc__, threads=False, quick_help="fewer trials of each fault (a smoke run)")
    parser.add_argument("--trials", type=int, default=12, help="random-time SIGKILL trials (>= 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times and fault shards")
    return parser.parse_args(argv)


def run_faults(bench: Bench, args) -> list[FaultResult]:
    """Every fault, after the reference run; the quick mode runs fewer trials of each."""
    n_images = len(bench.reference["tokens"])
    return [
        fault_random_kills(bench, 3 if args.quick else args.trials),
        fault_points(bench, -(-n_images // SHARD_SIZE)),
        fault_concurrent_extraction(bench, 2 if args.quick else 3, kill=False),
        fault_concurrent_extraction(bench, 2 if args.quick else 4, kill=True),
        fault_report_writers(bench, 3, 4, 6),
        fault_report_kill(bench, 3 if args.quick else 6, 6),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_start = time.perf_counter(), loadavg()
    with tempfile.TemporaryDirectory(prefix="generalad-faults-") as tmp:
        bench = Bench(Path(tmp), args.seed)
        bench.make_reference()
        n_images = len(bench.reference["tokens"])
        rows = run_faults(bench, args)
    total = time.perf_counter() - started
    print_rows(rows)
    print(
        f"\n{n_images} images, {IMAGE_SIZE} px, shards of {SHARD_SIZE}; reference extraction {bench.ref_wall:.2f} s; "
        f"total {total:.0f} s"
    )
    payload = {
        "seed": args.seed,
        "images": n_images,
        "image_size": IMAGE_SIZE,
        "shard_size": SHARD_SIZE,
        "seconds": total,
        "loadavg_start": load_start,
        "faults": [asdict(r) for r in rows],
    }
    finish(NAME, args, payload, started)
    return 0 if all(r.survived == r.trials and r.values_lost == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
