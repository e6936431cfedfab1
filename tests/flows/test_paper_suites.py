"""Every named suite (table1-table5, fig4, quickstart, smoke) through `reproduce-all`, end to end.

Each paper suite runs as defined (its entries, labels, views, sigmas, K values, seeds, shots and dataset
options) with four things shrunk so it takes seconds: the backbones become tiny random-init ViTs of the same
shape (tests/fixtures/tiny_vits.py: 2-3 blocks, 16 patches at 56 / 64 / 32 px), every entry trains 1 epoch on
one normal class, the datasets are tiny generated copies in their real layouts (tests/fixtures/semantic_datasets.py, industrial_datasets.py),
and table3 keeps 2 of its shot counts and 2 of its 5 seeds. K values above N = 16 become N. `smoke` runs
unchanged. The flow must end Completed, and the summary table and the report rows must hold the rows and columns
the paper's layout has; numbers are checked against the rows they summarise.

All suites share the session's Prefect server, one in-process Dask worker and one feature store root (stores of
the same dataset and backbone are extracted once for all suites).
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from flows.suites import FIG4_BACKBONE_NOTE, Suite, SuiteEntry, get_suite
from generalad.apps import paper
from storage.reports import ReportStore
from tests.fixtures import industrial_datasets, semantic_datasets
from tests.fixtures.services import thread_cluster
from tests.fixtures.tiny_vits import TINY_FOR_PAPER, TINY_IMAGE_SIZE, register_tiny_vits

pytestmark = pytest.mark.slow

N_PATCHES = 16
TABLE3_SHOTS = (1, 2)
TABLE3_SEEDS = (0, 10)


def _make_data(root: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Tiny copies of the ten paper datasets: name -> (root, the one normal class / category to run)."""
    from generalad.data import get_dataset

    builders = {
        "cifar10": lambda r: semantic_datasets.make_cifar10_batches(r),
        "cifar100": lambda r: semantic_datasets.make_cifar100_batches(r),
        "fmnist": lambda r: semantic_datasets.make_fmnist(r),
        "view": lambda r: semantic_datasets.make_view(r),
        "aircraft": lambda r: semantic_datasets.make_aircraft(r),
        "cars": lambda r: semantic_datasets.make_cars(r),
        "mvtec_ad": lambda r: industrial_datasets.make_mvtec(r, n_test_good=3, defects={"crack": 3}),
        "mvtec_loco": lambda r: industrial_datasets.make_mvtec_loco(r),
        "visa": lambda r: industrial_datasets.make_visa(r, n_normal=8, n_anomaly=3),
        "mpdd": lambda r: industrial_datasets.make_mpdd(r),
    }
    out = {}
    for name, build in builders.items():
        fx = build(root / name)
        classes = (fx.category,) if fx.category else (get_dataset(name, fx.root).normal_classes()[0],)
        out[name] = (str(fx.root), classes)
    return out


def _tiny_entry(entry: SuiteEntry, classes: tuple[str, ...]) -> SuiteEntry | None:
    """The entry on a tiny stand-in backbone, 1 epoch, one class; None for a K sweep point that N folds away."""
    backbone = TINY_FOR_PAPER[entry.backbone]
    patch = int(re.search(r"patch(\d+)", backbone).group(1))
    changes: dict = {
        "backbone": backbone,
        "image_size": TINY_IMAGE_SIZE[patch],
        "epochs": 1,
        "weights": "random",
    }
    if classes:
        changes["categories"] = classes
    if entry.top_k is not None and entry.top_k >= N_PATCHES:
        if entry.top_k != max(get_suite("fig4").entries, key=lambda e: e.top_k or 0).top_k:
            return None  # K = 100 has no counterpart at N = 16; K = 1369 (= N at 518 px) becomes N
        changes |= {"top_k": N_PATCHES, "label": f"top_k={N_PATCHES} ({FIG4_BACKBONE_NOTE})"}
    if entry.shots != (None,):
        changes |= {"shots": TABLE3_SHOTS, "seeds": TABLE3_SEEDS}
    return dataclasses.replace(entry, **changes)


def _tiny_suite(name: str, data: dict) -> Suite:
    suite = get_suite(name)
    entries = [_tiny_entry(e, data.get(e.dataset, ("", e.categories))[1]) for e in suite.entries]
    return Suite(suite.name, suite.description, tuple(e for e in entries if e is not None))


