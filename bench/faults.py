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

Prints a table and writes ``bench/results/faults.json``. Exit status 1 when any trial did not survive.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

RESULTS = Path(__file__).resolve().parent / "results" / "faults.json"
IMAGE_SIZE = 112
SHARD_SIZE = 4
BATCH_SIZE = 2
CATEGORY = "brick"
PRELOAD = ["numpy", "torch", "timm", "zarr", "pyarrow.parquet", "storage.extraction", "storage.reports"]
FAULT_POINTS = ("before-arrays", "mid-shard", "mid-marker", "before-consolidate", "mid-complete")


# --------------------------------------------------------------------------------------------- child processes
def _spec():
    from generalad.backbone import BackboneSpec

    return BackboneSpec(weights="random", seed=0, image_size=IMAGE_SIZE)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _noop() -> None:
    """A process that does nothing (starts the fork server)."""


def _wait_for(go: str | None) -> None:
    """Start together: wait until the parent creates the file `go` (no-op when None)."""
    deadline = time.monotonic() + 120
    while go is not None and not os.path.exists(go):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no start signal {go}")
        time.sleep(0.002)


def _install_fault(point: str, shard: int) -> None:
    """Make this process SIGKILL itself at `point` (for shard points: at shard `shard`)."""
    import numpy as np
    import zarr

    from storage import feature_store, urls

    if point == "before-arrays":
        feature_store.StoreWriter._ensure_arrays = lambda self, group: _die()
    elif point == "mid-shard":
        real = feature_store.StoreWriter.write_shard

        def write_shard(self, index, tokens, cls_attn, masks=None):
            if index != shard:
                return real(self, index, tokens, cls_attn, masks)
            start, stop = self.layout.shard_rows(index)
            self._group["tokens"][start:stop] = tokens.astype(np.dtype(self.layout.dtype))
            _die()  # tokens written, cls_attn and masks not, no marker

        feature_store.StoreWriter.write_shard = write_shard
    elif point in ("mid-marker", "mid-complete"):
        real_write = urls.write_bytes_atomic
        target = f"{feature_store.SHARDS_DIR}/{shard:05d}.json" if point == "mid-marker" else "COMPLETE.json"

        def write_bytes_atomic(url, data):
            if not url.endswith(target):
                return real_write(url, data)
            tmp = Path(f"{url}.tmp-{'0' * 32}")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)  # the temporary file, fully written
            _die()  # ...and killed before the rename

        urls.write_bytes_atomic = write_bytes_atomic
    elif point == "before-consolidate":
        zarr.consolidate_metadata = lambda *args, **kwargs: _die()
    else:
        raise ValueError(f"unknown fault point {point!r}")


def extract_child(
    data_root: str, store_root: str, out: str, fault: str | None = None, shard: int = 0, go: str | None = None
):
    """One extraction (what `generalad extract` runs), its result written to `out` as JSON."""
    import torch
    from tqdm.auto import tqdm

    from generalad.data import get_dataset
    from storage.extraction import extract_features

    torch.set_num_threads(1)
    # tqdm's default lock is a multiprocessing semaphore, which a SIGKILLed process leaves behind: use a thread lock
    tqdm.set_lock(threading.RLock())
    if fault:
        _install_fault(fault, shard)
    adapter = get_dataset("quickstart", data_root, CATEGORY)
    _wait_for(go)
    started = time.time()
    result = extract_features(
        adapter, _spec(), store_root, shard_size=SHARD_SIZE, batch_size=BATCH_SIZE, progress=False
    )
    payload = asdict(result) | {"wall": time.time() - started}
    Path(out).write_text(json.dumps(payload))


def report_child(
    url: str, writer: int, n_runs: int, n_classes: int, go: str | None = None, forever: bool = False
):
    """Write runs `w<writer>-r<i>` (each written twice: the rerun replaces the first write)."""
    from storage.reports import ReportStore

    store = ReportStore(url)
    _wait_for(go)
    i = 0
    while forever or i < n_runs:
        run_id = f"w{writer}-r{i % n_runs}"
        for attempt in range(2):
            metrics, scores = _report_rows(run_id, n_classes, attempt)
            store.write_run(run_id, metrics, scores)
        i += 1


# every configuration column a MetricRow needs (the schema has no defaults): the synthetic rows of this bench
_ROW_CONFIG = {
    "image_size": 518, "layers": "-1", "preset": "mvtec_ad", "views": "clean+noise_all", "epochs": 1,
    "lr": 5e-4, "top_k": 10, "sigma": 0.25, "batch_size": 16, "weight_decay": 1e-5, "lr_min_factor": 0.2,
    "epoch_subset": None, "exclude_fixed_points": False, "disc_blocks": 1, "disc_heads": 4, "mlp_dim": 2048,
    "dropout": 0.1, "seed": 0, "feature_dtype": "float16", "split_protocol": "official",
}  # fmt: skip


def _report_rows(run_id: str, n_classes: int, attempt: int):
    """Metric rows in two partitions and one score table; values depend on the run, class and attempt."""
    from storage.report_schema import MetricRow, scores_from_arrays

    metrics = [
        MetricRow(
            run_id=run_id,
            dataset=("mvtec_ad", "visa")[c % 2],
            backbone="vit_small_patch14_dinov2",
            weights="random:0",
            **_ROW_CONFIG,
            class_name=f"c{c}",
            metric="image_auroc",
            value=_expected_value(run_id, c, attempt),
        )
        for c in range(n_classes)
    ]
    scores = scores_from_arrays(
        run_id=run_id,
        dataset="visa",
        backbone="vit_small_patch14_dinov2",
        class_name="c1",
        image_ids=["a", "b", "c"],
        scores=[0.1, 0.2, 0.3],
        labels=[0, 1, 1],
    )
    return metrics, scores


