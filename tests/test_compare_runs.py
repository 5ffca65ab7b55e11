"""tools/compare_runs.py: a refactor's proof sees every changed figure and none of what a re-run changes by nature."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("compare_runs", Path(__file__).parent.parent / "tools" / "compare_runs.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def _run(root: Path, f1: float, seconds: float, run_id: str) -> Path:
    (root / "results").mkdir(parents=True)
    (root / "results" / "06_evaluation.json").write_text(json.dumps({
        "metrics": {"m3po": {"pope_adversarial_f1": {"mean": f1}}}, "run_id": run_id, "inputs": {"05_dpo": run_id},
        "training": [{"method": "m3po", "train_seconds": seconds}], "wall_s": seconds,
        "learnt": f"The sweep took {seconds:.1f} s in {root}.", "files": [str(root / "x.json")]}))
    (root / "results" / "timings.json").write_text(json.dumps({"06_evaluation": {"wall_s": seconds, "finished": run_id}}))
    (root / "report.md").write_text(f"# report\n\n| method | F1 |\n|---|---|\n| M3PO | {f1:.3f} |\n\n## Stages\n\n"
                                    f"| notebook | wall time |\n|---|---|\n| 06_evaluation | {seconds} s |\n\n"
                                    f"## Appendix\n\n| name | value |\n|---|---|\n| wall_s | {seconds} |\n"
                                    f"| run_id | {run_id} |\n")
    return root


def test_times_run_ids_and_paths_are_left_out_figures_are_not(tmp_path, capsys):
    a = _run(tmp_path / "a", 0.903, 12.5, "r1")
    b = _run(tmp_path / "b", 0.903, 99.0, "r2")
    assert tool.compare(a, b) == []
    assert tool.main([str(a), str(b)]) == 0 and "identical: 1 results files" in capsys.readouterr().out
    c = _run(tmp_path / "c", 0.904, 12.5, "r1")
    diffs = tool.compare(a, c)
    assert diffs == ["results/06_evaluation.json.metrics.m3po.pope_adversarial_f1.mean: 0.903 -> 0.904",
                     "report.md: - '| M3PO | 0.903 |'", "report.md: + '| M3PO | 0.904 |'"]
    assert tool.main([str(a), str(c)]) == 1
