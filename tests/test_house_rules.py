"""The house plan's size rules (docs/architecture.md): small modules, short functions, reasons for exceptions.

No Python module of the project (code, bench, tests) is over 400 lines, and no function of the code or bench is
over 60 lines from its first statement after the docstring to its end, unless its docstring says why
("Long because ...").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("generalad", "storage", "flows", "bench")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
REASON = "Long because"


def _modules(folders: tuple[str, ...]) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring does not count
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def long_functions(source: str) -> list[tuple[str, int]]:
    """(name, body lines) of every function over the limit whose docstring gives no reason."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = _body_lines(node)
            if lines > MAX_FUNCTION_LINES and REASON not in (ast.get_docstring(node) or ""):
                out.append((node.name, lines))
    return out


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules((*PACKAGES, "tests"))
        if (n := p.read_text(encoding="utf-8").count("\n")) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_over_60_lines_without_a_reason():
    long = {
        f"{p.relative_to(ROOT)}:{name}": n
        for p in _modules(PACKAGES)
        for name, n in long_functions(p.read_text(encoding="utf-8"))
    }
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines with no '{REASON}' in the docstring: {long}"


@pytest.mark.parametrize(
    ("docstring", "flagged"),
    [('"""Short."""', True), ('"""Long because the table is one literal."""', False)],
)
def test_the_rule_counts_the_body_and_accepts_a_reason(docstring, flagged):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    source = f"def f():\n    {docstring}\n{body}\n"
    assert long_functions(source) == ([("f", MAX_FUNCTION_LINES + 1)] if flagged else [])
    assert long_functions(f"def g():\n    {docstring}\n" + "\n".join(body.splitlines()[:-1])) == []