def _expected_value(run_id: str, c: int, attempt: int) -> float:
    return (sum(map(ord, run_id)) % 97 + c) / 1000.0 + attempt / 10.0


# --------------------------------------------------------------------------------------------- parent side
@dataclass
class FaultResult:
    """One row of the table."""

    fault: str
    trials: int = 0
    survived: int = 0
    values_lost: int = 0
    recomputed_done_shards: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


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
        warm = self.start(_noop)
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
    out["splits"] = store._splits().to_json()
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


def fault_report_writers(bench: Bench, writers: int, n_runs: int, n_classes: int) -> FaultResult:
    from storage.reports import ReportStore

    row = FaultResult(f"concurrent report writers ({writers} processes)")
    started = time.perf_counter()
    url = str(bench.path("reports"))
    go = bench.path("go")
    procs = [bench.start(report_child, url, w, n_runs, n_classes, str(go)) for w in range(writers)]
    time.sleep(0.5)
    go.touch()
    for proc in procs:
        proc.join(timeout=600)
    row.trials = writers * n_runs
    frame = ReportStore(url).read_metrics()
    expected = {
        (f"w{w}-r{r}", f"c{c}"): _expected_value(f"w{w}-r{r}", c, 1)
        for w in range(writers)
        for r in range(n_runs)
        for c in range(n_classes)
    }
    got = {
        (run, cls): value
        for run, cls, value in frame[["run_id", "class_name", "value"]].itertuples(index=False)
    }
    lost = sum(1 for key, value in expected.items() if got.get(key) != value)
    lost += len(frame) - len(got) + len(set(got) - set(expected))  # duplicated or foreign rows
    lost += abs(len(ReportStore(url).read_scores()) - writers * n_runs * 3)
    row.values_lost = lost
    row.survived = row.trials if lost == 0 and all(p.exitcode == 0 for p in procs) else 0
    if row.survived != row.trials:
        row.notes.append(f"exits {[p.exitcode for p in procs]}, {lost} rows lost")
    row.seconds = time.perf_counter() - started
    return row


def fault_report_kill(bench: Bench, trials: int, n_classes: int) -> FaultResult:
    from storage.reports import ReportStore

    row = FaultResult("SIGKILL report writer")
    started = time.perf_counter()
    for trial in range(trials):
        url = str(bench.path("reports-kill"))
        proc = bench.start(report_child, url, 0, 3, n_classes, None, True)
        time.sleep(bench.rng.uniform(0.3, 2.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        row.trials += 1
        store = ReportStore(url)
        frame = store.read_metrics()
        bad = 0
        for run_id, part in frame.groupby("run_id"):
            values = sorted(part["value"])
            complete = [sorted(_expected_value(run_id, c, a) for c in range(n_classes)) for a in (0, 1)]
            if values not in complete:  # partial, duplicated or mixed attempts
                bad += abs(len(values) - n_classes) or len(values)
        row.values_lost += bad
        if bad == 0:
            row.survived += 1
        else:
            row.notes.append(f"trial {trial}: {bad} rows of incomplete runs visible")
        store.remove_temporaries()
    row.seconds = time.perf_counter() - started
    return row


def print_table(rows: list[FaultResult]) -> None:
    header = (
        f"{'fault':<40} {'trials':>6} {'survived':>8} {'values lost':>11} {'done shards redone':>18} {'s':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        redone = str(r.recomputed_done_shards) if "extraction" in r.fault else "-"
        print(
            f"{r.fault:<40} {r.trials:>6} {r.survived:>8} {r.values_lost:>11} {redone:>18} {r.seconds:>6.1f}"
        )
    for r in rows:
        for note in r.notes:
            print(f"  {r.fault}: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="random-time SIGKILL trials (>= 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times and fault shards")
    parser.add_argument("--quick", action="store_true", help="fewer trials of each fault (a smoke run)")
    args = parser.parse_args(argv)
    trials = 3 if args.quick else args.trials
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="generalad-faults-") as tmp:
        bench = Bench(Path(tmp), args.seed)
        bench.make_reference()
        n_images = len(bench.reference["tokens"])
        rows = [
            fault_random_kills(bench, trials),
            fault_points(bench, -(-n_images // SHARD_SIZE)),
            fault_concurrent_extraction(bench, 2 if args.quick else 3, kill=False),
            fault_concurrent_extraction(bench, 2 if args.quick else 4, kill=True),
            fault_report_writers(bench, 3, 4, 6),
            fault_report_kill(bench, 3 if args.quick else 6, 6),
        ]
    total = time.perf_counter() - started
    print_table(rows)
    print(
        f"\n{n_images} images, {IMAGE_SIZE} px, shards of {SHARD_SIZE}; reference extraction {bench.ref_wall:.2f} s; "
        f"total {total:.0f} s"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "seed": args.seed,
                "images": n_images,
                "image_size": IMAGE_SIZE,
                "shard_size": SHARD_SIZE,
                "seconds": total,
                "faults": [asdict(r) for r in rows],
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")
    return 0 if all(r.survived == r.trials and r.values_lost == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
