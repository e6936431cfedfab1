"""The success path of `generalad reproduce` and `generalad report`, in-process as a user runs them.

`reproduce --suite smoke` against the session's Prefect server (the CLI honours PREFECT_API_URL), then
`report --format csv` on the report store it wrote: the table's cell must be the mean of the rows' values.
"""

from __future__ import annotations

import io

import pandas as pd
import pytest

from generalad.cli import main
from storage.reports import ReportStore

pytestmark = pytest.mark.slow


def test_reproduce_then_report(prefect_api, data_home, tmp_path, capsys):
    reports, stores = tmp_path / "reports", tmp_path / "stores"
    code = main(["reproduce", "--suite", "smoke", "--reports", str(reports), "--store", str(stores)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"Prefect API: {prefect_api}" in captured.err
    assert f"reports: {reports}" in captured.out
    rows = ReportStore(str(reports)).read_metrics(metric="image_auroc")
    assert set(rows["class_name"]) == {"brick"} and set(rows["status"]) == {"ok"}

    code = main(["report", "--reports", str(reports), "--format", "csv"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = pd.read_csv(io.StringIO(captured.out))
    assert len(table) == 1  # one backbone x weights x selection row: random-init ViT-S, `last`
    last = rows[rows["selection"] == "last"]["value"].mean() * 100
    [ours] = [c for c in table.columns if c.startswith("quickstart") and not c.endswith(" paper")]
    assert float(table[ours].iloc[0]) == pytest.approx(last, abs=1e-9)  # CSV cells are unrounded
    assert table[f"{ours} paper"].isna().all()  # random-init rows get no paper number

    # an empty report store is a clear error, exit code 2
    code = main(["report", "--reports", str(tmp_path / "nothing")])
    assert code == 2 and "no report rows" in capsys.readouterr().err
