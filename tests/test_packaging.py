"""pyproject.toml is the one dependency list; environment.yml and the entry-point scripts build on it."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT.get("optional-dependencies", {})
OWN_PACKAGE = "m3po_utils"
# Modules that are files of this repository, imported by path (benchmarks/ and tests/ put their folder on sys.path).
LOCAL_MODULES = {p.stem for folder in ("benchmarks", "tests") for p in (ROOT / folder).glob("*.py")}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r).group(1)) for r in requirements}


def _env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """True for an import inside ``try:`` whose handlers catch ImportError (an optional dependency by design)."""
    child, node = node, parents.get(node)
    while node is not None:
        if isinstance(node, ast.Try) and child in node.body:
            for h in node.handlers:
                names = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
                if h.type is None or any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                                         for n in names):
                    return True
        child, node = node, parents.get(node)
    return False


def _imports(source: str, where: str) -> list[tuple[str, str]]:
    """(top-level module, file:line) of every absolute, unguarded ``import`` / ``from ... import`` in ``source``."""
    tree = ast.parse(source, filename=where)
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if not _guarded(node, parents):
            out += [(n.split(".")[0], f"{where}:{node.lineno}") for n in names]
    return out


def _notebook_source(path: Path) -> str:
    """The code cells of a notebook as one module (IPython magics and shell lines dropped)."""
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    lines = [ln for cell in cells for ln in cell.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _sources(kind: str) -> list[tuple[str, str]]:
    """(source, where) of runtime code (the package, recursively, and the notebooks), benchmarks or tests."""
    if kind == "runtime":
        files = [(p.read_text(), _rel(p)) for p in sorted((ROOT / OWN_PACKAGE).rglob("*.py"))]
        return files + [(_notebook_source(p), _rel(p)) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    return [(p.read_text(), _rel(p)) for p in sorted((ROOT / kind).glob("*.py"))]


# Runtime code (the package, the notebooks) may rely on [project] dependencies and the notebooks extra only;
# benchmarks and tests may also use the dev extra.
ALLOWED_EXTRAS = {"runtime": ["notebooks"], "benchmarks": ["notebooks", "dev"], "tests": ["notebooks", "dev"]}


@pytest.mark.parametrize("kind", list(ALLOWED_EXTRAS))
def test_every_imported_distribution_is_declared(kind):
    """Every third-party module imported directly maps to a distribution that pyproject.toml declares
    (one only installed as another package's dependency does not count)."""
    declared = _names(PROJECT["dependencies"])
    for extra in ALLOWED_EXTRAS[kind]:
        declared |= _names(EXTRAS.get(extra, []))
    dists = packages_distributions()
    imports = [imp for src, where in _sources(kind) for imp in _imports(src, where)]
    assert imports, f"no imports found in the {kind} sources: is the file walk broken?"
    undeclared: dict[str, str] = {}
    for module, where in imports:
        if module in sys.stdlib_module_names or module == OWN_PACKAGE or module in LOCAL_MODULES:
            continue
        candidates = dists.get(module)
        if not candidates:
            undeclared.setdefault(f"{module} (no installed distribution provides it)", where)
        elif not {_norm(d) for d in candidates} & declared:
            undeclared.setdefault(_norm(candidates[0]), where)
    assert not undeclared, (
        f"{kind} code imports distributions pyproject.toml does not declare (in dependencies or "
        f"{' / '.join(ALLOWED_EXTRAS[kind])}): " + ", ".join(f"{d} (first at {w})" for d, w in sorted(undeclared.items())))


def test_extras_cover_notebooks_and_dev():
    assert {"notebooks", "dev"} <= set(EXTRAS)
    assert {"jupyterlab", "papermill", "ipykernel"} <= _names(EXTRAS["notebooks"])
    assert {"pytest", "ruff"} <= _names(EXTRAS["dev"])


def test_environment_yml_is_python_pip_and_this_package_only():
    env = _env()
    deps = env["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    others = [d for d in deps if not isinstance(d, str) and not (isinstance(d, dict) and set(d) == {"pip"})]
    assert not others, f"unexpected entries in environment.yml: {others}"

    pythons = [d for d in conda if re.match(r"python\s*[=<>!~]", d) or d == "python"]
    assert len(pythons) == 1, f"environment.yml must pin python once, found {pythons}"
    assert "pip" in conda
    extra_conda = [d for d in conda if d not in pythons and d != "pip"]
    assert not extra_conda, f"environment.yml lists packages of its own {extra_conda}; put them in pyproject.toml"

    # python=3.11 in environment.yml and requires-python must admit exactly the same minor version.
    m = re.fullmatch(r"python\s*=+\s*(\d+)\.(\d+)(?:\.\*)?", pythons[0].replace(" ", ""))
    assert m, f"pin python as python=3.X in environment.yml (found {pythons[0]!r})"
    major, minor = int(m.group(1)), int(m.group(2))
    spec = SpecifierSet(PROJECT["requires-python"])
    admitted = [v for v in range(6, 20) if spec.contains(f"3.{v}.0") or spec.contains(f"3.{v}.5")]
    assert (major, admitted) == (3, [minor]), (
        f"environment.yml pins python={major}.{minor} but requires-python is {PROJECT['requires-python']!r}")

    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    pip = pip_sections[0]
    assert len(pip) == 1, f"the pip section must be the package alone (-e \".[...]\"), found {pip}"
    m = re.fullmatch(r"""-e\s+["']?\.\[([A-Za-z0-9_,\s-]+)\]["']?""", pip[0].strip())
    assert m, f"the pip entry must be -e \".[extras]\" (found {pip[0]!r})"
    extras = {e.strip() for e in m.group(1).split(",") if e.strip()}
    assert extras <= set(EXTRAS), f"environment.yml asks for extras that pyproject lacks: {extras - set(EXTRAS)}"
    assert {"notebooks", "dev"} <= extras, f"environment.yml must install the notebooks and dev extras (has {extras})"


@pytest.mark.parametrize("script", ["m3po", ".ci/run"])
def test_entry_scripts_are_executable_bash(script):
    path = ROOT / script
    assert path.is_file() and os.access(path, os.X_OK), f"{script} must exist and be executable (chmod +x)"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_m3po_help_lists_the_commands():
    out = subprocess.run([str(ROOT / "m3po"), "help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("setup", "run", "test", "lab"):
        assert re.search(rf"^\s+{cmd}\b", out, re.M), f"./m3po help does not document {cmd!r}"
    bad = subprocess.run([str(ROOT / "m3po"), "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command" in bad.stderr
