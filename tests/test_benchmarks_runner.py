"""The benchmark runner's plumbing: ratios reported through ``ratios.emit`` reach ``run_all``'s table."""

import ast
import inspect
import json
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_scaling  # noqa: E402
import pytest  # noqa: E402
import ratios  # noqa: E402
import run_all  # noqa: E402


def test_emit_appends_rows_and_checks_targets(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    monkeypatch.setenv("M3PO_BENCH_OUT", str(out))
    ratios.emit("dpo", "training", "TRL", "reuse", 1.42, 1.25)
    ratios.emit("gen", "batched", "loop", "batched", 7.5, 8.0)
    ratios.emit("mas", "requests", "pointwise", "listwise", 5.8, None, unit="x fewer requests")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["ok"] for r in rows] == [True, False, None]
    md = run_all.table(rows)
    assert "| dpo | training | TRL | reuse | 1.42 (x faster) | ≥ 1.25 | yes |" in md
    assert "| **no** |" in md and md.count("\n") == 4


def emit_calls(path: Path) -> list[ast.Call]:
    """The real calls of ``ratios.emit`` in a script (``emit(...)`` after ``from ratios import emit``, or
    ``ratios.emit(...)`` after ``import ratios``), each binding to emit's signature; comments and strings
    do not count."""
    tree = ast.parse(path.read_text(), filename=str(path))
    imported_emit = any(isinstance(n, ast.ImportFrom) and n.module == "ratios" and n.level == 0
                        and any(a.name == "emit" and a.asname in (None, "emit") for a in n.names)
                        for n in ast.walk(tree))
    imported_ratios = any(isinstance(n, ast.Import) and any(a.name == "ratios" and a.asname in (None, "ratios")
                                                            for a in n.names) for n in ast.walk(tree))
    sig = inspect.signature(ratios.emit)
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (imported_emit and isinstance(f, ast.Name) and f.id == "emit") or (
                imported_ratios and isinstance(f, ast.Attribute) and f.attr == "emit"
                and isinstance(f.value, ast.Name) and f.value.id == "ratios"):
            if not any(isinstance(a, ast.Starred) for a in node.args) and not any(k.arg is None for k in node.keywords):
                sig.bind(*node.args, **{k.arg: k.value for k in node.keywords})  # TypeError: a call emit rejects
            calls.append(node)
    return calls


def test_every_benchmark_script_reports_ratios():
    """Each bench_*.py imports ``emit`` from ratios and calls it (a real call, not the word in a comment)."""
    scripts = run_all.scripts()
    assert {s.name for s in scripts} >= {"bench_generation.py", "bench_mas.py", "bench_dpo.py"}
    for script in scripts:
        assert emit_calls(script), f"{script.name} never calls ratios.emit: its ratios would miss the runner's table"


def test_emit_calls_ignores_comments_and_strings(tmp_path):
    """The check itself: ``# emit(`` in a comment, a string or an unrelated ``emit`` do not count."""
    fake = tmp_path / "bench_fake.py"
    fake.write_text(textwrap.dedent('''\
        """Calls emit(...) in prose only."""
        from ratios import machine

        # emit("gen", "batched", "loop", "batched", 7.5, 8.0)
        print("emit(")


        def emit(*args):
            pass


        emit(1)
        '''))
    assert emit_calls(fake) == []
    fake.write_text('from ratios import emit\n\nemit("b", "w", "base", "var", 2.0, 1.5, unit="x fewer")\n')
    assert len(emit_calls(fake)) == 1


def test_growth_exponent_and_extrapolation():
    """bench_scaling's fit recovers a power law's exponent and extrapolates each axis by its own."""
    xs = [4, 8, 16, 32]
    assert bench_scaling.fit_exponent(xs, [3.0 * x ** 1.5 for x in xs]) == pytest.approx(1.5, abs=1e-12)
    assert bench_scaling.fit_exponent(xs, [2.0, 2.0, 2.0, 2.0]) == pytest.approx(0.0, abs=1e-12)
    noisy = [t * f for t, f in zip([x ** 0.5 for x in xs], [1.1, 0.9, 1.1, 0.9], strict=True)]
    assert 0.3 < bench_scaling.fit_exponent(xs, noisy) < 0.6
    with pytest.raises(ValueError, match="two distinct"):
        bench_scaling.fit_exponent([8, 8], [1.0, 2.0])
    # 2 s at (N=8, K=16) with time ∝ N^1 K^0.5: 4x N and 100x K -> 2 * 4 * 10 = 80 s
    assert bench_scaling.extrapolate(2.0, {"N": 8, "K": 16}, {"N": 32, "K": 1600}, {"N": 1.0, "K": 0.5}) == \
        pytest.approx(80.0)
