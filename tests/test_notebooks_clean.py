"""Committed notebooks are clean: no outputs, one literal-only parameters cell, prose first."""

from __future__ import annotations

import ast
import json
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


def test_every_cell_has_a_unique_id(notebook):
    path, _ = notebook
    ids = [c.get("id") for c in json.loads(path.read_text())["cells"]]    # raw: nbformat.read would fill them in
    missing = [i for i, x in enumerate(ids) if x is None]
    assert not missing, f"{path.name}: cells {missing} have no id (nbformat 4.5 needs one; give each a unique id)"
    assert len(set(ids)) == len(ids), f"{path.name}: repeated cell ids"


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


# ------------------------------------------------------------------------------------------ stale numbers
# Markdown teaches ideas and formulas; a figure of a run is printed by code from its results, so it cannot go
# stale. Numbers a sentence may type: notebook numbers, list and section numbers, and these constants (grid and
# image sizes, the paper's settings, interval levels, score ranges, years of cited papers, versions, addresses).
ALLOWED_NUMBERS = {
    "0", "1", "2", "3", "4", "5", "8", "9", "10", "16", "32", "48", "50", "77", "80", "95", "96", "100", "200",
    "800", "2000", "0.1", "0.5", "1.5", "5e-5", "127.0.0.1", "2018", "2023", "2025",
}
_NUMBER = re.compile(r"(?<![\w.\-])(\d+(?:\.\d+)*(?:e-?\d+)?)(?![\w.]*\w)")
_SKIP = [re.compile(p, re.S) for p in (r"\$\$.*?\$\$", r"\$[^$\n]*\$", r"`[^`\n]*`", r"\]\([^)]*\)", r"<[^>]+>")]
_NOTEBOOK_REF = re.compile(r"^(0\d|1\d)$")


def stale_numbers(markdown: str) -> list[tuple[str, str]]:
    """``(number, context)`` of each number in ``markdown`` that looks like a figure of a run (not a notebook
    number, list number or an allowed constant)."""
    text = markdown
    for pat in _SKIP:
        text = pat.sub(" ", text)
    text = re.sub(r"(?m)^\s*(#+\s*)?\d+\s*[.·)]\s", " ", text)          # "1. ", "## 3 · "
    out = []
    for m in _NUMBER.finditer(text):
        tok = m.group(1)
        if tok in ALLOWED_NUMBERS or _NOTEBOOK_REF.match(tok):
            continue
        out.append((tok, text[max(0, m.start() - 40):m.end() + 20].replace("\n", " ").strip()))
    return out


def test_stale_number_check_catches_a_planted_sentence():
    planted = "With 614 pairs and 77 steps the base scores 0.757 / 0.640, and 46 % of prompts can give a pair."
    assert [tok for tok, _ in stale_numbers(planted)] == ["614", "0.757", "0.640", "46"]   # 77 is allowed
    assert stale_numbers("Notebook 04 picks pairs; α = 0.5, N = 32, a 3×3 grid, $\\beta = 0.37$, `n=614`.") == []
    assert stale_numbers("1. first\n2. second\n## 3 · Section") == []


def test_markdown_types_no_run_figure(notebook):
    path, nb = notebook
    found = [(i, s) for i, c in enumerate(nb.cells) if c.cell_type == "markdown" for s in stale_numbers(c.source)]
    assert not found, (f"{path.name}: markdown cells type numbers that look like run figures (print them from the "
                       f"results instead, or add a true constant to ALLOWED_NUMBERS): {found}")