@pytest.fixture(scope="module")
def suite_env(prefect_api, data_home, tmp_path_factory):
    """Dataset roots in the environment, the tiny ViTs registered, one Dask worker thread for every run."""
    register_tiny_vits()
    data = _make_data(tmp_path_factory.mktemp("paper-data"))
    cluster = thread_cluster()  # no worker process to start and import torch into, per suite
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, (root, _) in data.items():
                patch.setenv(f"GENERALAD_DATA_{name.upper()}", root)
            patch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
            yield {
                "data": data,
                "store": str(tmp_path_factory.mktemp("paper-stores")),
                "tmp": tmp_path_factory,
            }
    finally:
        cluster.close()


_RUNS: dict[str, tuple] = {}


def _run(suite_env, name: str, *, tiny: bool = True):
    """`reproduce-all` of the (tiny) suite `name`, once per module: (state, summary, report frame, reports url)."""
    if name in _RUNS:
        return _RUNS[name]
    from flows import reproduce

    reports = str(suite_env["tmp"].mktemp(f"reports-{name}"))
    suite = _tiny_suite(name, suite_env["data"]) if tiny else get_suite(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            reproduce, "get_suite", lambda requested: suite if requested == name else get_suite(requested)
        )
        state = reproduce.reproduce_all(
            suite=name, reports=reports, store=suite_env["store"], return_state=True
        )
    summary = state.result(raise_on_failure=False)
    frame = ReportStore(reports).read_metrics()
    _RUNS[name] = (state, summary, frame, reports, suite)
    return _RUNS[name]


def _completed(run) -> dict:
    state, summary, *_ = run
    assert state.is_completed(), summary
    assert summary["failures"] == []
    return summary


