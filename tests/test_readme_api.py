"""The README's Python API example runs as written (offline: random-init backbone at 56 px), and
`import generalad` stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.test_readme import _python_blocks


@pytest.mark.slow
def test_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    (block,) = _python_blocks("Python API")
    assert "from generalad import GeneralAD" in block
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENERALAD_STORE", raising=False)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "image AUROC" in out
    assert (tmp_path / "my_model" / "model.json").is_file() and (
        tmp_path / "my_model" / "threshold.json"
    ).is_file()
    assert (tmp_path / "stores").is_dir()  # the default store root, ./stores


def test_import_generalad_loads_no_torch() -> None:
    code = "import sys, generalad; assert 'torch' not in sys.modules, 'torch imported'; generalad.GeneralAD"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
