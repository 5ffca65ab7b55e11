"""Committed notebooks are clean: no outputs, one literal-only parameters cell, prose first."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
RUNNER_PARAMETERS = {"preset", "run_dir", "overrides"}  # what m3po_utils.run passes to every notebook


@pytest.fixture(params=NOTEBOOKS or [None], ids=[p.name for p in NOTEBOOKS] or ["no-notebooks"])
def notebook(request):
    if request.param is None:
        pytest.skip(f"no notebooks in {NOTEBOOKS_DIR} yet: nothing to check")
    path: Path = request.param
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return path, nb


def test_name_is_numbered(notebook):
    path, _ = notebook
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: name it NN_topic.ipynb"


def test_no_outputs_or_execution_counts(notebook):
    path, nb = notebook
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; clear them before committing"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in metadata; clear it before committing"


def test_first_cell_is_prose(notebook):
    path, nb = notebook
    assert nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.strip(), (
        f"{path.name}: the first cell must be markdown saying what the notebook teaches, reads and writes")


def test_one_literal_parameters_cell(notebook):
    path, nb = notebook
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
    cell = nb.cells[tagged[0]]
    assert cell.cell_type == "code", f"{path.name}: the parameters cell must be a code cell"
    names: set[str] = set()
    for stmt in ast.parse(cell.source).body:
        assert isinstance(stmt, ast.Assign), (
            f"{path.name}: parameters cell line {stmt.lineno} is not an assignment; move logic below it")
        try:
            ast.literal_eval(stmt.value)
        except (ValueError, TypeError, SyntaxError):
            pytest.fail(f"{path.name}: parameters cell line {stmt.lineno} assigns a non-literal "
                        f"({ast.unparse(stmt.value)}); derived values belong after the parameters cell")
        names |= {t.id for t in stmt.targets if isinstance(t, ast.Name)}
    missing = RUNNER_PARAMETERS - names
    assert not missing, f"{path.name}: the parameters cell must define {sorted(missing)} (the runner sets them)"
