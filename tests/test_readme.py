"""The README's promises: its query examples run as written against a real report store, and it opens with the
two commands (main job, tests) that the Makefile provides."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from storage.metric_row import MetricRow
from storage.reports import ReportStore
from storage.score_rows import scores_from_arrays
from tests.fixtures.rows import row_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks(section: str) -> list[str]:
    body = README.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def _write_reports(root: Path) -> None:
    store = ReportStore(str(root / "reports"))
    for run, dataset, value in (("r1", "mvtec_ad", 0.75), ("r2", "cifar10", 0.5)):
        common = dict(run_id=run, dataset=dataset, backbone="vit_small_patch14_dinov2", weights="random:0")
        rows = [
            MetricRow(
                **row_config(),
                **common,
                views="clean+noise_all",
                epochs=1,
                top_k=10,
                class_name=c,
                metric="image_auroc",
                value=v,
            )
            for c, v in (("a", value), ("b", value + 0.2))
        ]
        scores = scores_from_arrays(
            **{k: common[k] for k in ("run_id", "dataset", "backbone")},
            class_name="a",
            image_ids=["x", "y"],
            scores=np.array([0.1, 0.9]),
            labels=np.array([0, 1]),
        )
        store.write_run(run, rows, scores)


def test_query_examples_run_as_written(tmp_path, monkeypatch, capsys) -> None:
    blocks = _python_blocks("Querying the reports")
    assert len(blocks) == 2 and "duckdb" in blocks[0] and "pandas" in blocks[1]
    _write_reports(tmp_path)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "mvtec_ad" in out and "cifar10" in out
    assert "0.85" in out  # mean image AUROC of mvtec_ad's two classes: (0.75 + 0.95) / 2
    assert "0.6" in out  # cifar10: (0.5 + 0.7) / 2


def test_readme_opens_with_the_two_make_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1).splitlines()
    commands = [line.split("#")[0].strip() for line in first_block]
    assert commands[:2] == ["make quickstart", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("quickstart", "test"):
        assert re.search(rf"^{target}: setup$", makefile, flags=re.M)
