"""The report-store faults of bench/faults.py: concurrent report writers, and a writer SIGKILLed mid-write.

Each writer process writes runs ``w<writer>-r<i>`` twice (the rerun replaces the first write) with values that
depend on the run, class and attempt, so what is visible afterwards can be checked row by row.
"""

from __future__ import annotations

import os
import signal
import time

from fault_trials import FaultResult, wait_for


def report_child(
    url: str, writer: int, n_runs: int, n_classes: int, go: str | None = None, forever: bool = False
):
    """Write runs `w<writer>-r<i>` (each written twice: the rerun replaces the first write)."""
    from storage.reports import ReportStore

    store = ReportStore(url)
    wait_for(go)
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
    from storage.metric_row import MetricRow
    from storage.score_rows import scores_from_arrays

    metrics = [
        MetricRow(
            run_id=run_id,
            dataset=("mvtec_ad", "visa")[c % 2],
            backbone="vit_small_patch14_dinov2",
            weights="random:0",
            **_ROW_CONFIG,
            class_name=f"c{c}",
            metric="image_auroc",
            value=expected_value(run_id, c, attempt),
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


def expected_value(run_id: str, c: int, attempt: int) -> float:
    return (sum(map(ord, run_id)) % 97 + c) / 1000.0 + attempt / 10.0


def fault_report_writers(bench, writers: int, n_runs: int, n_classes: int) -> FaultResult:
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
        (f"w{w}-r{r}", f"c{c}"): expected_value(f"w{w}-r{r}", c, 1)
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


def fault_report_kill(bench, trials: int, n_classes: int) -> FaultResult:
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
            complete = [sorted(expected_value(run_id, c, a) for c in range(n_classes)) for a in (0, 1)]
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