def _table(text: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table of `text`: its header cells and body rows."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


def _ok(frame, **equal):
    rows = frame[frame["status"] == "ok"]
    for key, value in equal.items():
        rows = rows[rows[key] == value]
    return rows


def _titles(datasets) -> list[str]:
    return [paper.DATASET_TITLES[d] for d in datasets]


# ------------------------------------------------------------------ table1


def test_table1_every_dataset_and_backbone(suite_env):
    summary = _completed(_run(suite_env, "table1"))
    *_, frame, _, suite = _run(suite_env, "table1")
    head, body = _table(summary["table"])
    assert head == ["method", "backbone", "weights", "selection", *_titles(paper.DATASET_TITLES)]
    tiny = sorted(TINY_FOR_PAPER[b] for b in paper.BACKBONES.values())
    assert [(row[0], row[1]) for row in body] == [
        (m, b) for m in ("GeneralAD", "PatchCore-kNN") for b in tiny
    ]
    assert all(row[3] == "last" for row in body)
    assert "WideResNet-50" in summary["table"]  # the kNN rows are labelled
    # each cell is the class mean of its method's rows, in percent; the kNN rows have no paper number
    ok = _ok(frame, metric="image_auroc", selection="last")
    assert set(ok["suite"]) == {"table1"} and set(ok["variant"]) == {""}
    methods = {"GeneralAD": "generalad", "PatchCore-kNN": "patchcore_knn"}
    for row in body:
        of_row = ok[(ok["method"] == methods[row[0]]) & (ok["backbone"] == row[1])]
        for dataset, cell in zip(paper.DATASET_TITLES, row[4:], strict=True):
            value = of_row[of_row["dataset"] == dataset]["value"].mean() * 100
            assert cell.startswith(f"{value:.1f} / ")
            if row[0] == "PatchCore-kNN":
                assert cell.endswith(" / –")


# ------------------------------------------------------------------ table2


def test_table2_pixel_auroc_under_last_and_pixel_selection(suite_env):
    summary = _completed(_run(suite_env, "table2"))
    *_, frame, _, _ = _run(suite_env, "table2")
    head, body = _table(summary["table"])
    assert head[3:] == ["MVTec-AD", "VisA"]
    assert {(row[0], row[2]) for row in body} == {
        (TINY_FOR_PAPER[b], s) for b in paper.BACKBONES.values() for s in ("last", "best_on_test_pixel")
    }
    assert "best_on_test_pixel" in summary["table"] and "Pixel AUROC" in summary["table"]
    pixel = _ok(frame, metric="pixel_auroc")
    assert set(pixel["selection"]) == {"last", "best_on_test", "best_on_test_pixel"}
    # the pixel selection is the best epoch by pixel AUROC: never below `last` of the same class
    keys = ["dataset", "backbone", "class_name"]
    last = pixel[pixel["selection"] == "last"].set_index(keys)["value"]
    chosen = pixel[pixel["selection"] == "best_on_test_pixel"].set_index(keys)["value"]
    assert len(chosen) == 6 and (chosen >= last.loc[chosen.index] - 1e-12).all()


# ------------------------------------------------------------------ table3


def test_table3_mean_and_sample_std_over_seeds(suite_env):
    summary = _completed(_run(suite_env, "table3"))
    *_, frame, _, _ = _run(suite_env, "table3")
    head, body = _table(summary["table"])
    assert head == ["dataset · backbone", *[f"{s}-shot" for s in TABLE3_SHOTS]]
    tiny = sorted(f"MVTec-AD · {TINY_FOR_PAPER[b]}" for b in paper.BACKBONES.values())
    assert [row[0] for row in body] == tiny + [f"{name} · PatchCore-kNN" for name in tiny]
    ok = _ok(frame, metric="image_auroc", selection="last")
    assert set(ok["shots"]) == set(TABLE3_SHOTS) and set(ok["seed"]) == set(TABLE3_SEEDS)
    assert set(ok["method"]) == {"generalad", "patchcore_knn"}
    for row in body:
        backbone = row[0].split(" · ")[1]
        method = "patchcore_knn" if row[0].endswith("PatchCore-kNN") else "generalad"
        for shots, cell in zip(TABLE3_SHOTS, row[1:], strict=True):
            mine = ok[(ok["method"] == method) & (ok["backbone"] == backbone) & (ok["shots"] == shots)]
            values = mine["value"].to_numpy() * 100
            mean = values.mean()
            std = math.sqrt(((values - mean) ** 2).sum() / (len(values) - 1))  # sample std, ddof 1
            assert cell == f"{mean:.1f} ± {std:.1f} / –"  # tiny backbones (and the kNN) have no paper number


# ------------------------------------------------------------------ table4


def test_table4_the_papers_five_backbones(suite_env):
    summary = _completed(_run(suite_env, "table4"))
    *_, frame, _, _ = _run(suite_env, "table4")
    head, body = _table(summary["table"])
    assert head == ["backbone", *_titles(paper.TABLE4_DATASETS)]
    assert [row[0] for row in body] == [f"backbone={label}" for label in paper.TABLE4_BACKBONES]
    for row in body:
        label = row[0].removeprefix("backbone=")
        for dataset, cell in zip(paper.TABLE4_DATASETS, row[1:], strict=True):
            assert cell.endswith(f" / {paper.BACKBONE_ABLATION[label][dataset]:.1f}")
    ok = _ok(frame, metric="image_auroc", selection="last")
    assert set(ok["backbone"]) == {TINY_FOR_PAPER[b] for b in paper.TABLE4_BACKBONES.values()}
    assert set(ok[ok["backbone"] == "tiny_vit_base_patch8_dino_test"]["image_size"]) == {32}


# ------------------------------------------------------------------ table5 (and `generalad report --suite table5`)


def test_table5_a_row_per_distortion_set(suite_env):
    summary = _completed(_run(suite_env, "table5"))
    *_, frame, _, _ = _run(suite_env, "table5")
    head, body = _table(summary["table"])
    assert head == ["distortions", *_titles(paper.TABLE4_DATASETS)]
    expected = list(paper.DISTORTION_ABLATION["cifar10"])  # noise_all, +noise_random, +attention_shuffle
    assert [row[0] for row in body] == [f"views={views}" for views in expected]
    ok = _ok(frame, metric="image_auroc", selection="last")
    assert set(ok["variant"]) == {f"views={v}" for v in expected}
    assert set(ok["backbone"]) == {TINY_FOR_PAPER[paper.DISTORTION_ABLATION_BACKBONE]}  # ViT-L's stand-in
    for row in body:
        views = row[0].removeprefix("views=")
        for dataset, cell in zip(paper.TABLE4_DATASETS, row[1:], strict=True):
            value = ok[(ok["variant"] == row[0]) & (ok["dataset"] == dataset)]["value"].mean() * 100
            assert cell == f"{value:.1f} / {paper.DISTORTION_ABLATION[dataset][views]:.1f}"


def test_report_cli_prints_table5_with_the_papers_numbers(suite_env):
    from generalad.cli import main

    _completed(_run(suite_env, "table5"))
    *_, reports, _ = _run(suite_env, "table5")
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", "--reports", reports, "--suite", "table5"]) == 0
    text = out.getvalue()
    assert "Paper Table 5" in text and "random-init" in text
    head, body = _table(text)
    assert head[0] == "distortions" and len(body) == 3
    cifar = {row[0]: row[1] for row in body}
    assert cifar["views=clean+noise_all"].endswith("/ 99.3")
    assert cifar["views=clean+noise_all+noise_random"].endswith("/ 96.6")
    assert cifar["views=clean+noise_all+noise_random+attention_shuffle"].endswith("/ 93.6")
    assert [row[4].split(" / ")[1] for row in body] == ["84.1", "83.8", "84.9"]


# ------------------------------------------------------------------ fig4


def test_fig4_sweeps_as_tables_and_plots(suite_env, tmp_path):
    from generalad.apps.suite_tables import fig4_plots
    from generalad.cli import main

    summary = _completed(_run(suite_env, "fig4"))
    *_, frame, reports, _ = _run(suite_env, "fig4")
    text = summary["table"]
    assert "backbone assumed" in text.lower() or "an assumption" in text
    sigma_part, k_part = text.split("K (top-K")
    head, body = _table(sigma_part)
    assert head == ["sigma", *_titles(paper.TABLE4_DATASETS)]
    assert [row[0] for row in body] == ["0.01", "0.05", "0.1", "0.25", "0.5", "1"]
    head, body = _table(k_part)
    assert head == ["top_k", *_titles(paper.TABLE4_DATASETS)] and [row[0] for row in body] == [
        "1",
        "10",
        "16",
    ]
    assert all(FIG4_BACKBONE_NOTE in v for v in set(frame["variant"]))  # the assumption is in every row
    assert set(fig4_plots(frame)) == {"sigma", "top_k"}
    with redirect_stdout(io.StringIO()):
        main(["report", "--reports", reports, "--suite", "fig4", "--plot-dir", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "image_auroc_vs_sigma.png",
        "image_auroc_vs_top_k.png",
    ]


# ------------------------------------------------------------------ quickstart and smoke


def test_quickstart_three_categories(suite_env):
    summary = _completed(_run(suite_env, "quickstart"))
    *_, frame, _, _ = _run(suite_env, "quickstart")
    head, body = _table(summary["table"])
    assert head[3:] == ["quickstart"] and len(body) == 1
    assert set(_ok(frame, metric="image_auroc")["class_name"]) == {"brick", "grass", "gravel"}


def test_smoke_as_defined(suite_env):
    summary = _completed(_run(suite_env, "smoke", tiny=False))
    *_, frame, _, _ = _run(suite_env, "smoke", tiny=False)
    head, body = _table(summary["table"])
    assert head[3:] == ["quickstart"] and [row[0] for row in body] == ["vit_small_patch14_dinov2"]
    ok = _ok(frame)
    assert set(ok["suite"]) == {"smoke"} and set(ok["class_name"]) == {"brick"}
    assert {"image_auroc", "pixel_auroc", "aupro"} <= set(ok["metric"])
    # the whole resolved preset is in the rows
    row = ok.iloc[0]
    assert (row["batch_size"], row["weight_decay"], row["mlp_dim"], row["dropout"]) == (16, 1e-5, 2048, 0.1)
    assert row["preset"] == "quickstart" and not row["exclude_fixed_points"]


# ------------------------------------------------------------------ dataset options through a suite entry


def test_dataset_options_reach_the_store_and_rows_through_the_flow(suite_env):
    """A suite entry's `dataset_options` (VisA's reference 80/20 split) reach the adapter through reproduce-all:
    its own store (another key than the official split's) and `split_protocol` in every row."""
    from flows import reproduce

    root, (category,) = suite_env["data"]["visa"]
    entry = SuiteEntry(dataset="visa", categories=(category,), backbone="tiny_vit_base_patch14_dinov2_test",
                       image_size=56, epochs=1, weights="random", dataset_options={"split": "listing_80_20"},
                       label="split=listing_80_20")  # fmt: skip
    suite = Suite("visa-listing", "VisA on the reference's 80/20 listing split", (entry,))
    reports = str(suite_env["tmp"].mktemp("reports-visa-listing"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reproduce, "get_suite", lambda name: suite)
        summary = reproduce.reproduce_all(suite="visa-listing", reports=reports, store=suite_env["store"])
    [built] = summary["extractions"]
    from generalad.backbone import BackboneSpec
    from generalad.data import get_dataset
    from storage.extraction import plan_store

    spec = BackboneSpec(name=entry.backbone, weights="random", image_size=56)
    official, _ = plan_store(get_dataset("visa", root, category), spec, suite_env["store"])
    listing, _ = plan_store(
        get_dataset("visa", root, category, split="listing_80_20"), spec, suite_env["store"]
    )
    assert built["url"] == listing != official  # the option is part of the store key
    frame = ReportStore(reports).read_metrics()
    assert set(frame["split_protocol"]) == {"visa_listing_80_20[split=listing_80_20]"}
    assert set(frame["variant"]) == {"split=listing_80_20"} and set(frame["status"]) == {"ok"}
