"""The package's one-way import rule, read from the source (ast): no cycle, no upward import, no hidden import.

Layers, bottom to top (a module may import only modules of a lower layer, or of its own subpackage in the
order given there; stages may import earlier stages only):

    0  io, wording, dialogue                files written atomically, strict JSON; the words of generated claims; turns
    1  config, stats                        presets; statistics used by several stages
    2  shapes/                              the shapes world: scenes -> instructions -> verifier -> prompts
    3  models/                              lvlm -> templates -> generate -> sft, lora -> trl_api, clip -> clip_score
    4  judge/                               protocol -> cache -> client, server; benchfiles (real benchmark files)
    5  scoring, rundir                      benchmark questions and scorers; the run directory (paths, loaders)
    6  stages                               world 00 < candidates 01 < mas 02 < confidence 03 < selection 04
                                            < dpo 05 < evaluation 06 < rounds 07 < testbed (its bars, on 00-06's results)
                                            < experiments 10
    7  plots/, widgets, report, learnt      figures, widgets, the report, each notebook's closing summary
    8  run, judge/__main__, launch/         entry points (launch/: the stages under accelerate launch)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "m3po_utils"

RANK = {
    "io": 0, "progress": 0, "wording": 0, "rules": 0.5, "dialogue": 0.5, "config": 1, "stats": 1, "results": 1,
    "shapes": 2, "shapes.scenes": 2.1, "shapes.instructions": 2.2, "shapes.ifeval": 2.15, "shapes.visual_ifeval": 2.35, "shapes.verifier": 2.3, "shapes.prompts": 2.4,
    "models": 3, "models.lvlm": 3.1, "models.templates": 3.2, "models.generate": 3.3, "models.sft": 3.4,
    "models.lora": 3.4, "models.trl_api": 3.5, "models.clip": 3.1, "models.clip_score": 3.2,
    "judge": 4, "judge.protocol": 4.1, "judge.cache": 4.1, "judge.client": 4.2, "judge.self_judge": 4.15, "judge.server": 4.2,
    "benchfiles": 4.9, "scoring": 5, "rundir": 5,
    "world": 6.00, "candidates": 6.01, "mas": 6.02, "confidence": 6.03, "selection": 6.04, "dpo": 6.05,
    "evaluation": 6.06, "rounds": 6.065, "testbed": 6.07, "experiments": 6.10, "hardneg": 6.11,
    "plots": 7, "plots.audit": 7.05, "plots.curves": 7.05, "plots.world": 7.1, "plots.candidates": 7.1, "plots.mas": 7.1, "plots.confidence": 7.1,
    "plots.dpo": 7.1, "plots.evaluation": 7.1, "plots.experiments": 7.1, "plots.hardneg": 7.1, "plots.rounds": 7.1, "widgets": 7.2, "widgets.base": 7.21, "widgets.candidates": 7.22,
    "widgets.mas": 7.22, "widgets.confidence": 7.22, "widgets.selection": 7.22, "report": 7, "learnt": 7,
    "preflight": 7, "notebook": 7.5,
    "run": 8, "judge.__main__": 8, "launch": 8, "launch.candidates": 8.1, "launch.dpo": 8.1,
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PKG.rglob("*.py")) if _name(p) != "__init__"}


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported package module, line, at module top) for every import of the package's own modules."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    pkg_parts = _name(path).split(".")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:   # relative: resolve against this module's package
                base = pkg_parts[: len(pkg_parts) - node.level + (1 if path.name == "__init__.py" else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "m3po_utils" or node.module.startswith("m3po_utils.")):
                mod = node.module[len("m3po_utils."):] if node.module != "m3po_utils" else ""
            else:
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}" if mod else alias.name
                target = sub if sub in RANK else mod
                out.append((target, node.lineno, id(node) in top))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "m3po_utils" or alias.name.startswith("m3po_utils."):
                    out.append((alias.name[len("m3po_utils."):], node.lineno, id(node) in top))
    return out


def graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (the import graph the notes quote)."""
    return {name: {t for t, _, _ in _imports(path) if t and t != name} for name, path in _modules().items()}


def _violations() -> list[str]:
    bad = []
    for name, path in _modules().items():
        if name not in RANK:
            bad.append(f"{name}: not placed in a layer (add it to RANK in tests/test_layers.py)")
            continue
        for target, line, at_top in _imports(path):
            if not target or target == name:
                continue
            where = f"m3po_utils/{path.relative_to(PKG)}:{line}"
            if not at_top:
                bad.append(f"{where}: imports {target} inside a function; import the package's modules at the top")
            if target not in RANK:
                bad.append(f"{where}: imports {target}, which is not a module of the package")
            elif name.startswith(target + "."):
                continue   # a module may import its own subpackage's __init__ names (none do today)
            elif RANK[target] >= RANK[name] and not (target.startswith(name + ".")):
                bad.append(f"{where}: {name} (layer {RANK[name]}) imports {target} (layer {RANK[target]}): "
                           "imports must go down the layers")
    return bad


def _cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_every_module_sits_in_a_layer_and_imports_only_downwards():
    bad = _violations()
    assert not bad, "import rule broken:\n" + "\n".join(bad)


def test_no_import_cycle():
    cyc = _cycle(graph())
    assert cyc is None, f"import cycle: {' -> '.join(cyc)}"


@pytest.mark.parametrize("source, expected", [
    ("from m3po_utils.dpo import train_pairs\n", "imports must go down"),           # a stage-0 module reaching up
    ("def f():\n    from m3po_utils import config\n", "inside a function"),          # a hidden import
    ("from m3po_utils.nowhere import x\n", "not a module of the package"),
])
def test_rule_catches_a_planted_violation(tmp_path, monkeypatch, source, expected):
    """The rule is not vacuous: a planted upward, hidden or unknown import in the bottom layer is reported."""
    pkg = tmp_path / "m3po_utils"
    for p in _modules().values():
        dest = pkg / p.relative_to(PKG)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(p.read_text())
    (pkg / "__init__.py").write_text("")
    (pkg / "io.py").write_text((pkg / "io.py").read_text() + "\n" + source)
    monkeypatch.setitem(globals(), "PKG", pkg)
    assert any(expected in v for v in _violations())


def test_planted_cycle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
