"""pyproject.toml is the one dependency list; environment.yml and the entry-point scripts build on it."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT.get("optional-dependencies", {})
REQUIRED = ["jupyterlab", "papermill", "torch", "torchvision", "transformers", "peft", "trl", "open_clip_torch",
            "openai", "seaborn", "ipywidgets", "datasets", "tqdm"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r).group(1)) for r in requirements}


def _env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def test_pyproject_lists_every_package_the_series_uses():
    declared = _names(PROJECT["dependencies"])
    for reqs in EXTRAS.values():
        declared |= _names(reqs)
    missing = [p for p in REQUIRED if _norm(p) not in declared]
    assert not missing, f"add to pyproject.toml [project] dependencies or an extra: {missing}"


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
