"""Tables with both methods: a row per method, the kNN rows labelled and without a paper number."""

from __future__ import annotations

import pandas as pd

from generalad.apps.report_tables import cell_means, render_table
from tests.generalad.apps.test_paper_tables import frame, row


def _both() -> pd.DataFrame:
    rows = []
    for name, value in {"bottle": 0.99, "cable": 0.95}.items():
        rows.append(row("mvtec_ad", name, value, selection="best_on_test") | {"method": "generalad"})
        knn = row("mvtec_ad", name, value - 0.2, selection="best_on_test", config_hash=f"k-{name}")
        rows.append(knn | {"method": "patchcore_knn"})
    return frame(rows)


def test_each_method_has_its_own_cell_and_only_generalad_a_paper_number() -> None:
    cells = cell_means(_both(), selection="best_on_test").set_index("method")
    assert abs(cells.loc["generalad", "ours"] - 97.0) < 1e-9
    assert abs(cells.loc["patchcore_knn", "ours"] - 77.0) < 1e-9
    assert cells.loc["generalad", "paper"] > 0 and pd.isna(cells.loc["patchcore_knn", "paper"])


def test_markdown_labels_the_methods_and_says_where_the_paper_numbers_are_missing() -> None:
    text = render_table(_both(), selection="best_on_test", with_paper=True)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| method | backbone")
    general = next(line for line in lines if line.startswith("| GeneralAD"))
    knn = next(line for line in lines if line.startswith("| PatchCore-kNN"))
    assert "97.0 / " in general and "77.0 / –" in knn
    assert "WideResNet" in text and "GeneralAD only" in text


def test_a_generalad_only_table_has_no_method_column() -> None:
    only = _both()
    only = only[only["method"] == "generalad"].drop(columns="method")  # an old frame without the column
    assert "| method" not in render_table(only, selection="best_on_test")
