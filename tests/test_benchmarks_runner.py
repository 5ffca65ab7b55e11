"""The benchmark runner's plumbing: ratios reported through ``ratios.emit`` reach ``run_all``'s table."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

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


def test_every_benchmark_script_reports_ratios():
    for script in run_all.scripts():
        assert "emit(" in script.read_text(), f"{script.name} prints ratios the runner's table would miss"
    assert {s.name for s in run_all.scripts()} >= {"bench_generation.py", "bench_mas.py", "bench_dpo.py"}
